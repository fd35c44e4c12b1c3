"""The results store: every sweep, cell, metric and judged sample in one SQL database.

``Store(url)`` opens ``sqlite:///runs/results.sqlite`` by default (the folder is created), or a
PostgreSQL database for a sweep shared by several machines (``postgresql://user@host/db``, run
through psycopg 3: ``pip install 'robalign[postgres]'``); the URL convention is Optuna's. Reports
and analysis read only this store; a cell's own files are reached through its ``run_dir``.

Tables (SQLAlchemy Core, created on first open):

    schema_version  version                        one row; a store newer than this code is refused
    sweeps          name, created, config, provenance       config = canonical JSON, the sweep's identity
    cells           sweep, cell, status, params, worker, attempts, claimed, finished, run_dir,
                    provenance, error                       status: pending | running | done | failed
    metrics         sweep, cell, name, value, low, high, n, interval     long format, one row a metric
    samples         id, sweep, cell, benchmark, prompt_id, category, attack, prompt, answer, label,
                    judge, extra                            one row per judged answer (the drill-down)

Claiming. ``claim`` is one conditional write: a new cell is inserted as running (``ON CONFLICT DO
NOTHING``), an existing one is updated only ``WHERE`` it is pending or failed, or running but owned
by the same worker or claimed more than ``stale_after_s`` ago (a worker that died). The database
decides: PostgreSQL re-checks the ``WHERE`` of a concurrent update after the first commits (READ
COMMITTED), SQLite serialises writers. So two workers never both get True for one cell, and a done
cell is never claimed again. ``finish`` writes the cell's metrics and samples and marks it done in one
transaction: a reader sees all of a cell or none of it.

SQLite concurrency. WAL (readers never block the writer), ``synchronous=NORMAL``, foreign keys on,
and every write transaction opens with ``BEGIN IMMEDIATE``: a writer takes the lock up front and
waits up to ``BUSY_TIMEOUT_S`` for it, instead of starting as a reader and failing at once with
"database is locked" when it tries to upgrade. Switching a new file to WAL is the one upgrade that
cannot be avoided (its header is read, then rewritten) and that busy_timeout does not cover when
two connections switch it together: it is retried (``robalign.sqlite_wal.switch_to_wal``). Threads and processes can
share one file, new or not.

Secrets. ``url`` keeps the password (it is needed to connect); ``str(store)``, every error and
everything stored (sweep config, provenance, error text) show URLs with user info and query
replaced by ``***``, secret-named keys (``password``, ``token`` ...) as ``***``, and the store's own
password, wherever it appears literally, as ``***``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import sqlalchemy as sa

from robalign.errors import UserError
from robalign.evaluation.specs import REDACTED, is_secret_option, redact_url
from robalign.sqlite_wal import switch_to_wal

DEFAULT_URL = "sqlite:///runs/results.sqlite"
SCHEMA_VERSION = 1
STATUSES = ("pending", "running", "done", "failed")
BUSY_TIMEOUT_S = 120  # SQLite: how long a writer waits for the lock (a finish writes ~1k samples in ms)
CONNECT_TIMEOUT_S = 10  # PostgreSQL: an unreachable host fails in seconds, not the OS's minutes
SETUP_LOCK = 0x726F62616C69676E  # pg_advisory_xact_lock key ("robalign"): one creator of the tables at a time
SAMPLE_FIELDS = ("benchmark", "prompt_id", "category", "attack", "prompt", "answer", "label", "judge")
METRIC_FIELDS = ("value", "low", "high", "n")

metadata = sa.MetaData()
_schema = sa.Table("schema_version", metadata, sa.Column("version", sa.Integer, primary_key=True))
_sweeps = sa.Table(
    "sweeps", metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("created", sa.DateTime, nullable=False),  # naive UTC, the same on both backends
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("provenance", sa.Text, nullable=False),
)
_cells = sa.Table(
    "cells", metadata,
    sa.Column("sweep", sa.String(200), sa.ForeignKey("sweeps.name", ondelete="CASCADE"), primary_key=True),
    sa.Column("cell", sa.String(100), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("worker", sa.String(200)),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("claimed", sa.DateTime),
    sa.Column("finished", sa.DateTime),  # when the cell last ended, done or failed
    sa.Column("run_dir", sa.Text),
    sa.Column("provenance", sa.Text),
    sa.Column("error", sa.Text),
)


def _cell_key() -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["sweep", "cell"], ["cells.sweep", "cells.cell"], ondelete="CASCADE")


_metrics = sa.Table(
    "metrics", metadata,
    sa.Column("sweep", sa.String(200), primary_key=True),
    sa.Column("cell", sa.String(100), primary_key=True),
    sa.Column("name", sa.String(300), primary_key=True),
    sa.Column("value", sa.Double),  # NULL = NaN (SQLite stores NaN as NULL anyway)
    sa.Column("low", sa.Double),
    sa.Column("high", sa.Double),
    sa.Column("n", sa.Integer),
    sa.Column("interval", sa.Boolean, nullable=False),  # given as {"value", "low", "high", "n"}
    _cell_key(),
)
_samples = sa.Table(
    "samples", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("sweep", sa.String(200), nullable=False),
    sa.Column("cell", sa.String(100), nullable=False),
    *(sa.Column(name, sa.Text, nullable=name == "label") for name in SAMPLE_FIELDS),
    sa.Column("extra", sa.Text),
    _cell_key(),
    sa.Index("samples_cell", "sweep", "cell", "benchmark"),
)


class Store:
    """One results database; safe to share between threads, processes and machines."""

    def __init__(self, url: str | None = None):
        self.url = DEFAULT_URL if url is None else url
        parsed = _parse_url(self.url)
        self._secrets = _secrets_of(parsed.password)
        self._display = _redacted(self.url)
        self._sqlite = parsed.get_backend_name() == "sqlite"
        self._engine = _create_engine(parsed, self._display)
        self._pid = os.getpid()
        self._setup()

    def __repr__(self) -> str:
        return f"Store({self._display!r})"

    __str__ = __repr__

    def __reduce__(self):  # pickled (Ray, spawn) as its URL; the copy opens its own connections
        return Store, (self.url,)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- sweeps -------------------------------------------------------------------------------------

    def add_sweep(self, name: str, config: dict, provenance: dict, extendable: tuple[str, ...] = ()) -> None:
        """Record a sweep. The same config again (compared as canonical JSON) is a no-op; a different
        one under an existing name is a UserError, unless it differs only inside the keys
        ``extendable``, top-level or dotted (a sweep's grid values, skip rules, executor, extra probe
        curves: settings that choose which cells run, where, and what the report shows of them, not
        what a cell computes), where the stored config becomes the new one.
        A grid's keys must stay the same: a new axis would give every cell another identity."""
        _check_key("sweep name", name, 200)
        config_json = json.dumps(self._clean(config), sort_keys=True, separators=(",", ":"), default=str)
        with self._write() as conn:
            conn.execute(self._insert(_sweeps).values(
                name=name, created=_now(), config=config_json, provenance=self._dumps(provenance),
            ).on_conflict_do_nothing(index_elements=["name"]))
            stored = conn.execute(sa.select(_sweeps.c.config).where(_sweeps.c.name == name)).scalar_one()
            n_cells = conn.execute(sa.select(sa.func.count()).where(_cells.c.sweep == name)).scalar_one()
            old, new = json.loads(stored), json.loads(config_json)
            if stored != config_json and _only_extends(old, new, extendable):
                conn.execute(_sweeps.update().where(_sweeps.c.name == name).values(config=config_json))
                return
        if stored != config_json:
            keys = ", ".join(_differences(old, new)[:6])
            raise UserError(
                f"sweep {name!r} is already in the store {self._display} with a different config "
                f"(differs at: {keys}); give this sweep a new name, or re-run it with --restart, which "
                f"deletes its {n_cells} stored cells and starts again")

    def delete_sweep(self, name: str) -> None:
        """Delete a sweep with its cells, metrics and samples (nothing if it is not there)."""
        with self._write() as conn:
            for table in (_samples, _metrics, _cells):
                conn.execute(table.delete().where(table.c.sweep == name))
            conn.execute(_sweeps.delete().where(_sweeps.c.name == name))

    def sweeps(self) -> list[dict]:
        """Every sweep: name, created (UTC), config, provenance, counts (status -> cells)."""
        with self._read() as conn:
            rows = conn.execute(sa.select(_sweeps).order_by(_sweeps.c.created, _sweeps.c.name)).all()
            counts = conn.execute(sa.select(_cells.c.sweep, _cells.c.status, sa.func.count())
                                  .group_by(_cells.c.sweep, _cells.c.status)).all()
        by_sweep: dict[str, dict[str, int]] = {}
        for sweep, status, n in counts:
            by_sweep.setdefault(sweep, dict.fromkeys(STATUSES, 0))[status] = n
        return [{"name": r.name, "created": _utc(r.created), "config": json.loads(r.config),
                 "provenance": json.loads(r.provenance),
                 "counts": by_sweep.get(r.name, dict.fromkeys(STATUSES, 0))} for r in rows]

    # -- cells --------------------------------------------------------------------------------------

    def claim(self, sweep: str, cell: str, params: dict, worker: str, stale_after_s: float = 6 * 3600) -> bool:
        """Atomically make ``cell`` running under ``worker``; False when it is done, or running under
        another worker and claimed less than ``stale_after_s`` ago (compared with this machine's clock)."""
        _check_key("cell id", cell, 100)
        _check_key("worker", worker, 200)
        now = _now()
        values = {"status": "running", "params": _dumps(params), "worker": worker, "claimed": now, "error": None}
        key = (_cells.c.sweep == sweep) & (_cells.c.cell == cell)
        claimable = _cells.c.status.in_(("pending", "failed")) | (
            (_cells.c.status == "running")
            & ((_cells.c.worker == worker) | (_cells.c.claimed < now - _dt.timedelta(seconds=stale_after_s))))
        with self._write() as conn:
            insert = self._insert(_cells).values(sweep=sweep, cell=cell, attempts=1, **values) \
                .on_conflict_do_nothing(index_elements=["sweep", "cell"])
            try:
                if self._sqlite:  # sqlite3_changes() is exact; RETURNING needs SQLite >= 3.35
                    inserted = conn.execute(insert).rowcount == 1
                else:  # psycopg reports no rowcount for an INSERT here (-1): ask for the row back
                    inserted = conn.execute(insert.returning(_cells.c.cell)).first() is not None
            except sa.exc.IntegrityError:  # the foreign key: no such sweep
                raise UserError(f"no sweep {sweep!r} in the store {self._display}: add_sweep() it first") from None
            if inserted:
                return True
            updated = conn.execute(_cells.update().where(key, claimable)
                                   .values(attempts=_cells.c.attempts + 1, **values)).rowcount
        return updated == 1

    def finish(self, sweep: str, cell: str, *, metrics: dict, run_dir: str, provenance: dict,
               samples: list[dict] | None = None) -> None:
        """Store a claimed cell's results and mark it done, in one transaction (a second finish of the
        same cell replaces its metrics and samples)."""
        metric_rows = [{"sweep": sweep, "cell": cell, **_metric_row(name, m)} for name, m in metrics.items()]
        sample_rows = [{"sweep": sweep, "cell": cell, **_sample_row(s, i)} for i, s in enumerate(samples or [])]
        with self._write() as conn:
            self._update_claimed(conn, sweep, cell, status="done", finished=_now(), run_dir=str(run_dir),
                                 provenance=self._dumps(provenance), error=None)
            conn.execute(_metrics.delete().where(_metrics.c.sweep == sweep, _metrics.c.cell == cell))
            conn.execute(_samples.delete().where(_samples.c.sweep == sweep, _samples.c.cell == cell))
            if metric_rows:
                conn.execute(_metrics.insert(), metric_rows)
            if sample_rows:
                conn.execute(_samples.insert(), sample_rows)

    def fail(self, sweep: str, cell: str, error: str) -> None:
        """Mark a claimed cell failed, keeping the error text (a later claim may retry it)."""
        with self._write() as conn:
            self._update_claimed(conn, sweep, cell, status="failed", finished=_now(), error=self._scrub(str(error)))

    def status(self, sweep: str) -> dict[str, str]:
        """cell -> pending | running | done | failed; {} for a sweep the store does not hold (yet)."""
        with self._read() as conn:
            rows = conn.execute(sa.select(_cells.c.cell, _cells.c.status).where(_cells.c.sweep == sweep)).all()
        return dict(sorted(rows))

    def cells(self, sweep: str):
        """Every cell of a sweep with its bookkeeping, as a DataFrame: cell, status, worker, attempts,
        claimed, finished, run_dir, error, params (dict), provenance (dict or None)."""
        import pandas as pd

        self._require_sweep(sweep)
        with self._read() as conn:
            rows = conn.execute(sa.select(_cells).where(_cells.c.sweep == sweep).order_by(_cells.c.cell)).all()
        columns = ["cell", "status", "worker", "attempts", "claimed", "finished", "run_dir", "error"]
        frame = pd.DataFrame([[getattr(r, c) for c in columns] for r in rows], columns=columns)
        frame["params"] = [json.loads(r.params) for r in rows]
        frame["provenance"] = [json.loads(r.provenance) if r.provenance else None for r in rows]
        for column in ("claimed", "finished"):
            frame[column] = pd.to_datetime(frame[column], utc=True)
        return frame

    # -- reading results ----------------------------------------------------------------------------

    def frame(self, sweep: str | None = None):
        """One row per done cell: sweep, cell, run_dir, finished, every param by its dotted key, then
        every metric by name (a metric given with an interval adds NAME.low, NAME.high, NAME.n)."""
        import pandas as pd

        done = _cells.c.status == "done"
        if sweep is not None:
            self._require_sweep(sweep)
            done = done & (_cells.c.sweep == sweep)
        with self._read() as conn:
            rows = conn.execute(sa.select(_cells.c.sweep, _cells.c.cell, _cells.c.run_dir, _cells.c.finished,
                                          _cells.c.params).where(done).order_by(_cells.c.sweep, _cells.c.cell)).all()
            metric_rows = conn.execute(sa.select(_metrics).join(_cells, (_cells.c.sweep == _metrics.c.sweep)
                                                                & (_cells.c.cell == _metrics.c.cell)).where(done)).all()
        base = pd.DataFrame([{"sweep": r.sweep, "cell": r.cell, "run_dir": r.run_dir, "finished": r.finished,
                              **_flatten(json.loads(r.params))} for r in rows],
                            columns=None if rows else ["sweep", "cell", "run_dir", "finished"])
        base["finished"] = pd.to_datetime(base["finished"], utc=True)
        row_of = {(r.sweep, r.cell): i for i, r in enumerate(rows)}
        columns: dict[str, list] = {}
        for m in sorted(metric_rows, key=lambda m: m.name):
            if (m.sweep, m.cell) not in row_of:
                continue
            parts = {"": m.value} if not m.interval else {"": m.value, ".low": m.low, ".high": m.high, ".n": m.n}
            for suffix, value in parts.items():
                column = columns.setdefault(m.name + suffix, [math.nan] * len(rows))
                column[row_of[(m.sweep, m.cell)]] = math.nan if value is None else value
        metric_frame = pd.DataFrame(columns, index=base.index)
        for name in metric_frame.columns:
            if name.endswith(".n") and name[:-2] in columns:  # counts stay integers, missing as <NA>
                metric_frame[name] = metric_frame[name].astype("Int64")
        return pd.concat([base, metric_frame], axis=1)

    def samples(self, sweep: str, cells: list[str] | None = None, benchmark: str | None = None):
        """The judged answers of a sweep (optionally of some cells, of one benchmark) as a DataFrame:
        sweep, cell, benchmark, prompt_id, category, attack, prompt, answer, label, judge, extra."""
        import pandas as pd

        self._require_sweep(sweep)
        query = sa.select(_samples).where(_samples.c.sweep == sweep)
        if cells is not None:
            query = query.where(_samples.c.cell.in_(list(cells)))
        if benchmark is not None:
            query = query.where(_samples.c.benchmark == benchmark)
        with self._read() as conn:
            rows = conn.execute(query.order_by(_samples.c.cell, _samples.c.id)).all()
        columns = ["sweep", "cell", *SAMPLE_FIELDS]
        frame = pd.DataFrame([[getattr(r, c) for c in columns] for r in rows], columns=columns)
        frame["extra"] = [json.loads(r.extra) if r.extra else None for r in rows]
        return frame

    # -- internals ----------------------------------------------------------------------------------

    def _setup(self) -> None:
        """Create the tables (once, under a lock) and refuse a store written by newer code."""
        try:
            with self._write() as conn:
                if not self._sqlite:  # DDL is transactional there; the lock orders concurrent creators
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SETUP_LOCK})
                found = None
                if sa.inspect(conn).has_table("schema_version"):
                    found = conn.execute(sa.select(sa.func.max(_schema.c.version))).scalar()
                if found is not None and found > SCHEMA_VERSION:
                    raise UserError(
                        f"the results store {self._display} has schema version {found}, newer than this "
                        f"robalign reads (version {SCHEMA_VERSION}); upgrade robalign (pip install -U robalign) "
                        "or use another store")
                metadata.create_all(conn)
                if found is None:
                    conn.execute(_schema.insert().values(version=SCHEMA_VERSION))
        except sa.exc.DBAPIError as exc:
            self._engine.dispose()
            fix = ("check that the path is a SQLite database and its folder is writable" if self._sqlite else
                   "check that the server runs and that host, port, user, password and database in the URL "
                   "are right (create the database with: createdb NAME)")
            raise UserError(f"cannot open the results store {self._display}: {self._driver_message(exc)}; "
                            f"{fix}") from None

    def _driver_message(self, exc: sa.exc.DBAPIError) -> str:
        text = str(exc.orig) if exc.orig is not None else str(exc)
        return self._scrub(" ".join(text.split())[:300])

    @contextmanager
    def _connection(self, read: bool) -> Iterator[sa.Connection]:
        if os.getpid() != self._pid:  # a forked child must not reuse the parent's sockets
            self._engine.dispose(close=False)
            self._pid = os.getpid()
        with self._engine.connect() as conn:
            conn.execution_options(robalign_read=read)
            if read and not self._sqlite:  # one snapshot for a read's several queries (SQLite's WAL read
                conn.execution_options(isolation_level="REPEATABLE READ")  # transaction already is one)
            with conn.begin():
                yield conn

    def _write(self):
        return self._connection(read=False)

    def _read(self):
        return self._connection(read=True)

    # tables kept beside the store's own (``experiments.curves``) use its transactions through these
    def write_transaction(self):
        """A write transaction (BEGIN IMMEDIATE on SQLite, fork-safe), as a context manager yielding the connection."""
        return self._write()

    def read_connection(self):
        """A read-only connection, as a context manager."""
        return self._read()

    def _insert(self, table: sa.Table):
        if self._sqlite:
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        return insert(table)

    def _update_claimed(self, conn: sa.Connection, sweep: str, cell: str, **values) -> None:
        key = (_cells.c.sweep == sweep) & (_cells.c.cell == cell)
        if conn.execute(_cells.update().where(key).values(**values)).rowcount != 1:
            raise UserError(f"cell {cell!r} of sweep {sweep!r} is not in the store {self._display}: "
                            "claim() it before finishing or failing it")

    def _require_sweep(self, sweep: str) -> None:
        with self._read() as conn:
            names = conn.execute(sa.select(_sweeps.c.name).order_by(_sweeps.c.name)).scalars().all()
        if sweep not in names:
            known = ", ".join(names) if names else "none"
            raise UserError(f"no sweep {sweep!r} in the store {self._display} (sweeps there: {known}); "
                            "check --sweep and --store")

    def _scrub(self, text: str) -> str:
        text = _URL.sub(lambda m: _redacted(m.group(0)), text)
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def _clean(self, value: Any) -> Any:
        """A record made safe to store: URLs redacted, secret-named keys and the store's password masked."""
        if isinstance(value, str):
            return self._scrub(value)
        if isinstance(value, Mapping):
            return {str(k): REDACTED if is_secret_option(k) else self._clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean(v) for v in value]
        return value

    def _dumps(self, record: Any) -> str:
        return _dumps(self._clean(record))


# -- URLs and engines ---------------------------------------------------------------------------------

_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>{},]+", re.IGNORECASE)


def _redacted(url: str) -> str:
    """``redact_url`` where there is something to hide; URLs without user info or query stay as they
    are (``redact_url`` would turn ``sqlite:///runs/x`` into ``sqlite:/runs/x``)."""
    text = str(url)
    try:
        parts = urlsplit(text)
    except ValueError:
        return REDACTED
    if "@" in parts.netloc or parts.query:
        return redact_url(text)
    return REDACTED if "@" in text else text  # "user:pw@host/db" without a scheme: no netloc to cut


def _secrets_of(password: str | None) -> list[str]:
    # passwords under 4 characters are not masked literally: "ab" would mask every "ab" in a record
    if not password or len(password) < 4:
        return []
    return sorted({password, quote(password, safe="")}, key=len, reverse=True)


def _parse_url(url: str) -> sa.URL:
    from sqlalchemy.engine import make_url

    example = "sqlite:///runs/results.sqlite or postgresql://USER@HOST:5432/DATABASE"
    if not isinstance(url, str) or "://" not in url:
        raise UserError(f"results store URL {_redacted(str(url))!r} is not a URL; write one such as {example}")
    try:
        parsed = make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        raise UserError(f"results store URL {_redacted(url)!r} cannot be parsed; write one such as {example} "
                        "(a password with '@', ':' or '/' in it must be percent-encoded)") from None
    if parsed.drivername in ("postgresql", "postgres"):  # psycopg 3, not SQLAlchemy's default psycopg2
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise UserError(f"results store URL {_redacted(url)!r}: only SQLite and PostgreSQL stores are "
                        f"supported; write one such as {example}")
    return parsed


def _create_engine(parsed: sa.URL, display: str) -> sa.Engine:
    if parsed.get_backend_name() == "postgresql":
        try:
            return sa.create_engine(parsed, pool_pre_ping=True, connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
        except ImportError as exc:
            raise UserError(f"the results store {display} needs the PostgreSQL driver psycopg ({exc}); "
                            "install it with: pip install 'robalign[postgres]'") from None
    database = parsed.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        try:
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the folder of the results store {display}: {exc.strerror}; "
                            "choose a writable path") from None
    engine = sa.create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_S})
    sa.event.listen(engine, "connect", _sqlite_connect)
    sa.event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None  # the driver's implicit BEGIN off: _sqlite_begin issues it
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
    switch_to_wal(cursor, BUSY_TIMEOUT_S)
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("robalign_read") else "BEGIN IMMEDIATE")


# -- rows ---------------------------------------------------------------------------------------------

def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC).replace(tzinfo=None)


def _utc(value: _dt.datetime | None) -> _dt.datetime | None:
    return None if value is None else value.replace(tzinfo=_dt.UTC)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _check_key(what: str, value: str, limit: int) -> None:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ValueError(f"{what} must be a non-empty string of at most {limit} characters, not {value!r}")


def _number(name: str, field: str, value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"metric {name!r}: {field} must be a number or None, not {value!r}") from None
    return None if math.isnan(number) else number


def _metric_row(name: str, metric: Any) -> dict:
    """``0.5`` or ``{"value": 0.5, "low": 0.4, "high": 0.6, "n": 120}`` -> a metrics row."""
    _check_key("metric name", name, 300)
    if not isinstance(metric, Mapping):
        return {"name": name, "value": _number(name, "value", metric), "low": None, "high": None, "n": None,
                "interval": False}
    unknown = set(metric) - set(METRIC_FIELDS)
    if "value" not in metric or unknown:
        raise ValueError(f"metric {name!r} must be a number or a mapping with keys {METRIC_FIELDS} "
                         f"(value required), not one with keys {sorted(metric)}")
    n = metric.get("n")
    return {"name": name, "value": _number(name, "value", metric["value"]), "low": _number(name, "low", metric.get("low")),
            "high": _number(name, "high", metric.get("high")), "n": None if n is None else int(n), "interval": True}


def _sample_row(sample: Mapping, index: int) -> dict:
    """A sample's fixed fields as text (label may be None); any other key goes into ``extra``."""
    if not isinstance(sample, Mapping) or not sample.get("benchmark"):
        raise ValueError(f"sample {index} must be a mapping with at least a 'benchmark' key, not {sample!r:.200}")
    row = {field: "" if sample.get(field) is None else str(sample[field]) for field in SAMPLE_FIELDS}
    row["label"] = None if sample.get("label") is None else str(sample["label"])
    extra = dict(sample.get("extra") or {})
    extra.update({k: v for k, v in sample.items() if k not in SAMPLE_FIELDS and k != "extra"})
    row["extra"] = _dumps(extra) if extra else None
    return row


def _flatten(params: Mapping, prefix: str = "") -> dict:
    """``{"data": {"noise_rate": 0.2}}`` -> ``{"data.noise_rate": 0.2}``; dotted keys stay as given."""
    flat = {}
    for key, value in params.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _only_extends(old: dict, new: dict, extendable: tuple[str, ...]) -> bool:
    """True when two sweep configs differ only inside ``extendable`` keys (top-level or dotted:
    ``subspace.curves``), with the same grid axes."""
    changed = _differences(old, new)
    inside = all(any(key == e or key.startswith(e + ".") for e in extendable) for key in changed)
    same_axes = set(old.get("grid") or {}) == set(new.get("grid") or {})
    return bool(changed) and inside and same_axes


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys at which two JSON values differ (for the add_sweep error)."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new)):
            if key in old and key in new:
                found += _differences(old[key], new[key], f"{prefix}{key}.")
            else:
                found.append(f"{prefix}{key}")
        return found
    return [] if old == new else [prefix.rstrip(".") or "(the whole config)"]
