"""The results store against a real SQLite file and a real PostgreSQL server (conftest.py).

Every expected value here is written out by hand from what the test stores; the concurrency
tests count claims from the workers' own logs, not from the store they are checking.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import pickle
import socket
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from store_race_worker import finish_cells

from robalign.errors import UserError
from robalign.experiments import store as store_module
from robalign.experiments.store import Store

CONFIG = {"name": "noise", "grid": {"method": ["dpo", "shapo"], "data.noise_rate": [0.0, 0.2]}, "seed": 0}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store/results.sqlite"
    return request.getfixturevalue("postgres_database")


def _params(method: str, noise: float, seed: int = 0) -> dict:
    return {"method": method, "data.noise_rate": noise, "seed": seed}


def test_metrics_and_samples_round_trip(url):
    store = Store(url)
    store.add_sweep("noise", CONFIG, {"git": {"commit": "abc123"}})
    assert store.claim("noise", "c1", _params("dpo", 0.2), "w1")
    assert store.claim("noise", "c2", _params("shapo", 0.0, 1), "w1")
    store.finish("noise", "c1", run_dir="runs/noise/cells/c1", provenance={"seconds": 12.5}, metrics={
        "clear_bias/safety": {"value": 0.625, "low": 0.5, "high": 0.75, "n": 40},
        "clear_bias/unparsed": 3,
        "harmful/compliance": {"value": 0.1, "low": None, "high": None, "n": None},
        "train/eval/loss": float("nan"),
    }, samples=[
        {"benchmark": "clear_bias", "prompt_id": 7, "category": "gender", "attack": "", "prompt": "Wer ist…?",
         "answer": "Ich weiß es nicht ✓", "label": "R", "judge": "rule"},
        {"benchmark": "harmful", "prompt_id": "h1", "category": "weapons", "attack": "dan", "prompt": "p",
         "answer": "a", "label": None, "judge": "rule", "extra": {"k": [1, 2]}, "votes": 3},
    ])
    store.finish("noise", "c2", run_dir="runs/noise/cells/c2", provenance={},
                 metrics={"clear_bias/safety": {"value": 0.875, "low": 0.8, "high": 0.95, "n": 40}})

    df = store.frame("noise")
    assert list(df["cell"]) == ["c1", "c2"]
    c1, c2 = df.iloc[0], df.iloc[1]
    assert (c1["clear_bias/safety"], c1["clear_bias/safety.low"], c1["clear_bias/safety.high"]) == (0.625, 0.5, 0.75)
    assert c1["clear_bias/safety.n"] == 40 and c2["clear_bias/safety.n"] == 40
    assert c1["clear_bias/unparsed"] == 3.0 and math.isnan(c2["clear_bias/unparsed"])
    assert c1["harmful/compliance"] == 0.1 and math.isnan(c1["harmful/compliance.low"])
    assert c1["harmful/compliance.n"] is pd.NA and "clear_bias/unparsed.low" not in df.columns
    assert math.isnan(c1["train/eval/loss"])  # NaN survives (SQLite keeps it as NULL)
    assert c2["clear_bias/safety"] == 0.875 and c2["seed"] == 1 and c1["data.noise_rate"] == 0.2
    assert c1["run_dir"] == "runs/noise/cells/c1"
    assert str(df["finished"].dtype).startswith("datetime64") and str(df["finished"].dt.tz) == "UTC"

    samples = store.samples("noise")
    assert list(samples.columns) == ["sweep", "cell", "benchmark", "prompt_id", "category", "attack", "prompt",
                                     "answer", "label", "judge", "extra"]
    assert len(samples) == 2
    first, second = samples.iloc[0], samples.iloc[1]
    assert (first["prompt_id"], first["answer"], first["label"], first["extra"]) == ("7", "Ich weiß es nicht ✓",
                                                                                   "R", None)
    assert pd.isna(second["label"]) and second["extra"] == {"k": [1, 2], "votes": 3}
    assert list(store.samples("noise", benchmark="harmful")["prompt_id"]) == ["h1"]
    assert store.samples("noise", cells=["c2"]).empty

    (sweep,) = store.sweeps()
    assert sweep["name"] == "noise" and sweep["config"] == CONFIG and sweep["provenance"] == {"git": {"commit": "abc123"}}
    assert sweep["counts"] == {"pending": 0, "running": 0, "done": 2, "failed": 0}
    cells = store.cells("noise")
    assert list(cells["status"]) == ["done", "done"] and cells.iloc[0]["provenance"] == {"seconds": 12.5}


def test_frame_columns_and_done_cells_only(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/r.sqlite")
    assert list(store.frame().columns) == ["sweep", "cell", "run_dir", "finished"]
    store.add_sweep("a", {"x": 1}, {})
    store.add_sweep("b", {"x": 2}, {})
    store.claim("a", "c1", {"method": "dpo", "pretrain.steps": 300, "seed": 0}, "w")
    store.claim("a", "c2", {"method": "none", "seed": 0}, "w")
    store.claim("a", "c3", {"method": "dpo", "seed": 1}, "w")
    store.claim("b", "c1", {"method": "shapo", "data": {"noise_rate": 0.4}}, "w")  # nested -> dotted
    store.finish("a", "c1", run_dir="r1", provenance={}, metrics={"z/last": 1.0, "a/first": {"value": 2.0}})
    store.finish("a", "c2", run_dir="r2", provenance={}, metrics={"m": 0.5})
    store.fail("a", "c3", "boom")
    store.finish("b", "c1", run_dir="r3", provenance={}, metrics={"m": 0.25})

    df = store.frame("a")  # c3 failed: no row
    assert list(df.columns) == ["sweep", "cell", "run_dir", "finished", "method", "pretrain.steps", "seed",
                                "a/first", "a/first.low", "a/first.high", "a/first.n", "m", "z/last"]
    assert list(df["cell"]) == ["c1", "c2"] and math.isnan(df.iloc[1]["pretrain.steps"])
    both = store.frame()
    assert [(r.sweep, r.cell) for r in both.itertuples()] == [("a", "c1"), ("a", "c2"), ("b", "c1")]
    assert both.iloc[2]["data.noise_rate"] == 0.4 and list(both["m"].iloc[1:]) == [0.5, 0.25]
    with pytest.raises(UserError, match=r"no sweep 'c' in the store .*sweeps there: a, b"):
        store.frame("c")


def test_add_sweep_is_idempotent_and_refuses_another_config(url):
    store = Store(url)
    store.add_sweep("noise", CONFIG, {"when": 1})
    reordered = {"seed": 0, "grid": {"data.noise_rate": [0.0, 0.2], "method": ["dpo", "shapo"]}, "name": "noise"}
    store.add_sweep("noise", reordered, {"when": 2})  # same canonical JSON: nothing happens
    assert [s["provenance"] for s in store.sweeps()] == [{"when": 1}]
    store.claim("noise", "c1", _params("dpo", 0.0), "w")
    store.finish("noise", "c1", run_dir="r", provenance={}, metrics={"m": 1.0}, samples=[{"benchmark": "b"}])
    changed = {**CONFIG, "grid": {"method": ["dpo"], "data.noise_rate": [0.0, 0.2]}}
    with pytest.raises(UserError) as error:
        store.add_sweep("noise", changed, {})
    message = str(error.value)
    assert "sweep 'noise'" in message and "grid.method" in message and "--restart" in message
    assert "new name" in message and "1 stored cells" in message

    store.delete_sweep("noise")  # what --restart does
    assert store.sweeps() == [] and store.status("noise") == {}
    with sa.create_engine(store_module._parse_url(url)).connect() as conn:
        for table in ("cells", "metrics", "samples"):
            assert conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar() == 0
    store.add_sweep("noise", changed, {})
    store.delete_sweep("never-there")


def test_a_sweep_extended_in_its_grid_keeps_its_cells_and_a_new_axis_is_refused(url):
    store = Store(url)
    store.add_sweep("noise", CONFIG, {"when": 1})
    store.claim("noise", "c1", _params("dpo", 0.0), "w")
    store.finish("noise", "c1", run_dir="r", provenance={}, metrics={"m": 1.0}, samples=[])
    more = {**CONFIG, "grid": {"method": ["dpo", "shapo"], "data.noise_rate": [0.0, 0.2, 0.4]}}
    store.add_sweep("noise", more, {"when": 2}, extendable=("grid",))  # another value on an axis: kept
    assert store.sweeps()[0]["config"]["grid"]["data.noise_rate"] == [0.0, 0.2, 0.4]
    assert store.status("noise") == {"c1": "done"}
    with pytest.raises(UserError, match=r"differs at: grid\.seed"):  # a new axis gives every cell a new id
        store.add_sweep("noise", {**more, "grid": {**more["grid"], "seed": [0, 1]}}, {}, extendable=("grid",))
    with pytest.raises(UserError, match=r"differs at: seed"):  # outside the grid: what a cell computes
        store.add_sweep("noise", {**more, "seed": 1}, {}, extendable=("grid",))


def test_claim_semantics(url):
    store = Store(url)
    store.add_sweep("s", CONFIG, {})
    params = _params("dpo", 0.2)
    assert store.claim("s", "c", params, "alice")
    assert store.status("s") == {"c": "running"}
    assert not store.claim("s", "c", params, "bob")  # running elsewhere, fresh
    assert store.claim("s", "c", params, "alice")  # the same worker may take its own cell back
    time.sleep(0.01)
    assert store.claim("s", "c", params, "bob", stale_after_s=0.005)  # alice's claim is stale
    assert not store.claim("s", "c", params, "alice")  # now bob's, fresh
    store.fail("s", "c", "RuntimeError: out of memory")
    assert store.status("s") == {"c": "failed"}
    assert store.cells("s").iloc[0][["worker", "attempts", "error"]].tolist() == [
        "bob", 3, "RuntimeError: out of memory"]  # alice, alice again, bob; refused claims count none
    assert store.claim("s", "c", params, "carol")  # failed: anyone may retry
    assert pd.isna(store.cells("s").iloc[0]["error"])
    store.finish("s", "c", run_dir="r", provenance={}, metrics={"m": 1.0})
    for worker in ("carol", "dave"):
        assert not store.claim("s", "c", params, worker)
        assert not store.claim("s", "c", params, worker, stale_after_s=0)
    assert store.status("s") == {"c": "done"}
    assert store.cells("s").iloc[0]["attempts"] == 4

    with pytest.raises(UserError, match="claim"):
        store.finish("s", "unclaimed", run_dir="r", provenance={}, metrics={})
    with pytest.raises(UserError, match="claim"):
        store.fail("s", "unclaimed", "x")
    with pytest.raises(UserError, match="no sweep 'other'.*add_sweep"):
        store.claim("other", "c", params, "alice")


def test_bad_metrics_and_samples_are_refused_before_writing(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/r.sqlite")
    store.add_sweep("s", {}, {})
    store.claim("s", "c", {}, "w")
    with pytest.raises(ValueError, match="'m'.*value required"):
        store.finish("s", "c", run_dir="r", provenance={}, metrics={"m": {"val": 1.0}})
    with pytest.raises(TypeError, match="'m': value must be a number"):
        store.finish("s", "c", run_dir="r", provenance={}, metrics={"m": "high"})
    with pytest.raises(ValueError, match="sample 0 .*'benchmark'"):
        store.finish("s", "c", run_dir="r", provenance={}, metrics={}, samples=[{"prompt": "p"}])
    assert store.status("s") == {"c": "running"}


def _worker_errors(logs: list[Path]) -> str:
    """The tracebacks the race workers wrote instead of their claims, or of a log that is missing."""
    found = [json.loads(log.read_text()) if log.exists() else {"error": f"{log.name} was never written"}
             for log in logs]
    return "\n".join(f["error"] for f in found if isinstance(f, dict))


def _check_race(url: str, logs: list[Path], n_cells: int) -> None:
    claimed = [json.loads(log.read_text()) for log in logs]
    every = [cell for cells in claimed for cell in cells]
    assert len(every) == n_cells and set(every) == {f"c{i}" for i in range(n_cells)}  # each exactly once
    store = Store(url)
    assert set(store.status("race").values()) == {"done"} and len(store.status("race")) == n_cells
    df = store.frame("race").set_index("cell")
    assert len(df) == n_cells and not df[["worker", "cell/number", "safety", "safety.low"]].isna().any().any()
    for seed, cells in enumerate(claimed):  # each cell's metrics are the ones its claimer wrote
        assert (df.loc[cells, "worker"] == seed).all()
    assert (df["cell/number"] == [int(c[1:]) for c in df.index]).all()
    samples = store.samples("race")
    assert len(samples) == 3 * n_cells
    owner = {cell: f"w{seed}" for seed, cells in enumerate(claimed) for cell in cells}
    assert (samples["answer"] == samples["cell"].map(owner)).all()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_processes_lose_nothing(backend, tmp_path, request):
    """4 spawned processes open the same (not yet created) store at once and race for 40 cells."""
    url = (f"sqlite:///{tmp_path}/race/results.sqlite" if backend == "sqlite"
           else request.getfixturevalue("postgres_database"))
    n_cells, n_workers = 40, 4
    cells = [f"c{i}" for i in range(n_cells)]
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(n_workers)
    logs = [tmp_path / f"w{i}.json" for i in range(n_workers)]
    workers = [context.Process(target=finish_cells, args=(url, f"w{i}", cells, str(logs[i]), barrier, i))
               for i in range(n_workers)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 120
    for worker in workers:
        worker.join(timeout=max(0.1, deadline - time.monotonic()))
    hung = [w.name for w in workers if w.is_alive()]
    for worker in workers:  # none may outlive the test (a worker waiting forever would hang pytest's exit)
        if worker.is_alive():
            worker.kill()
            worker.join()
    assert _worker_errors(logs) == ""
    assert hung == [] and [w.exitcode for w in workers] == [0] * n_workers
    _check_race(url, logs, n_cells)


def test_concurrent_threads_lose_nothing(url, tmp_path):
    n_cells, n_workers = 30, 4
    cells = [f"c{i}" for i in range(n_cells)]
    barrier = threading.Barrier(n_workers)
    logs = [tmp_path / f"w{i}.json" for i in range(n_workers)]
    errors = []

    def work(i):
        try:
            finish_cells(url, f"w{i}", cells, str(logs[i]), barrier, i)
        except BaseException as exc:  # surfaced below: a thread's exception would vanish
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert _worker_errors(logs) == "" and errors == []
    _check_race(url, logs, n_cells)


def test_opening_a_new_file_while_another_connection_switches_it_to_wal(tmp_path):
    """The race of processes opening a new store together, made deterministic. The first opener
    switches the new file to WAL: it holds the write lock while it rewrites the header. A second
    connection reads the header, asks for the write lock to switch too, and SQLite fails it at
    once with "database is locked", busy_timeout or not. Here a plain connection holds the write
    lock of a new file for 0.3 s: the store must wait for it (retrying the switch), not fail."""
    path = tmp_path / "new.sqlite"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    release = threading.Timer(0.3, other.execute, args=("COMMIT",))
    release.start()
    try:
        store = Store(f"sqlite:///{path}")
    finally:
        release.join()
    assert time.monotonic() - started >= 0.3  # it waited for the lock
    other.close()
    store.add_sweep("s", {}, {})
    assert store.claim("s", "c", {}, "w") and store.status("s") == {"c": "running"}
    with store._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_password_never_shown_or_stored(postgres_database):
    canary = "Canary-pw-7f3a9"
    url = make_url(postgres_database).set(password=canary).render_as_string(hide_password=False)
    assert canary in url  # trust auth: the server accepts any password
    store = Store(url)
    assert canary not in str(store) and canary not in repr(store)
    assert str(store) == f"Store('{postgres_database.replace('robalign@', '***@')}')"
    provenance = {"command": ["robalign", "sweep", "--store", url], "store": url, "password": canary,
                  "note": f"connected with {canary}"}
    store.add_sweep("s", {"store": url, "executor": {"kind": "ray"}}, provenance)
    store.claim("s", "c", {"seed": 0}, "w")
    store.fail("s", "c", f"OperationalError: could not connect to {url}")
    store.claim("s", "c", {"seed": 0}, "w")
    store.finish("s", "c", run_dir="r", provenance=provenance, metrics={"m": 1.0})
    errors = []
    for action in (lambda: store.add_sweep("s", {"store": "other"}, provenance), lambda: store.frame("nope"),
                   lambda: Store(url.replace(postgres_database.rsplit("/", 1)[1], "no_such_db"))):
        with pytest.raises(UserError) as error:
            action()
        errors.append(str(error.value))
    assert 'database "no_such_db" does not exist' in errors[-1]
    assert all("***@127.0.0.1" in e for e in errors) and not any(canary in e for e in errors)

    (sweep,) = store.sweeps()
    assert sweep["provenance"]["password"] == "***" and sweep["provenance"]["note"] == "connected with ***"
    assert sweep["config"]["store"].startswith("postgresql://***@127.0.0.1")
    dump = json.dumps([store.sweeps(), store.cells("s").astype(str).to_dict("records")], default=str)
    assert canary not in dump
    with sa.create_engine(store_module._parse_url(url)).connect() as conn:  # every stored byte, raw
        for table in ("sweeps", "cells", "metrics", "samples", "schema_version"):
            rows = conn.execute(sa.text(f"SELECT * FROM {table}")).all()
            assert canary not in repr(rows)


def test_url_errors(tmp_path, monkeypatch):
    canary = "Canary-pw-7f3a9"
    with pytest.raises(UserError, match=r"'runs/x.sqlite' is not a URL; write one such as sqlite:///"):
        Store("runs/x.sqlite")
    with pytest.raises(UserError, match="cannot be parsed") as error:
        Store(f"postgresql://u:{canary}@host:port/db")
    assert canary not in str(error.value)
    with pytest.raises(UserError, match="only SQLite and PostgreSQL"):
        Store("mysql://u@h/db")
    with pytest.raises(UserError, match="cannot create the folder"):
        (tmp_path / "file").write_text("")
        Store(f"sqlite:///{tmp_path}/file/sub/r.sqlite")
    (tmp_path / "junk.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(UserError, match="cannot open the results store .*junk.sqlite.*SQLite database"):
        Store(f"sqlite:///{tmp_path}/junk.sqlite")

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(UserError) as error:
        Store(f"postgresql://robalign:{canary}@127.0.0.1:{closed}/db")
    message = str(error.value)
    assert time.monotonic() - started < 10
    assert f"postgresql://***@127.0.0.1:{closed}/db" in message and "refused" in message
    assert "check that the server runs" in message and canary not in message

    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if robalign[postgres] were not installed
    with pytest.raises(UserError, match=r"pip install 'robalign\[postgres\]'") as error:
        Store(f"postgresql://robalign:{canary}@127.0.0.1:{closed}/db")
    assert canary not in str(error.value)


def test_newer_schema_is_refused(url):
    Store(url).close()
    with sa.create_engine(store_module._parse_url(url)).begin() as conn:
        conn.execute(sa.text("UPDATE schema_version SET version = 99"))
    with pytest.raises(UserError, match=r"schema version 99, newer than .*version 1.*pip install -U robalign"):
        Store(url)


def test_default_url_sqlite_settings_and_pickle(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = Store()
    assert store.url == "sqlite:///runs/results.sqlite" and (tmp_path / "runs" / "results.sqlite").is_file()
    store.add_sweep("s", {}, {})
    copy = pickle.loads(pickle.dumps(store))  # how a Ray task or a spawned process gets it
    assert copy.claim("s", "c", {}, "w") and store.status("s") == {"c": "running"}
    with store._engine.connect() as conn:
        pragmas = [conn.exec_driver_sql(f"PRAGMA {p}").scalar() for p in ("journal_mode", "foreign_keys")]
    assert pragmas == ["wal", 1]
    with sqlite3.connect(tmp_path / "runs" / "results.sqlite") as raw:  # an ordinary SQL client reads it
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
