"""A real PostgreSQL server for the store tests, started once per session.

``initdb`` + ``pg_ctl`` on a fresh temporary directory: trust authentication, TCP on a free
loopback port, the unix socket in the same directory, durability off (fsync, full-page writes,
synchronous commit: a test server loses nothing that matters on a crash). Start to ready ≈ 0.5 s.

initdb refuses to run as root, and CI runs as root: there the server runs as ``postgres`` (the
Debian package creates that user) or else ``nobody``, through ``subprocess``'s ``user=`` / ``group=``
(setuid in the child, no sudo or runuser needed); the directory is handed to that user.

Server binaries are looked up in PATH, then in Debian's /usr/lib/postgresql/<version>/bin (the
newest). Without them the tests that need the server skip, saying how to install them.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

SUPERUSER = "robalign"
DATABASE = "robalign_test"
_databases = itertools.count()


def postgres_bin() -> Path | None:
    """The folder holding initdb and pg_ctl, or None."""
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []
    versions = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    versions.sort(key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0, reverse=True)
    candidates += [Path(p).parent for p in versions]
    return next((c for c in candidates if (c / "initdb").is_file() and (c / "pg_ctl").is_file()), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, bin_dir: Path):
        self.bin = bin_dir
        # short path: a unix socket path must stay under 107 bytes
        self.dir = Path(tempfile.mkdtemp(prefix="robalign-pg-", dir="/tmp" if Path("/tmp").is_dir() else None))
        self.run_as: dict = {}
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                account = pwd.getpwnam("nobody")
            os.chown(self.dir, account.pw_uid, account.pw_gid)
            self.run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        self.port = 0

    def _run(self, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env |= {"LC_ALL": "C", "HOME": str(self.dir)}
        result = subprocess.run([str(self.bin / args[0]), *args[1:]], cwd=self.dir, env=env, capture_output=True,
                                text=True, timeout=120, **self.run_as)
        if result.returncode:
            log = self.dir / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({result.returncode}): {result.stderr[-2000:]}\n{tail}")

    def start(self) -> None:
        self._run("initdb", "-D", "data", "-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync")
        for attempt in range(3):  # another process may take the free port between lookup and bind
            self.port = _free_port()
            options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off "
                       "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
            try:
                self._run("pg_ctl", "-D", "data", "-l", "server.log", "-w", "-t", "60", "-o", options, "start")
                return
            except RuntimeError:
                if attempt == 2:
                    raise

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        try:
            if (self.dir / "data" / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", "data", "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    """A running PostgreSQL server of this session (see the module docstring); skips without binaries."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) in PATH or /usr/lib/postgresql/*/bin; "
                    "install them with: apt-get install postgresql")
    server = PostgresServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server) -> str:
    """``postgresql://robalign@127.0.0.1:PORT/robalign_test``: one database for the whole session
    (tests that share it use their own sweep names)."""
    return postgres_server.create_database(DATABASE)


@pytest.fixture
def postgres_database(postgres_server) -> str:
    """The URL of a new, empty database of the session's server, for one test."""
    return postgres_server.create_database(f"robalign_t{next(_databases)}")
