"""SQLite's switch to WAL mode, safe when several processes open the same new file at once.

Shared by the results store, the generation cache and the reference log-prob cache: each opens its
file with ``PRAGMA journal_mode = WAL``, and on a brand-new file that pragma can fail at once with
"database is locked" (module function below), which ``busy_timeout`` does not cover.
"""

from __future__ import annotations

import sqlite3
import time


def switch_to_wal(cursor, timeout_s: float) -> None:
    """``PRAGMA journal_mode = WAL``, retried while another connection switches the same new file.

    WAL mode is stored in the file, so only a store's first connection really switches: it reads the
    header (shared lock) and rewrites it (write lock). A second connection doing the same at that
    moment holds the shared lock and asks for the write lock the first one holds; SQLite then fails
    it at once with "database is locked" without calling the busy handler (waiting there could
    deadlock), so busy_timeout does not cover it: 11 of 1,800 opens failed so when 6 processes opened
    new stores within 10 ms of each other on 2 busy cores. Once the other connection has switched the
    file, the retry is a no-op; the retries stop after ``timeout_s`` like any other lock wait.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.002  # doubling to 0.1 s: the switch itself takes about a millisecond
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(2 * delay, 0.1)
