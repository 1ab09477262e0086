"""The results store: one row per run, written in a transaction (never half a row).

    ResultsStore(location)   a SQLite file path (the embedded default, OUT/results.sqlite) or a
                             SQLAlchemy URL (postgresql://user@host/db) that several workers share
      runs                   run_id -> kind, status, row (JSON), error, finished_at
      study_identity         the study that owns the store; another study is refused
      run_claims             the plan's runs, claimed with a lease by workers (study/claims.py)

Columns of the exported table (DESIGN.md §3): task, method, model_params, pretrain_tokens,
trainable_params, finetune_examples, steps, seed, test_loss, test_ppl, the generation metrics
bleu, chrf, rouge_l (empty unless the study decodes, study/generation.py), run_dir, wall_time,
config_hash, plus model_name, pet_size and dev_loss for the report, and where the wall time went:
setup_time, compile_time, input_time, train_time, eval_time, checkpoint_time, test_time (seconds,
`summary.TIMING_PHASES`; empty for rows recorded before they were, whose JSON lacks them).

Claims (`claim`): the next runnable run in plan order, taken in one transaction -- `SELECT ...
FOR UPDATE SKIP LOCKED` on PostgreSQL (workers never wait on each other's locked rows), `BEGIN
IMMEDIATE` on SQLite (the file's write lock). A run is runnable when it has no row yet (or a
row 'failed' before this worker started: each worker retries a failed run once), its
dependency has a row, and no live lease holds it. A lease is renewed while the run trains;
one that expires (its worker died) makes the run claimable again, and the next worker resumes
it from its checkpoints.
"""

import json
import os
import time
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from ft_scaling import files
from ft_scaling.train import summary as summary_lib

# Where a run's wall time went (seconds per phase); they differ between any two runs.
TIMING_COLUMNS = tuple(f"{phase}_time" for phase in summary_lib.TIMING_PHASES)
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
    *TIMING_COLUMNS,
)
DEFAULT_FILE = "results.sqlite"
SQLITE_BUSY_TIMEOUT_S = 60
POINTER_FILE = "store.json"  # OUT/store.json: the URL store of a study (password left out)
CONNECT_TIMEOUT_S = 10

_METADATA = sa.MetaData()
RUNS = sa.Table(
    "runs",
    _METADATA,
    sa.Column("run_id", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("row", sa.Text, nullable=False, quote=True),
    sa.Column("error", sa.Text),
    sa.Column("finished_at", sa.Float, nullable=False),
)
IDENTITY = sa.Table(
    "study_identity",
    _METADATA,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
CLAIMS = sa.Table(
    "run_claims",
    _METADATA,
    sa.Column("run_id", sa.Text, primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("depends_on", sa.Text),
    sa.Column("worker", sa.Text),
    sa.Column("lease_until", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
)


class StoreError(ValueError):
    """A store that cannot be used: unreachable, corrupt, or another study's."""


def is_url(location: str) -> bool:
    return "://" in str(location) and not str(location).startswith("gs://")


def redact(url: str) -> str:
    """The URL with its password replaced by ***, for messages and logs."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparseable store URL>"


def without_password(url: str) -> str:
    """The URL with no password (libpq then reads PGPASSWORD or ~/.pgpass)."""
    bare = sa.engine.make_url(url)._replace(password=None)  # (URL.set ignores None)
    return bare.render_as_string(hide_password=False)


def _engine(location: str) -> sa.Engine:
    if is_url(location):
        url = sa.engine.make_url(location)
        if url.get_backend_name() == "postgresql":
            # Cloud SQL closes idle connections: ping before use; fail fast when unreachable.
            return sa.create_engine(
                url, pool_pre_ping=True, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}
            )
        if url.get_backend_name() != "sqlite":
            raise StoreError(f"store {redact(location)}: only postgresql:// and sqlite:// work")
        path = url.database
    else:
        if str(location).startswith("gs://"):
            raise StoreError(
                f"a SQLite store cannot live in a bucket ({location}): give --store="
                "postgresql://... (or sqlite:////a/local/file.sqlite)"
            )
        path = os.path.abspath(location)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    engine = sa.create_engine(
        f"sqlite:///{os.path.abspath(path)}",
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
    )
    sa.event.listen(engine, "connect", _sqlite_connect)
    sa.event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    return engine


def _sqlite_connect(dbapi_connection, _record) -> None:
    # Transactions are begun by hand (BEGIN IMMEDIATE: a claim reads and writes under the file's
    # write lock, so two local workers never take the same run); WAL lets readers go on.
    dbapi_connection.isolation_level = None
    dbapi_connection.execute("PRAGMA journal_mode=WAL")


def _create_tables(engine: sa.Engine) -> None:
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            # Workers starting together race in CREATE TABLE (PostgreSQL's existence check and
            # the catalog insert are not one atomic step: UniqueViolation on pg_type): a
            # transaction-scoped advisory lock serialises them.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7282011)"))
            _METADATA.create_all(conn)
        return
    # Six workers opening one new file at once got "database is locked" in CI despite the busy
    # timeout (SQLite skips its busy handler where waiting could deadlock, e.g. while another
    # connection converts the file to WAL): retry, as creating the tables is idempotent.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            with engine.begin() as conn:
                _METADATA.create_all(conn)
            return
        except sa.exc.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class ResultsStore:
    """Finished and failed runs of a study, keyed by run id; see the module docstring.

    Args:
      location: a SQLite file path, or a SQLAlchemy URL (postgresql://user:pw@host/db).
      identity: the study's identity (JSON-serialisable); recorded on first use, and a store
        that holds another identity is refused (StoreError naming the differing keys).

    Raises:
      StoreError: the database cannot be reached (the message names the URL, password
        redacted), or belongs to another study.
    """

    def __init__(self, location: str, identity: dict | None = None):
        self.path = str(location)
        self.name = redact(self.path) if is_url(self.path) else self.path
        self._engine = _engine(self.path)
        try:
            _create_tables(self._engine)
        except sa.exc.OperationalError as err:
            self._engine.dispose()
            raise StoreError(
                f"cannot reach the results store {self.name}: {_reason(err)}"
            ) from None
        if identity is not None:
            self.check_identity(identity)

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    def check_identity(self, identity: dict) -> None:
        """Records `identity`, or refuses a store that holds another study's."""
        wanted = json.loads(json.dumps(identity))
        with self._engine.begin() as conn:
            saved = conn.execute(sa.select(IDENTITY.c.value).where(IDENTITY.c.key == "study"))
            saved = saved.scalar()
            if saved is None:
                conn.execute(self._insert(IDENTITY).values(key="study", value=json.dumps(wanted)))
                return
        saved = json.loads(saved)
        differ = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        if differ:
            details = "; ".join(f"{k}: {saved.get(k)!r}, not {wanted.get(k)!r}" for k in differ)
            raise StoreError(
                f"store {self.name} holds another study ({details}). Give each study its own "
                "store (a new database, or a new --out)."
            )

    def _insert(self, table):
        dialect = postgresql if self.dialect == "postgresql" else sqlite
        return dialect.insert(table).on_conflict_do_nothing()

    def status(self, run_id: str) -> str | None:
        with self._engine.connect() as conn:
            query = sa.select(RUNS.c.status).where(RUNS.c.run_id == run_id)
            return conn.execute(query).scalar()

    def record(self, run_id: str, kind: str, status: str, row: dict, error: str | None = None):
        """Writes (or replaces) the run's row in one transaction (its lease ends apart)."""
        values = dict(
            kind=kind,
            status=status,
            row=json.dumps(row, sort_keys=True),
            error=error,
            finished_at=time.time(),
        )
        dialect = postgresql if self.dialect == "postgresql" else sqlite
        upsert = dialect.insert(RUNS).values(run_id=run_id, **values)
        upsert = upsert.on_conflict_do_update(index_elements=[RUNS.c.run_id], set_=values)
        try:
            with self._engine.begin() as conn:  # the row is there whole or not at all
                conn.execute(upsert)
        except sa.exc.DBAPIError as err:
            # A full disk is a DiskFullError (orchestrators stop on it); any other failed
            # write a StoreError; both name the store. The transaction left no part of a row.
            message = (
                f"cannot record run {run_id} in the results store {self.name}: {_reason(err)}. "
                "The rows recorded before are intact; once it is writable again (space freed), "
                "rerun the same command: the run is then recorded from its directory."
            )
            if files.is_disk_full(err):
                raise files.DiskFullError(message, final=True) from None
            raise StoreError(message) from None

    def rows(self, kind: str | None = None, status: str | None = None) -> list[dict]:
        query = sa.select(RUNS.c.run_id, RUNS.c.kind, RUNS.c.status, RUNS.c.row, RUNS.c.error)
        if kind:
            query = query.where(RUNS.c.kind == kind)
        if status:
            query = query.where(RUNS.c.status == status)
        with self._engine.connect() as conn:
            found = conn.execute(query.order_by(RUNS.c.run_id)).all()
        out = []
        for run_id, kind_, status_, row, error in found:
            try:
                data = json.loads(row)
            except json.JSONDecodeError as err:
                raise StoreError(f"{self.name}: row of run {run_id} is corrupt ({err})") from err
            out.append({"run_id": run_id, "kind": kind_, "status": status_, "error": error, **data})
        return out

    # Claims (study/claims.py drives them).

    def add_plan(self, runs: Sequence[tuple[str, str | None]]) -> None:
        """Adds the plan's (run_id, depends_on) in order; runs already there are kept."""
        with self._engine.begin() as conn:
            start = conn.execute(sa.select(sa.func.count()).select_from(CLAIMS)).scalar()
            for offset, (run_id, depends_on) in enumerate(runs):
                values = dict(run_id=run_id, position=start + offset, depends_on=depends_on)
                conn.execute(self._insert(CLAIMS).values(attempts=0, **values))

    def claim(
        self,
        worker: str,
        lease_s: float,
        since: float,
        now: float | None = None,
        among: Sequence[str] | None = None,
    ):
        """Claims the next runnable run for `worker` (module docstring); its id, or None.
        `among`: only one of these runs, the first runnable in the order given (a pack's
        candidates, longest first)."""
        now = time.time() if now is None else now
        with self._engine.begin() as conn:
            query = sa.select(CLAIMS.c.run_id).where(
                ~_done(CLAIMS.c.run_id, since), _ready(since), _free(now)
            )
            if among is None:
                query = query.order_by(CLAIMS.c.position).limit(1)
            else:
                query = query.where(CLAIMS.c.run_id.in_(list(among)))
            # Rows another worker is claiming are skipped, not waited for (PostgreSQL).
            found = conn.execute(query.with_for_update(skip_locked=True, of=CLAIMS)).scalars()
            runnable = set(found)
            order = list(among) if among is not None else sorted(runnable)
            run_id = next((r for r in order if r in runnable), None)
            if run_id is not None:
                conn.execute(
                    sa.update(CLAIMS)
                    .where(CLAIMS.c.run_id == run_id)
                    .values(
                        worker=worker, lease_until=now + lease_s, attempts=CLAIMS.c.attempts + 1
                    )
                )
        return run_id

    def take(self, run_id: str, worker: str, lease_s: float, now: float | None = None) -> bool:
        """Claims one given run (added with `add_plan`) if no live lease holds it; whether it
        did. Its row is not looked at: a search continues a run that has one."""
        now = time.time() if now is None else now
        with self._engine.begin() as conn:
            done = conn.execute(
                sa.update(CLAIMS)
                .where(CLAIMS.c.run_id == run_id, _free(now))
                .values(worker=worker, lease_until=now + lease_s, attempts=CLAIMS.c.attempts + 1)
            )
        return done.rowcount == 1

    def lease_live(self, run_id: str, now: float | None = None) -> bool:
        """Whether a worker holds the run's lease now."""
        now = time.time() if now is None else now
        with self._engine.connect() as conn:
            until = conn.execute(
                sa.select(CLAIMS.c.lease_until).where(CLAIMS.c.run_id == run_id)
            ).scalar()
        return until is not None and until >= now

    def renew(self, run_id: str, worker: str, lease_s: float, now: float | None = None) -> bool:
        """Extends the worker's lease on a run; False when the lease is no longer its own."""
        now = time.time() if now is None else now
        with self._engine.begin() as conn:
            done = conn.execute(
                sa.update(CLAIMS)
                .where(CLAIMS.c.run_id == run_id, CLAIMS.c.worker == worker)
                .where(CLAIMS.c.lease_until.is_not(None))
                .values(lease_until=now + lease_s)
            )
        return done.rowcount == 1

    def release(self, run_id: str, worker: str) -> None:
        """Gives a claimed run back at once (a preempted or interrupted worker)."""
        with self._engine.begin() as conn:
            conn.execute(
                sa.update(CLAIMS)
                .where(CLAIMS.c.run_id == run_id, CLAIMS.c.worker == worker)
                .values(lease_until=None)
            )

    def runnable(self, since: float, among: Sequence[str], now: float | None = None) -> list:
        """The runs of `among` a claim could take now (in the order given): no row (or one
        failed before `since`), their dependency has a row, no live lease holds them."""
        now = time.time() if now is None else now
        with self._engine.connect() as conn:
            query = sa.select(CLAIMS.c.run_id).where(
                ~_done(CLAIMS.c.run_id, since),
                _ready(since),
                _free(now),
                CLAIMS.c.run_id.in_(list(among)),
            )
            found = set(conn.execute(query).scalars())
        return [run_id for run_id in among if run_id in found]

    def remaining(self, since: float) -> int:
        """Runs of the plan without a finished row (or a row failed since `since`)."""
        with self._engine.connect() as conn:
            query = sa.select(sa.func.count()).where(~_done(CLAIMS.c.run_id, since))
            return conn.execute(query.select_from(CLAIMS)).scalar()

    def claims(self) -> dict[str, dict]:
        """run_id -> its claim (worker, lease_until, attempts): for tests and status lines."""
        with self._engine.connect() as conn:
            found = conn.execute(sa.select(CLAIMS)).mappings().all()
        return {row["run_id"]: dict(row) for row in found}

    def close(self):
        self._engine.dispose()


def _done(run_id_column, since: float):
    """A run whose row says it needs no more work from a worker that started at `since`."""
    done = RUNS.alias("done")
    failed_since = sa.and_(done.c.status == "failed", done.c.finished_at >= since)
    recorded = sa.or_(done.c.status != "failed", failed_since)
    return sa.exists().where(done.c.run_id == run_id_column, recorded)


def _ready(since: float):
    """The run's dependency (its pretraining run) has a row: finished, or failed (the run is
    then claimed and fails at once, naming it)."""
    return sa.or_(CLAIMS.c.depends_on.is_(None), _done(CLAIMS.c.depends_on, since))


def _free(now: float):
    return sa.or_(CLAIMS.c.lease_until.is_(None), CLAIMS.c.lease_until < now)


def _reason(err: Exception) -> str:
    """The first line of a driver error (it never holds the password: the URL is not in it)."""
    original = getattr(err, "orig", err)
    return str(original).strip().splitlines()[0] if str(original).strip() else type(err).__name__


def store_of(out_dir: str) -> str:
    """The store location of a study directory: the URL its OUT/store.json names (without its
    password: PGPASSWORD or ~/.pgpass supply it), else OUT/results.sqlite."""
    pointer = files.path(out_dir) / POINTER_FILE
    if pointer.exists():
        return _REGISTERED.get(str(out_dir)) or files.read_json(pointer)["url"]
    return os.path.join(out_dir, DEFAULT_FILE)


_REGISTERED: dict[str, str] = {}  # out_dir -> full URL, for this process's own reports


def point_to(out_dir: str, url: str) -> None:
    """Records in OUT/store.json that the study's rows live in the database at `url`."""
    _REGISTERED[str(out_dir)] = url
    files.atomic_write_json(files.path(out_dir) / POINTER_FILE, {"url": without_password(url)})


def open_all(out_dir: str) -> list[ResultsStore]:
    """Every store of a study directory: its URL store, or its SQLite files (one per worker)."""
    location = store_of(out_dir)
    if is_url(location):
        return [ResultsStore(location)]
    names = sorted(f.name for f in files.path(out_dir).iterdir() if f.name.endswith(".sqlite"))
    return [ResultsStore(os.path.join(out_dir, name)) for name in names]


def finished_finetune_rows(out_dir: str) -> list[dict]:
    rows = {}
    for store in open_all(out_dir):
        for row in store.rows(kind="finetune", status="finished"):
            rows[row["run_id"]] = row
        store.close()
    return [rows[k] for k in sorted(rows)]


def export_csv(rows: list[dict], path: str) -> None:
    """Writes the results table atomically (files.atomic_write_csv)."""
    files.atomic_write_csv(path, rows, COLUMNS)
