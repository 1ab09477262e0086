"""A real PostgreSQL server for the store and claims tests: Debian's binaries, a temp cluster.

initdb into a temp directory, `postgres` on a free loopback port (password authentication, so
the tests see redaction at work), stopped by the session finalizer. initdb and postgres refuse
to run as root, so as root they run as the `postgres` system user in a directory it owns. When
the binaries are absent the tests that need the server are skipped, saying how to install them
(.ci/run installs them).
"""

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

USER, PASSWORD = "ft", "s3cret-pw"
_databases = itertools.count()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _start(bindir: str, root: str, port: int) -> subprocess.Popen:
    pwfile = os.path.join(root, "pw")
    with open(pwfile, "w") as f:
        f.write(PASSWORD)
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        for path in (root, pwfile):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    data = os.path.join(root, "data")
    initdb = [f"{bindir}/initdb", "-D", data, "-U", USER, f"--pwfile={pwfile}"]
    initdb += ["--auth=scram-sha-256", "--no-sync", "-E", "UTF8", "--locale=C"]
    subprocess.run(_as_postgres(initdb), check=True, capture_output=True)
    server = [f"{bindir}/postgres", "-D", data, "-h", "127.0.0.1", "-p", str(port), "-k", root]
    server += ["-c", "fsync=off", "-c", "max_connections=60"]
    log = open(os.path.join(root, "server.log"), "w")
    return subprocess.Popen(_as_postgres(server), stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture(scope="session")
def postgres_server():
    """postgresql://ft:PASSWORD@127.0.0.1:PORT (no database): a server for this session."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("PostgreSQL server absent: apt-get install -y postgresql (.ci/run does)")
    import sqlalchemy as sa

    root, port = tempfile.mkdtemp(prefix="ft_scaling_pg_"), _free_port()
    bindir = os.path.dirname(found[-1])
    server = _start(bindir, root, port)
    base = f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}"
    engine = sa.create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
    try:
        deadline = time.time() + 60
        while True:
            try:
                engine.connect().close()
                break
            except sa.exc.OperationalError:
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
        yield base, engine
    finally:
        engine.dispose()
        # Fast shutdown (clients are disconnected, not waited for); pg_ctl signals the server
        # itself, which runuser would not pass a signal on to.
        stop = [f"{bindir}/pg_ctl", "-D", os.path.join(root, "data"), "stop", "-m", "fast"]
        subprocess.run(_as_postgres(stop), capture_output=True, check=False, timeout=60)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh database on the session's server; its SQLAlchemy URL."""
    base, engine = postgres_server
    name = f"study_{os.getpid()}_{next(_databases)}"
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    return f"{base}/{name}"
