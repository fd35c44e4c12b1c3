"""The sweep engine: grid expansion, cell ids, skip rules, config errors, and real runs through a
real store with a small real runner (tests/experiments/runners.py): resume after SIGKILL,
failures, --restart, --dry-run, and the same table from the local and the Ray executors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import runners
import yaml

from robalign.cli import main
from robalign.config import ConfigError
from robalign.errors import UserError
from robalign.experiments.store import Store
from robalign.experiments.sweep import cell_train_config, expand, load_sweep_config, parse_skip, run_sweep

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

BASE = {
    "name": "toy",
    "lane": "world",
    "train": {"config": "configs/train/dpo_tiny.yaml"},
    "methods": {"dpo": {}, "shapo": {"training.shapo.enabled": True}},
    "grid": {"method": ["none", "dpo", "shapo"], "data.noise_rate": [0, 0.2], "seed": [0, 1]},
    "skip": ["method=none and data.noise_rate>0"],
}


def write(tmp_path: Path, config: dict, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"out": str(tmp_path / "out"), **config}, sort_keys=False))
    return path


def quiet(text: str) -> None:
    pass


# -- expansion, ids, labels --------------------------------------------------------------------------


def test_expand_counts_labels_and_ids(tmp_path):
    cells = expand(load_sweep_config(write(tmp_path, BASE)))
    # 3 methods x 2 rates x 2 seeds = 12, minus none at rate 0.2 (2 seeds) = 10
    assert len(cells) == 10
    assert cells[0].label == "method=none noise_rate=0.0 seed=0"
    assert [c.label for c in cells[2:4]] == ["method=dpo noise_rate=0.0 seed=0", "method=dpo noise_rate=0.0 seed=1"]
    dpo = next(c for c in cells if c.label == "method=dpo noise_rate=0.2 seed=1")
    assert dpo.params == {"method": "dpo", "data.noise_rate": 0.2, "seed": 1}
    # the id by its definition: sha256 of the canonical JSON of sweep name and params, 12 hex digits
    blob = '{"params": {"data.noise_rate": 0.2, "method": "dpo", "seed": 1}, "sweep": "toy"}'
    assert dpo.id == hashlib.sha256(blob.encode()).hexdigest()[:12]
    assert len({c.id for c in cells}) == 10


def test_ids_do_not_depend_on_key_order_or_number_spelling(tmp_path):
    first = {c.label: c.id for c in expand(load_sweep_config(write(tmp_path, BASE, "a.yaml")))}
    shuffled = {**BASE, "grid": {"seed": [0, 1], "data.noise_rate": [0.0, 0.2], "method": ["none", "dpo", "shapo"]},
                "methods": {"shapo": {"training.shapo.enabled": True}, "dpo": {}}}
    second = expand(load_sweep_config(write(tmp_path, shuffled, "b.yaml")))
    assert {c.id for c in second} == set(first.values())
    assert len(first) == 10
    renamed = expand(load_sweep_config(write(tmp_path, {**BASE, "name": "other"}, "c.yaml")))
    assert not {c.id for c in renamed} & set(first.values())  # the sweep name is part of the id


def test_method_and_seed_default_and_world_steps_label(tmp_path):
    config = {**BASE, "grid": {"pretrain.steps": [300, 600]}, "skip": []}
    cells = expand(load_sweep_config(write(tmp_path, config)))
    assert [c.label for c in cells] == ["method=dpo steps=300 seed=0", "method=dpo steps=600 seed=0",
                                        "method=shapo steps=300 seed=0", "method=shapo steps=600 seed=0"]


def test_cell_train_config_applies_method_then_grid(tmp_path):
    sweep = load_sweep_config(write(tmp_path, {**BASE, "train": {"config": "configs/train/dpo_tiny.yaml",
                                                                 "overrides": ["training.max_steps=7"]}}))
    cell = next(c for c in expand(sweep) if c.label == "method=shapo noise_rate=0.2 seed=0")
    config = cell_train_config(sweep, cell)
    assert config.training.shapo.enabled and config.data.noise_rate == 0.2 and config.training.max_steps == 7
    assert config.loss.beta == 0.1  # from dpo_tiny.yaml
    none = next(c for c in expand(sweep) if c.params["method"] == "none")
    assert not cell_train_config(sweep, none).training.shapo.enabled


# -- skip rules -----------------------------------------------------------------------------------------


def test_skip_rules_and_or_and_comparisons():
    keys = {"method", "seed", "data.noise_rate"}
    rule = parse_skip("method=none and data.noise_rate>0 or seed>=2", "t", keys)
    assert rule.matches({"method": "none", "data.noise_rate": 0.2, "seed": 0})
    assert not rule.matches({"method": "none", "data.noise_rate": 0.0, "seed": 1})
    assert rule.matches({"method": "dpo", "data.noise_rate": 0.0, "seed": 2})
    assert parse_skip("method != dpo", "t", keys).matches({"method": "shapo"})
    assert parse_skip("data.noise_rate<=0.2", "t", keys).matches({"data.noise_rate": 0.2})
    assert not parse_skip("data.noise_rate<0.2", "t", keys).matches({"data.noise_rate": 0.2})


@pytest.mark.parametrize("text, message", [
    ("__import__('os').system('touch pwned') == 0", "cannot read"),
    ("method = none and", "cannot read"),
    ("data.noise_rat>0", "'data.noise_rat' is not a grid key. Did you mean 'data.noise_rate'?"),
    ("method=[unclosed", "is not a value"),
])
def test_skip_rules_are_parsed_not_evaluated(tmp_path, text, message):
    with pytest.raises(ConfigError, match=None) as exc:
        load_sweep_config(write(tmp_path, {**BASE, "skip": [text]}))
    assert message in str(exc.value) and "sweep.yaml: skip[0]" in str(exc.value)
    assert not (tmp_path / "pwned").exists()


def test_skip_rule_comparing_a_word_with_a_number_is_an_error(tmp_path):
    with pytest.raises(UserError, match="compares values of different kinds"):
        load_sweep_config(write(tmp_path, {**BASE, "skip": ["method>1"]}))


# -- config errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("change, message", [
    ({"grid": {"data.noise_rat": [0.1]}}, "grid.data.noise_rat: not a grid key. Did you mean 'data.noise_rate'?"),
    ({"lane": "smollm2", "grid": {"pretrain.steps": [1]}}, "pretrain.steps is world-lane only"),
    ({"grid": {"method": ["dpo", "ipo"]}}, "grid.method: unknown method 'ipo'"),
    ({"methods": {"none": {}, "dpo": {}}}, "methods.none: 'none' is reserved"),
    ({"methods": {"dpo": {"loss.bta": 0.2}}}, "methods.dpo.loss.bta: not a train config key. Did you mean 'loss.beta'"),
    ({"grid": {"data.noise_rate": [0.2, 1.5]}}, "data.noise_rate must lie in [0, 1], got 1.5"),
    ({"grid": {"data.noise_rate": ["high"]}}, "data.noise_rate: expected float, got 'high'"),
    ({"grid": {"seed": [0, 0.5]}}, "grid.seed: values must be whole numbers"),
    ({"grid": {"seed": [0, 0]}}, "grid.seed: a value is listed twice"),
    ({"grid": {"seed": []}}, "grid.seed: the list is empty"),
    ({"skip": ["seed>=0"]}, "skip: the rules drop every cell"),
    ({"lane": "moon"}, "lane: 'moon' is not one of world, smollm2"),
    ({"executor": {"kind": "slurm"}}, "executor.kind: 'slurm' is not one of local, ray"),
    ({"exectuor": {}}, "unknown key 'exectuor'. Did you mean 'executor'?"),
    ({"source": "x"}, "unknown key 'source'"),
    ({"train": {"config": "no_such_train_config"}}, "train: config no_such_train_config does not exist"),
])
def test_config_errors_name_the_file_the_key_and_the_fix(tmp_path, change, message):
    config = {**BASE, **change, "grid": {**BASE["grid"], **change.get("grid", {})}}  # grid keys: merged
    with pytest.raises(UserError) as exc:
        load_sweep_config(write(tmp_path, config))
    assert message in str(exc.value)
    assert str(tmp_path / "sweep.yaml") in str(exc.value)


def test_sweep_configs_are_told_apart_from_train_and_world_configs():
    from robalign.experiments.sweep import is_sweep_config
    from robalign.shipped_configs import list_configs, resolve_config

    assert is_sweep_config(BASE)
    for shipped in list_configs():
        if shipped.kind != "sweep":
            assert not is_sweep_config(yaml.safe_load(resolve_config(shipped.name).read_text())), shipped.name


def test_overrides_set_grid_lists_and_method_keys(tmp_path):
    path = write(tmp_path, BASE)
    sweep = load_sweep_config(path, ["grid.seed=[3]", "grid.data.noise_rate=[0.4]",
                                     "methods.shapo.training.shapo.rho=0.1", "skip=[]"])
    assert sweep.grid == {"method": ["none", "dpo", "shapo"], "data.noise_rate": [0.4], "seed": [3]}
    assert sweep.methods["shapo"] == {"training.shapo.enabled": True, "training.shapo.rho": 0.1}
    assert [c.label for c in expand(sweep)] == [f"method={m} noise_rate=0.4 seed=3" for m in ("none", "dpo", "shapo")]
    with pytest.raises(ConfigError, match="grid.data.nois_rate: not a grid key"):
        load_sweep_config(path, ["grid.data.nois_rate=[0.1]"])


def test_config_name_resolves_a_shipped_sweep(tmp_path, monkeypatch):
    import robalign.shipped_configs as shipped

    (tmp_path / "pkg" / "sweep").mkdir(parents=True)
    (tmp_path / "pkg" / "sweep" / "mine.yaml").write_text(yaml.safe_dump({**BASE, "name": "mine"}))
    (tmp_path / "pkg" / "train").symlink_to(shipped.configs_root() / "train")
    monkeypatch.setattr(shipped, "configs_root", lambda: tmp_path / "pkg")
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep_config("mine")
    assert sweep.name == "mine" and sweep.source == str(tmp_path / "pkg" / "sweep" / "mine.yaml")
    with pytest.raises(UserError, match="Did you mean sweep/mine"):
        load_sweep_config("mien")


# -- running ------------------------------------------------------------------------------------------


def runs(out: Path) -> list[str]:
    return (out / "runs.log").read_text().split() if (out / "runs.log").exists() else []


def test_local_run_stores_every_cell_once_and_a_rerun_runs_nothing(tmp_path):
    sweep = load_sweep_config(write(tmp_path, BASE))
    out = tmp_path / "out"
    summary = run_sweep(sweep, log=quiet, runner="runners")
    assert len(summary["done"]) == 10 and summary["failed"] == {} and summary["already_done"] == 0
    assert summary["skipped_by_rules"] == 2 and summary["store"] == f"sqlite:///{(out / 'results.sqlite').resolve()}"
    assert json.loads((out / "sweep.json").read_text())["done"] == summary["done"]
    frame = Store(f"sqlite:///{out / 'results.sqlite'}").frame("toy").set_index("cell")
    assert len(frame) == 10 and sorted(runs(out)) == sorted(frame.index)
    cell = next(c for c in expand(sweep) if c.label == "method=dpo noise_rate=0.2 seed=1")
    assert frame.loc[cell.id, "toy/safety"] == pytest.approx(0.9 - 1.0 * 0.2 + 0.01)  # 0.71
    assert frame.loc[cell.id, "toy/safety.low"] == pytest.approx(0.66)
    assert frame.loc[cell.id, "run_dir"] == str((out / "cells" / cell.id).resolve())
    assert json.loads((out / "cells" / cell.id / "result.json").read_text())["safety"] == pytest.approx(0.71)
    again = run_sweep(sweep, log=quiet, runner="runners")
    assert again["done"] == [] and again["already_done"] == 10 and len(runs(out)) == 10
    assert len((out / "prepare.log").read_text().split()) == 2  # prepare runs each time (it is idempotent)


def test_a_failing_cell_is_recorded_the_others_go_on_and_the_cli_says_how_to_retry(tmp_path, capsys):
    path = write(tmp_path, BASE)
    out = tmp_path / "out"
    out.mkdir()
    (out / "fail_on").write_text("method=shapo noise_rate=0.2")
    assert main(["sweep", "--config", str(path), "--runner", "runners"]) == 1
    printed = capsys.readouterr().out
    assert "2 cells failed" in printed and "run the same command again" in printed
    sweep = load_sweep_config(path)
    failed = [c for c in expand(sweep) if "method=shapo noise_rate=0.2" in c.label]
    status = Store(f"sqlite:///{out / 'results.sqlite'}").status("toy")
    assert sorted(s for s in status.values()) == ["done"] * 8 + ["failed"] * 2
    for cell in failed:
        assert status[cell.id] == "failed" and cell.label in printed
        assert "RuntimeError: told to fail on" in (out / "cells" / cell.id / "error.txt").read_text()
    (out / "fail_on").unlink()
    assert main(["sweep", "--config", str(path), "--runner", "runners"]) == 0
    assert len(runs(out)) == 12  # 10 cells + the 2 failed ones again
    assert not any((out / "cells" / cell.id / "error.txt").exists() for cell in failed)
    assert set(Store(f"sqlite:///{out / 'results.sqlite'}").status("toy").values()) == {"done"}


def test_a_sweep_killed_midway_finishes_without_redoing_finished_cells(tmp_path):
    path = write(tmp_path, BASE)
    out = tmp_path / "out"
    out.mkdir()
    (out / "crash_at").write_text("4")  # the 4th cell kills its own process (SIGKILL) before finishing
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, "-m", "robalign.cli", "sweep", "--config", str(path),
                             "--runner", "runners"], env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    store = Store(f"sqlite:///{out / 'results.sqlite'}")
    cells = expand(load_sweep_config(path))
    first = runs(out)
    assert first == [c.id for c in cells[:4]]
    assert [store.status("toy")[c.id] for c in cells[:4]] == ["done", "done", "done", "running"]
    assert main(["sweep", "--config", str(path), "--runner", "runners"]) == 0
    second = runs(out)[4:]
    assert second == [c.id for c in cells[3:]]  # the killed cell again, then the rest; none of the 3 done
    assert set(store.status("toy").values()) == {"done"} and len(store.frame("toy")) == 10


def test_dry_run_lists_status_and_creates_nothing(tmp_path, capsys):
    path = write(tmp_path, BASE)
    assert main(["sweep", "--config", str(path), "--dry-run"]) == 0
    assert not (tmp_path / "out").exists()
    assert "toy: 10 cells, 0 done, 0 running, 0 failed, 10 pending" in capsys.readouterr().out
    run_sweep(load_sweep_config(path, ["grid.seed=[0]"]), log=quiet, runner="runners", restart=True)
    assert main(["sweep", "--config", str(path), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "toy: 10 cells, 5 done, 0 running, 0 failed, 5 pending" in printed
    assert "done     method=dpo noise_rate=0.2 seed=0" in printed
    assert "pending  method=dpo noise_rate=0.2 seed=1" in printed


def test_more_grid_values_keep_the_done_cells_and_a_changed_config_needs_restart(tmp_path, capsys):
    path = write(tmp_path, BASE)
    out = tmp_path / "out"
    run_sweep(load_sweep_config(path, ["grid.seed=[0]"]), log=quiet, runner="runners")
    assert len(runs(out)) == 5
    # another seed (grid values, skip rules and the executor choose cells, not what one computes): the
    # 5 done cells stay, the 5 new ones run
    assert main(["sweep", "--config", str(path), "--runner", "runners"]) == 0
    assert len(runs(out)) == 10
    # what a cell computes changed: refused, then --restart reruns everything
    changed = ["--runner", "runners", "train.overrides=[training.learning_rate=0.001]"]
    assert main(["sweep", "--config", str(path), *changed]) == 2
    err = capsys.readouterr().err
    assert "sweep 'toy' is already in the store" in err and "--restart" in err and "train.overrides" in err
    assert main(["sweep", "--config", str(path), *changed, "--restart"]) == 0
    assert len(runs(out)) == 20  # all 10 cells again
    assert len(Store(f"sqlite:///{out / 'results.sqlite'}").frame("toy")) == 10


def test_a_second_driver_on_the_same_out_is_refused(tmp_path):
    from robalign.experiments.executors import driver_lock

    sweep = load_sweep_config(write(tmp_path, BASE))
    (tmp_path / "out").mkdir()
    with driver_lock(tmp_path / "out"), pytest.raises(UserError, match="another `robalign sweep` is running"):
        run_sweep(sweep, log=quiet, runner="runners")


def comparable(frame):
    return frame.drop(columns=["run_dir", "finished"]).sort_values("cell").reset_index(drop=True)


@pytest.mark.slow  # a second Ray start; the PostgreSQL test below runs Ray in the default suite
def test_ray_and_local_executors_give_the_same_table_and_a_dead_ray_worker_fails_only_its_cell(tmp_path):
    config = {**BASE, "executor": {"kind": "ray", "workers": 2}}
    local = load_sweep_config(write(tmp_path, {**config, "out": str(tmp_path / "local")}, "local.yaml"))
    ray_sweep = load_sweep_config(write(tmp_path, {**config, "out": str(tmp_path / "ray")}, "ray.yaml"))
    run_sweep(local, executor="local", log=quiet, runner="runners")
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "crash_at").write_text("3")  # the 3rd cell SIGKILLs its Ray worker
    summary = run_sweep(ray_sweep, log=quiet, runner="runners")
    assert summary["executor"] == "ray" and len(summary["done"]) == 9 and len(summary["failed"]) == 1
    (dead,) = summary["failed"]
    assert runs(tmp_path / "ray")[2] == dead
    store = Store(f"sqlite:///{tmp_path / 'ray' / 'results.sqlite'}")
    assert store.status("toy")[dead] == "failed"
    assert (tmp_path / "ray" / "cells" / dead / "error.txt").read_text().strip()
    pids = {int(p) for p in (tmp_path / "ray" / "prepare.log").read_text().split()}
    assert pids == {os.getpid()}  # prepare ran in the driver; the cells in Ray workers:
    assert os.getpid() not in {p["pid"] for p in store.cells("toy")["provenance"] if p}
    again = run_sweep(ray_sweep, executor="local", log=quiet, runner="runners")
    assert again["done"] == [dead] and again["already_done"] == 9
    a = Store(f"sqlite:///{tmp_path / 'local' / 'results.sqlite'}").frame("toy")
    assert len(a) == 10
    assert comparable(a).equals(comparable(store.frame("toy")))

def test_postgres_store_gives_the_same_table_locally_and_through_ray(tmp_path, postgres_server, postgres_database):
    """One sweep into SQLite (local executor), PostgreSQL (local) and PostgreSQL (Ray): one table. The Ray
    run writes to a second database, so it runs every cell itself instead of finding them done."""
    config = {**BASE, "executor": {"workers": 2}}
    sqlite = load_sweep_config(write(tmp_path, {**config, "out": str(tmp_path / "sqlite")}, "a.yaml"))
    local = load_sweep_config(write(tmp_path, {**config, "out": str(tmp_path / "pg_local")}, "b.yaml"))
    ray_sweep = load_sweep_config(write(tmp_path, {**config, "out": str(tmp_path / "pg_ray")}, "c.yaml"))
    # the test server trusts any password: this one must never reach a log line, sweep.json or the store
    ray_url = postgres_server.create_database("sweep_ray").replace("robalign@", "robalign:s3cr3t@")
    run_sweep(sqlite, log=quiet, runner="runners")
    assert len(run_sweep(local, store_url=postgres_database, log=quiet, runner="runners")["done"]) == 10
    lines = []
    summary = run_sweep(ray_sweep, executor="ray", store_url=ray_url, log=lines.append, runner="runners")
    assert len(summary["done"]) == 10 and summary["store"].startswith("postgresql://***@127.0.0.1:")
    stored = json.dumps(Store(ray_url).sweeps(), default=str)
    for text in ("\n".join(lines), (tmp_path / "pg_ray" / "sweep.json").read_text(), stored):
        assert "s3cr3t" not in text
    expected = comparable(Store(f"sqlite:///{tmp_path / 'sqlite' / 'results.sqlite'}").frame("toy"))
    assert len(expected) == 10
    for url in (postgres_database, ray_url):
        assert comparable(Store(url).frame("toy")).equals(expected)


class CountingRunner:
    """A runner that is an object, not a module: the local executor takes it as it is."""

    def __init__(self):
        self.prepared, self.ran = 0, []

    def prepare(self, sweep, log=print):
        self.prepared += 1

    def run_cell(self, sweep, cell, cell_dir, log=print):
        self.ran.append(cell.label)
        return runners.CellResult({"toy/seed": float(cell.params["seed"])}, [], {})


def test_an_object_runner_runs_locally_and_ray_asks_for_a_module(tmp_path, monkeypatch):
    sweep = load_sweep_config(write(tmp_path, {**BASE, "grid": {"method": ["dpo"], "seed": [0, 1, 2]}, "skip": []}))
    runner = CountingRunner()
    assert len(run_sweep(sweep, log=quiet, runner=runner)["done"]) == 3
    assert runner.prepared == 1 and runner.ran == [f"method=dpo seed={s}" for s in (0, 1, 2)]
    frame = Store(f"sqlite:///{tmp_path / 'out' / 'results.sqlite'}").frame("toy")
    assert sorted(frame["toy/seed"]) == [0.0, 1.0, 2.0]
    with pytest.raises(UserError, match="pass a module or a module path"):
        run_sweep(sweep, executor="ray", log=quiet, runner=CountingRunner())
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(UserError, match=r"pip install 'robalign\[ray\]'"):
        run_sweep(sweep, executor="ray", log=quiet, runner="runners", restart=True)
    assert len(frame) == len(Store(f"sqlite:///{tmp_path / 'out' / 'results.sqlite'}").frame("toy"))  # untouched
