"""The generation cache and the reference log-prob cache open a new SQLite file while another
connection holds its write lock (what happens when two processes of a sweep open the same new
cache together): both wait and end in WAL mode, where a bare ``PRAGMA journal_mode=WAL`` failed
at once with "database is locked" (the results store's regression test shows the same race)."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from robalign.evaluation.cache import ResponseCache
from robalign.sqlite_wal import switch_to_wal
from robalign.training.reference import SequenceStore


def _held_for(path, seconds: float):
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(seconds, other.execute, args=("COMMIT",))
    release.start()
    return other, release


@pytest.mark.parametrize("opener", [ResponseCache, SequenceStore], ids=["generation-cache", "reference-cache"])
def test_a_cache_opened_while_the_new_file_is_locked_waits_for_it(tmp_path, opener):
    path = tmp_path / "new.sqlite"
    other, release = _held_for(path, 0.3)
    started = time.monotonic()
    try:
        opened = opener(path)
    finally:
        release.join()
    assert time.monotonic() - started >= 0.3
    other.close()
    assert opened._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_the_bare_pragma_fails_and_the_switch_gives_up_after_its_timeout(tmp_path):
    path = tmp_path / "new.sqlite"
    other, release = _held_for(path, 1.0)
    try:
        conn = sqlite3.connect(path, timeout=5, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            conn.execute("PRAGMA journal_mode=WAL")  # busy_timeout is not consulted here
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            switch_to_wal(conn, timeout_s=0.05)
    finally:
        release.join()
        other.close()
