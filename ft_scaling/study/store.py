"""The results store: one SQLite row per run, written in a transaction (never half a row).

Columns of the exported table (DESIGN.md §3): task, method, model_params, pretrain_tokens,
trainable_params, finetune_examples, steps, seed, test_loss, test_ppl, the generation metrics
bleu, chrf, rouge_l (empty unless the study decodes, study/generation.py), run_dir, wall_time,
config_hash, plus model_name, pet_size and dev_loss for the report.
"""

import json
import os
import sqlite3
import time

from ft_scaling import files

COLUMNS = (
    "task",
    "method",
    "model_name",
    "model_params",
    "pretrain_tokens",
    "pet_size",
    "trainable_params",
    "finetune_examples",
    "steps",
    "seed",
    "dev_loss",
    "test_loss",
    "test_ppl",
    "bleu",
    "chrf",
    "rouge_l",
    "run_dir",
    "wall_time",
    "config_hash",
)
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
  run_id TEXT PRIMARY KEY,
  kind TEXT NOT NULL,
  status TEXT NOT NULL,
  row TEXT NOT NULL,
  error TEXT,
  finished_at REAL NOT NULL
)
"""


class StoreError(ValueError):
    pass


class ResultsStore:
    """Finished and failed runs of a study, keyed by run id."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=60, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(SCHEMA)

    def status(self, run_id: str) -> str | None:
        row = self._db.execute("SELECT status FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return None if row is None else row[0]

    def record(self, run_id: str, kind: str, status: str, row: dict, error: str | None = None):
        with self._db:  # one transaction: the row is there whole or not at all
            self._db.execute(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, kind, status, json.dumps(row, sort_keys=True), error, time.time()),
            )

    def rows(self, kind: str | None = None, status: str | None = None) -> list[dict]:
        query, args = "SELECT run_id, kind, status, row, error FROM runs", []
        conditions = []
        if kind:
            conditions.append("kind=?")
            args.append(kind)
        if status:
            conditions.append("status=?")
            args.append(status)
        if conditions:
            query += " WHERE " + " AND ".join(conditions)
        out = []
        for run_id, kind_, status_, row, error in self._db.execute(
            query + " ORDER BY run_id", args
        ):
            try:
                data = json.loads(row)
            except json.JSONDecodeError as err:
                raise StoreError(f"{self.path}: row of run {run_id} is corrupt ({err})") from err
            out.append({"run_id": run_id, "kind": kind_, "status": status_, "error": error, **data})
        return out

    def close(self):
        self._db.close()


def open_all(out_dir: str) -> list[ResultsStore]:
    """Every store of a study directory (one per worker)."""
    names = sorted(f for f in os.listdir(out_dir) if f.endswith(".sqlite"))
    return [ResultsStore(os.path.join(out_dir, name)) for name in names]


def finished_finetune_rows(out_dir: str) -> list[dict]:
    rows = {}
    for store in open_all(out_dir):
        for row in store.rows(kind="finetune", status="finished"):
            rows[row["run_id"]] = row
        store.close()
    return [rows[k] for k in sorted(rows)]


def export_csv(rows: list[dict], path: str) -> None:
    """Writes the results table atomically (files.atomic_write_csv: a temp file, then rename)."""
    files.atomic_write_csv(path, rows, COLUMNS)
