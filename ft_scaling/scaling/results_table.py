"""Reading the results store's CSV (DESIGN.md §3) and cutting it into factor sweeps.

One row per finished run. A setting is a group of rows (by default one task and method); in it,
each factor's sweep holds the other two factors at their reference values:

    model_params      for every model size m: pretrain_tokens and trainable_params at their
                      most frequent value among m's rows (the fully pretrained checkpoint and the
                      default prompt length / LoRA rank, whose parameter count grows with m)
    pretrain_tokens   at the base model (the size with the most distinct configurations, the
                      paper's 1B): trainable_params at its reference value
    trainable_params  at the base model: pretrain_tokens at its reference value

Ties between equally frequent values go to the largest (for tokens: the final checkpoint).
"""

import csv
import io
from collections.abc import Mapping, Sequence

import numpy as np

from ft_scaling import files
from ft_scaling.scaling.errors import ScalingInputError
from ft_scaling.scaling.procedure import Sweep

COLUMNS = (
    "task", "method", "model_params", "pretrain_tokens", "trainable_params",
    "finetune_examples", "steps", "seed", "test_loss", "test_ppl", "bleu", "chrf", "rouge_l",
    "run_dir", "wall_time", "config_hash",
)  # fmt: skip
FACTORS = ("model_params", "pretrain_tokens", "trainable_params")


def read_table(path: str) -> dict[str, np.ndarray]:
    """Reads a results CSV into {column: [rows] array of str}; raises on an empty table."""
    # Bytes, decoded here: the csv module wants the line ends as written (newline="").
    text = files.path(path).read_bytes().decode("utf-8")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = list(reader)
    header = reader.fieldnames or []
    if not rows:
        raise ScalingInputError(f"{path}: no rows (columns: {', '.join(header) or 'none'})")
    _check_duplicates(path, header, rows)
    return {name: np.array([row[name] or "" for row in rows], dtype=object) for name in header}


# With a seed column, these name one run: two rows with equal values are one run twice.
RUN_KEY = FACTORS + ("task", "method", "finetune_examples", "seed")


def _check_duplicates(path: str, header: Sequence[str], rows: Sequence[Mapping]) -> None:
    """Refuses a run listed twice (two exports concatenated, a row pasted twice): it would
    count twice in the fit and in the bootstrap. Rows are 1-based data rows."""
    seen: dict[tuple, int] = {}
    for number, row in enumerate(rows, start=1):
        identities = [("identical rows", tuple(row.get(c) for c in header))]
        if all(c in header for c in RUN_KEY):
            run = ", ".join(f"{c}={row[c]}" for c in RUN_KEY)
            identities.append((f"the same run ({run})", tuple(row[c] for c in RUN_KEY)))
        for what, key in identities:
            if (what, key) in seen:
                raise ScalingInputError(
                    f"{path}: duplicated rows: data rows {seen[what, key]} and {number} are "
                    f"{what}; remove one (a run listed twice counts twice in the fit)"
                )
            seen[what, key] = number


def from_rows(rows: Sequence[Mapping]) -> dict[str, np.ndarray]:
    """The table `read_table` would read from these rows written as a CSV (cells as str).

    Columns are every key, in order of first appearance; a missing key or None is "", as in
    the CSV, so a fit of the rows equals a fit of their exported table.
    """
    if not rows:
        raise ScalingInputError("no rows")
    header = list(dict.fromkeys(key for row in rows for key in row))
    return {name: np.array([_cell(row.get(name)) for row in rows], dtype=object) for name in header}


def _cell(value) -> str:
    return "" if value is None else str(value)


def require_columns(table: dict[str, np.ndarray], names: Sequence[str]) -> None:
    """Raises ScalingInputError naming a missing column and listing the present ones."""
    for name in names:
        if name not in table:
            raise ScalingInputError(f"missing column {name!r}; present columns: {', '.join(table)}")


def numeric(table: dict[str, np.ndarray], name: str, rows: np.ndarray) -> np.ndarray:
    """Column `name` at `rows` as float64; raises naming the first bad cell (1-based row)."""
    values = np.empty(len(rows))
    for i, row in enumerate(rows):
        cell = str(table[name][row]).strip()
        try:
            values[i] = float(cell)
        except ValueError:
            raise ScalingInputError(
                f"column {name!r}, data row {row + 1}: {cell!r} is not a number"
            ) from None
        if not np.isfinite(values[i]):
            raise ScalingInputError(f"column {name!r}, data row {row + 1}: value is {cell!r}")
        if values[i] <= 0:
            raise ScalingInputError(f"column {name!r}, data row {row + 1}: {cell} is not positive")
    return values


def groups(table: dict[str, np.ndarray], by: Sequence[str]) -> list[tuple[dict, np.ndarray]]:
    """Splits rows by the values of the `by` columns: [(key dict, row indices)], sorted."""
    require_columns(table, by)
    size = len(next(iter(table.values())))
    keys = [tuple(str(table[c][r]) for c in by) for r in range(size)]
    result = []
    for key in sorted(set(keys)):
        rows = np.array([r for r in range(size) if keys[r] == key])
        result.append((dict(zip(by, key, strict=True)), rows))
    return result


def _reference(values: np.ndarray) -> float:
    """Most frequent value; ties go to the largest."""
    unique, counts = np.unique(values, return_counts=True)
    return float(unique[counts == counts.max()].max())


def select_sweeps(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{factor: bool [rows] mask of its sweep} from the three factor columns of one setting."""
    model, tokens, trainable = (columns[f] for f in FACTORS)
    configs = {
        m: len(set(zip(tokens[model == m], trainable[model == m], strict=True)))
        for m in np.unique(model)
    }
    base = min(configs, key=lambda m: (-configs[m], m))
    at_base = model == base
    in_model_sweep = np.zeros(len(model), bool)
    for m in np.unique(model):
        at = model == m
        ref_t, ref_p = _reference(tokens[at]), _reference(trainable[at])
        in_model_sweep |= at & (tokens == ref_t) & (trainable == ref_p)
    return {
        "model_params": in_model_sweep,
        "pretrain_tokens": at_base & (trainable == _reference(trainable[at_base])),
        "trainable_params": at_base & (tokens == _reference(tokens[at_base])),
    }


def sweeps_for_rows(
    table: dict[str, np.ndarray], rows: np.ndarray, factors: Sequence[str] | None, metric: str
) -> dict[str, Sweep]:
    """The factor sweeps of one setting.

    Args:
      table: from `read_table`.
      rows: the setting's row indices.
      factors: factors to return; None = every factor that takes at least two values.
      metric: the column to fit (e.g. "test_loss").

    Returns:
      {factor: Sweep}. Run ids are table row indices, so a run shared by two sweeps (the base
      model at its final checkpoint) is one run for the bootstrap.

    Raises:
      ScalingInputError: a missing column, a bad value, or a requested factor whose sweep
        takes a single value.
    """
    require_columns(table, list(FACTORS) + ["finetune_examples", metric])
    columns = {f: numeric(table, f, rows) for f in FACTORS}
    d_f = numeric(table, "finetune_examples", rows)
    loss = numeric(table, metric, rows)
    masks = select_sweeps(columns)
    sweeps = {}
    for factor in factors or FACTORS:
        if factor not in FACTORS:
            raise ScalingInputError(f"unknown factor {factor!r}; factors: {', '.join(FACTORS)}")
        mask = masks[factor]
        values = np.unique(columns[factor][mask])
        if len(values) < 2:
            if factors is None:
                continue
            raise ScalingInputError(
                f"factor {factor} takes a single value ({values[0]:g}) in its sweep; "
                "a scaling law in it needs at least two"
            )
        sweeps[factor] = Sweep(factor, columns[factor][mask], d_f[mask], loss[mask], rows[mask])
    return sweeps
