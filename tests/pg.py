"""Test helper: a throw-away PostgreSQL cluster listening only on a Unix socket.

``PgCluster`` runs ``initdb`` into a fresh temporary directory and ``pg_ctl start`` with TCP
switched off (``listen_addresses=''``), so parallel test sessions on one machine never clash
over a port. PostgreSQL refuses to run as root, so under root (CI containers) the server
binaries run as the ``postgres`` user of the Debian package, in a directory it owns. Durability
is switched off (``fsync=off``): the cluster lives for one test session.

The server binaries come from ``$EDGE_PG_BIN``, the newest ``/usr/lib/postgresql/*/bin``
(Debian's ``postgresql`` package), or ``PATH``. Without them (or without psycopg) the fixtures
skip on a developer's machine and fail on CI, whose .ci/run installs both.
"""

from __future__ import annotations

import itertools
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from support import require_module, unavailable

log = logging.getLogger(__name__)


def pg_bin() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or None when PostgreSQL is not installed."""
    if os.environ.get("EDGE_PG_BIN"):
        return Path(os.environ["EDGE_PG_BIN"])
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PgCluster:
    """One PostgreSQL server in its own temporary directory; ``stop()`` removes it all."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = Path(bindir)
        # Not pytest's tmp_path: it is private to the test user (0700), and the server may run
        # as another user. The Unix socket path must also stay short (about 100 bytes).
        self.root = Path(tempfile.mkdtemp(prefix="edge-pg-"))
        self.data = self.root / "data"
        self.logfile = self.root / "postgres.log"
        self._runas: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and there is no postgres user") from None
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._runas = ["runuser", "-u", "postgres", "--"]
        self._dbs = itertools.count(1)
        self.running = False

    def _run(self, *args: str) -> None:
        proc = subprocess.run(
            [*self._runas, *args], capture_output=True, text=True, timeout=60, check=False
        )
        if proc.returncode != 0:
            tail = self.logfile.read_text()[-2000:] if self.logfile.exists() else ""
            raise RuntimeError(f"{args[0]} failed: {proc.stdout}{proc.stderr}{tail}")

    def start(self) -> None:
        """initdb (trust auth, UTF-8, C locale) and start the server; wait until it is ready."""
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        )
        options = f"-k {self.root} -c listen_addresses='' -c fsync=off -c full_page_writes=off"
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.logfile),
            "-o",
            options,
            "-w",
            "-t",
            "30",
            "start",
        )
        self.running = True
        log.info("test PostgreSQL running in %s", self.root)

    def dsn(self, dbname: str = "postgres") -> str:
        """libpq URI of a database of this cluster (over its Unix socket)."""
        return f"postgresql:///{dbname}?host={self.root}&user=postgres"

    def new_database(self) -> str:
        """Create an empty database and return its DSN (one per test keeps tests apart)."""
        import psycopg

        name = f"edge_test_{next(self._dbs)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def stop(self) -> None:
        """Stop the server (no checkpoint needed: the data is thrown away) and delete it."""
        if self.running:
            try:
                self._run(
                    str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"
                )
            except RuntimeError as exc:
                log.warning("could not stop the test PostgreSQL: %s", exc)
            self.running = False
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session", name="pg_cluster")
def pg_cluster_fixture():
    """A running throw-away PostgreSQL for the whole session (see the module docstring for
    when it skips)."""
    require_module("psycopg", "pip install -e '.[pg]'")
    bindir = pg_bin()
    if bindir is None or not (bindir / "pg_ctl").exists():
        unavailable("PostgreSQL server binaries", "apt-get install postgresql")
    cluster = PgCluster(bindir)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()


@pytest.fixture(name="pg_dsn")
def pg_dsn_fixture(pg_cluster) -> str:
    """DSN of a fresh, empty database on the session's cluster."""
    return pg_cluster.new_database()
