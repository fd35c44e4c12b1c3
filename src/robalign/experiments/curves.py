"""Series of a sweep cell in the results store: training curves, soft-label margins, probe epochs.

The ``metrics`` table holds one number per metric and cell; a figure of a training curve or of a
distribution needs many. They live in a table of their own, created next to the store's tables
on the store's engine (``Store`` itself is not changed):

    curves   sweep, cell, name, step, value     primary key (sweep, cell, name, step);
                                                (sweep, cell) -> cells, ON DELETE CASCADE

``step`` is the position along the series: the optimizer step of a training metric, the epoch of
a probe, the pair's index in its file for a value of a distribution. What a cell records
(``cell_series``), from the files its run wrote:

| name | step | from |
|---|---|---|
| ``train/<TRL name>`` (``train/rewards/margins``, ``train/loss`` ...) | optimizer step | the cell's ``train/metrics.jsonl`` (training lines; ``train/eval/...`` at eval steps) |
| ``soft_labels/reward_margin``, ``soft_labels/q`` | pair index | the soft-label file the cell trained on (its rows' ``reward_margin`` Δr and ``soft_label`` q) |
| ``probe/<estimator>/<field>`` (``probe/adam/train_loss`` ...) | epoch | ``probe.json`` of the probe behind the cell's ShaPO mask (``mask.json``'s ``probe``) |

A series longer than ``MAX_POINTS`` (training) or ``MAX_VALUES`` (a distribution) is thinned to
evenly spaced positions, the last kept: a figure needs no more, and a 2,500-step GPU run or a
160k-pair soft-label file would otherwise put 10^5 rows per cell into a shared store.

Writing. ``write_curves`` replaces a cell's rows in one transaction; a re-run writes them again.
``refresh_probe_curves`` (run by the sweep after ``prepare``) rewrites the ``probe/`` rows of done
cells whose probe gained an estimator (``subspace.curves`` added to a stored sweep).
The sweep runner calls ``record_cell_curves`` after ``run_cell`` and before ``Store.finish``, so a
cell's curves are in the store by the time it is done; ``read_curves`` returns the curves of done
cells only, so a cell that failed after writing them shows nothing. ``Store.delete_sweep`` removes
them through the foreign key's cascade.

Versioning. The table is additive: a store written before it existed gets it on the first write
(``schema_version`` stays 1, since an older robalign reads such a store as before, ignoring the
table); reading a store without it gives no curves. A change to these columns would need the
store's ``SCHEMA_VERSION`` raised.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import sqlalchemy as sa

TABLE = "curves"
MAX_POINTS = 1000  # per training series: 2,500 steps of a GPU epoch keep every 3rd step
MAX_VALUES = 20000  # per distribution: a histogram of 20k margins is indistinguishable from one of all
SETUP_LOCK = 0x726F62616C696763  # pg_advisory_xact_lock key ("robaligc"): one creator of the table at a time
# series the report draws (read_curves prefixes): the per-step margins, the probe, the soft labels
REPORT_PREFIXES = ("train/rewards/margins", "probe/", "soft_labels/")

_metadata = sa.MetaData()
# the store's cells table as far as the foreign key needs it; never created from here
sa.Table("cells", _metadata, sa.Column("sweep", sa.String(200), primary_key=True),
         sa.Column("cell", sa.String(100), primary_key=True), sa.Column("status", sa.String(16)))
_curves = sa.Table(
    TABLE, _metadata,
    sa.Column("sweep", sa.String(200), primary_key=True),
    sa.Column("cell", sa.String(100), primary_key=True),
    sa.Column("name", sa.String(300), primary_key=True),
    sa.Column("step", sa.Integer, primary_key=True),
    sa.Column("value", sa.Double),  # NULL = NaN, as in the metrics table
    sa.ForeignKeyConstraint(["sweep", "cell"], ["cells.sweep", "cells.cell"], ondelete="CASCADE"),
)
_cells = _metadata.tables["cells"]


# -------------------------------------------------------------------- the cell's files -> series

def cell_series(cell_dir: str | Path, provenance: Mapping) -> dict[str, dict[int, float]]:
    """name -> {step: value} for every series the cell's files hold (module doc); {} for a cell
    that trained nothing (method ``none``) or a runner that writes none of these files."""
    config = provenance.get("train_config") or {}
    out: dict[str, dict[int, float]] = {}
    train_dir = Path(config.get("output_dir") or Path(cell_dir) / "train")
    out |= training_series(train_dir / "metrics.jsonl")
    train_file = (config.get("data") or {}).get("train")
    if train_file and Path(train_file).is_file():
        out |= soft_label_series(Path(train_file))
    return out | cell_probe_series(provenance)


def cell_probe_series(provenance: Mapping) -> dict[str, dict[int, float]]:
    """The ``probe/...`` series of the probe behind the cell's ShaPO mask; {} without one."""
    shapo = ((provenance.get("train_config") or {}).get("training") or {}).get("shapo") or {}
    if not shapo.get("enabled") or shapo.get("mask") in (None, "uniform"):
        return {}
    mask = Path(shapo["mask"])
    mask_info = _read_json(mask / "mask.json" if mask.is_dir() else mask.parent / "mask.json")
    return probe_series(Path(mask_info["probe"])) if mask_info.get("probe") else {}


def training_series(path: Path, max_points: int = MAX_POINTS) -> dict[str, dict[int, float]]:
    """``train/<key>`` -> {step: value} from a trainer's metrics.jsonl (``{"step": n, key: value, ...}``
    a line; an eval line at the same step adds ``eval/...`` keys; a repeated key at a step: last wins)."""
    if not path.is_file():
        return {}
    out: dict[str, dict[int, float]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        step = int(record["step"])
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                out.setdefault(f"train/{key}", {})[step] = float(value)
    return {name: _thin(series, max_points) for name, series in out.items()}


def soft_label_series(path: Path, max_values: int = MAX_VALUES) -> dict[str, dict[int, float]]:
    """``soft_labels/reward_margin`` (Δr) and ``soft_labels/q`` by pair index, from a JSONL training
    file whose rows carry ``reward_margin`` (the smollm2 lane's soft-label files); {} otherwise."""
    if path.suffix != ".jsonl":
        return {}
    margins, q = {}, {}
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            row = json.loads(line) if line.strip() else {}
            if "reward_margin" not in row:
                return {}  # a plain preference file: no margins to show
            margins[i] = float(row["reward_margin"])
            if row.get("soft_label") is not None:
                q[i] = float(row["soft_label"])
    out = {"soft_labels/reward_margin": _thin(margins, max_values)}
    return out | ({"soft_labels/q": _thin(q, max_values)} if q else {})


def probe_series(probe_dir: Path) -> dict[str, dict[int, float]]:
    """``probe/<estimator>/<field>`` -> {epoch: value} from probe.json's per-epoch ``history``
    (``training.probe.fit_adam_probe``: train_loss, train_accuracy, eval_loss, eval_accuracy)."""
    info = _read_json(probe_dir / "probe.json" if probe_dir.suffix != ".json" else probe_dir)
    out: dict[str, dict[int, float]] = {}
    for estimator, record in (info.get("estimators") or {}).items():
        for epoch in record.get("history") or []:
            for key, value in epoch.items():
                if key != "epoch" and isinstance(value, int | float):
                    out.setdefault(f"probe/{estimator}/{key}", {})[int(epoch["epoch"])] = float(value)
    return out


def _thin(series: dict[int, float], limit: int) -> dict[int, float]:
    """At most ``limit`` points, evenly spaced over the series' order, the first and last kept."""
    if len(series) <= limit:
        return series
    steps = sorted(series)
    keep = {steps[round(i * (len(steps) - 1) / (limit - 1))] for i in range(limit)}
    return {s: series[s] for s in steps if s in keep}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


# -------------------------------------------------------------------- the table

def record_cell_curves(store, sweep: str, cell: str, cell_dir: str | Path, provenance: Mapping) -> int:
    """The pipeline hook: ``cell_series`` of the cell into the store; returns the rows written."""
    return write_curves(store, sweep, cell, cell_series(cell_dir, provenance))


def backfill_curves(store, sweep: str) -> dict[str, int]:
    """``record_cell_curves`` for every done cell of ``sweep`` from its run_dir and provenance: the
    curves of a sweep that ran before the hook, as long as its cell directories are still there.
    Returns cell -> rows written."""
    cells = store.cells(sweep)
    return {r["cell"]: record_cell_curves(store, sweep, r["cell"], r["run_dir"], r["provenance"] or {})
            for _, r in cells[cells["status"] == "done"].iterrows() if r["run_dir"]}


def refresh_probe_curves(store, sweep: str) -> dict[str, int]:
    """Re-read the probe series of every done cell whose probe.json now holds series the store has
    not (an estimator ``subspace.curves`` added after the cell ran: pipeline_subspace.ensure_probe),
    replacing that cell's ``probe/`` rows only. Returns cell -> rows written, for the cells changed."""
    cells = store.cells(sweep)
    done = cells[cells["status"] == "done"] if len(cells) else cells
    if not len(done):
        return {}
    stored = read_curves(store, sweep, ["probe/"])
    have = stored.groupby("cell")["name"].agg(set).to_dict() if len(stored) else {}
    written = {}
    for _, row in done.iterrows():
        series = cell_probe_series(row["provenance"] or {})
        if series and set(series) != have.get(row["cell"], set()):
            written[row["cell"]] = write_curves(store, sweep, row["cell"], series, prefix="probe/")
    return written


def write_curves(store, sweep: str, cell: str, series: Mapping[str, Mapping[int, float]],
                 prefix: str | None = None) -> int:
    """Replace the cell's curves by ``series`` (name -> {step: value}) in one transaction; with
    ``prefix``, only its curves whose names start with it. The cell must be in the store (claimed);
    NaN and inf are stored as NULL."""
    rows = [{"sweep": sweep, "cell": cell, "name": name, "step": int(step), "value": _number(value)}
            for name, points in series.items() for step, value in points.items()]
    for name in series:
        if not isinstance(name, str) or not name or len(name) > 300:
            raise ValueError(f"curve name must be a non-empty string of at most 300 characters, not {name!r}")
    with store.write_transaction() as conn:  # BEGIN IMMEDIATE on SQLite, fork-safe
        _ensure_table(conn, store)
        mine = (_curves.c.sweep == sweep) & (_curves.c.cell == cell)
        if prefix is not None:
            mine &= _curves.c.name.startswith(prefix, autoescape=True)
        conn.execute(_curves.delete().where(mine))
        if rows:
            try:
                conn.execute(_curves.insert(), rows)
            except sa.exc.IntegrityError:
                from robalign.errors import UserError

                raise UserError(f"cell {cell!r} of sweep {sweep!r} is not in the store {store}: claim() it "
                                "before writing its curves") from None
    return len(rows)


def read_curves(store, sweep: str, prefixes: Iterable[str] | None = None):
    """The curves of the sweep's done cells as a DataFrame (cell, name, step, value; NaN for NULL),
    ordered by cell, name and step; only names starting with one of ``prefixes`` when given. Empty
    for a store without the table, and for an object that is not a SQL store (a test double)."""
    import pandas as pd

    columns = ["cell", "name", "step", "value"]
    if not hasattr(store, "read_connection"):
        return pd.DataFrame(columns=columns)
    query = (sa.select(_curves.c.cell, _curves.c.name, _curves.c.step, _curves.c.value)
             .join(_cells, (_cells.c.sweep == _curves.c.sweep) & (_cells.c.cell == _curves.c.cell))
             .where(_curves.c.sweep == sweep, _cells.c.status == "done"))
    if prefixes is not None:
        query = query.where(sa.or_(*(_curves.c.name.startswith(p, autoescape=True) for p in prefixes)))
    with store.read_connection() as conn:
        if not sa.inspect(conn).has_table(TABLE):
            return pd.DataFrame(columns=columns)
        rows = conn.execute(query.order_by(_curves.c.cell, _curves.c.name, _curves.c.step)).all()
    frame = pd.DataFrame([tuple(r) for r in rows], columns=columns)
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce").astype(float)
    return frame


def _ensure_table(conn: sa.Connection, store) -> None:
    """Create the table once; on PostgreSQL under an advisory lock (two workers creating it at once
    would otherwise collide in the catalogue), on SQLite the write transaction already serialises."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SETUP_LOCK})
    if not sa.inspect(conn).has_table(TABLE):
        _curves.create(conn)


def _number(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
