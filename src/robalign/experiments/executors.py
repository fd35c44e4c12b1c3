"""How a sweep's cells run: one at a time in the driver, or as Ray tasks; and what guards a run.

``run_one`` is a cell's whole life in any executor: claim it in the store, run the runner in
``OUT/cells/<id>/`` (its log teed to ``log.txt``), then ``finish`` with metrics and samples
in one transaction, or ``fail`` with the traceback in ``error.txt``. ``run_local`` calls it
in a loop under a progress bar. ``run_ray`` makes it a Ray task per cell (resources from
``executor``, ``max_retries=0`` so a crashed cell is reported rather than silently re-run) that
imports the runner by module path in the worker, and records cells whose worker died.

``driver_lock`` is an exclusive ``flock`` on ``OUT/.sweep.lock``: one driver per OUT and host,
which is what lets a new driver claim back the cells a killed one left running under the same
worker name (``Store.claim`` hands a running cell to the worker that holds it).
"""

from __future__ import annotations

import fcntl
import importlib
import os
import sys
import traceback
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robalign.errors import UserError
from robalign.experiments.curves import record_cell_curves

if TYPE_CHECKING:
    from robalign.experiments.sweep import Cell, SweepConfig


class driver_lock:
    """``fcntl.flock`` on OUT/.sweep.lock for the whole run: one driver per OUT on this host."""

    def __init__(self, out: Path):
        self.path = out / ".sweep.lock"

    def __enter__(self):
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise UserError(f"another `robalign sweep` is running on {self.path.parent} (lock {self.path}); "
                            "wait for it to finish, or stop it first") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def run_one(store, sweep: SweepConfig, cell: Cell, runner: Any, worker: str, log: Callable[[str], None]) -> str:
    """Claim ``cell``, run it, store its result: 'done', 'failed' (error.txt written) or
    'busy' (done or running elsewhere by now). Everything the cell logs goes to its log.txt too."""
    if not store.claim(sweep.name, cell.id, cell.params, worker):
        return "busy"
    cell_dir = (sweep.out_dir / "cells" / cell.id).resolve()
    cell_dir.mkdir(parents=True, exist_ok=True)
    (cell_dir / "error.txt").unlink(missing_ok=True)  # an earlier attempt's
    with open(cell_dir / "log.txt", "a", encoding="utf-8") as log_file:
        def cell_log(text: str) -> None:
            log_file.write(f"{text}\n")
            log_file.flush()
            log(text)

        try:
            result = runner.run_cell(sweep, cell, cell_dir, cell_log)
            record_cell_curves(store, sweep.name, cell.id, cell_dir, result.provenance)  # report figures 5-7
            store.finish(sweep.name, cell.id, metrics=result.metrics, run_dir=str(cell_dir),
                         provenance=result.provenance, samples=result.samples)
            return "done"
        except Exception as exc:  # a failing cell is recorded; the sweep goes on
            (cell_dir / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
            store.fail(sweep.name, cell.id, f"{type(exc).__name__}: {exc}")
            log(f"cell {cell.label} failed: {type(exc).__name__}: {exc} (traceback in {cell_dir / 'error.txt'})")
            return "failed"


def run_local(sweep: SweepConfig, cells: list[Cell], store, worker: str, runner: Any,
              log: Callable[[str], None]) -> dict[str, str]:
    """One cell after the other in this process; print goes above the progress bar."""
    from tqdm.auto import tqdm

    outcome = {}
    with tqdm(total=len(cells), desc=f"sweep {sweep.name}", unit="cell", disable=not cells) as bar:
        def cell_log(text: str) -> None:
            tqdm.write(text, file=sys.stderr) if log is print else log(text)

        for cell in cells:
            bar.set_postfix_str(cell.label)
            outcome[cell.id] = run_one(store, sweep, cell, runner, worker, cell_log)
            bar.update()
    return outcome


def module_path(runner: Any) -> tuple[str, list[str]]:
    """The runner's module name and the sys.path entry a Ray worker needs to import it."""
    if isinstance(runner, str):
        name, module = runner, importlib.import_module(runner)
    elif isinstance(runner, types.ModuleType):
        name, module = runner.__name__, runner
    else:
        raise UserError("the ray executor imports the runner in each worker: pass a module or a module path "
                        "(e.g. robalign.experiments.pipeline), not an object")
    file = Path(getattr(module, "__file__", "") or ".").resolve()
    depth = len(name.split(".")) - (0 if file.name == "__init__.py" else 1)
    return name, [str(file.parents[depth])] if file.name.endswith(".py") else []


def _ray_cell(runner: str, sys_path: list[str], cwd: str, sweep: SweepConfig, cell: Cell, url: str,
              worker: str) -> str:
    """One cell in a Ray worker: import the runner, claim, run, write the result to the store."""
    os.chdir(cwd)  # relative paths in the config mean the same as in the driver
    for entry in sys_path:
        if entry not in sys.path:
            sys.path.insert(0, entry)
    from robalign.experiments.store import Store

    return run_one(Store(url), sweep, cell, importlib.import_module(runner), worker, lambda text: None)


def require_ray():
    """The ray module, or a UserError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError("the ray executor needs Ray: pip install 'robalign[ray]' (or use --executor local)") from None
    return ray


def run_ray(sweep: SweepConfig, cells: list[Cell], url: str, worker: str,
            runner: tuple[str, list[str]]) -> dict[str, str]:
    """Each cell a Ray task on a local instance (or the cluster RAY_ADDRESS names) that writes
    its own result; the driver waits, counts, and records cells whose worker died."""
    from tqdm.auto import tqdm

    ray = require_ray()

    name, sys_path = runner
    ex = sweep.executor
    started = not ray.is_initialized()
    if started:
        if os.environ.get("RAY_ADDRESS"):  # a cluster the user points at
            ray.init(log_to_driver=False)
        else:
            ray.init(num_cpus=max(1, int(ex.workers * ex.cpus_per_cell)), include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
    try:
        if ex.gpus_per_cell > ray.cluster_resources().get("GPU", 0):
            raise UserError(f"executor.gpus_per_cell={ex.gpus_per_cell} but Ray sees "
                            f"{ray.cluster_resources().get('GPU', 0):g} GPUs; set executor.gpus_per_cell=0 on CPU")
        # max_retries=0: a cell whose worker died is recorded failed, not run again behind the user's back
        task = ray.remote(num_cpus=ex.cpus_per_cell, num_gpus=ex.gpus_per_cell, max_retries=0)(_ray_cell)
        refs = {task.remote(name, sys_path, os.getcwd(), sweep, c, url, worker): c for c in cells}
        outcome: dict[str, str] = {}
        with tqdm(total=len(cells), desc=f"sweep {sweep.name} (ray)", unit="cell", disable=not cells) as bar:
            waiting = list(refs)
            while waiting:
                ready, waiting = ray.wait(waiting, num_returns=1)
                cell = refs[ready[0]]
                try:
                    outcome[cell.id] = ray.get(ready[0])
                except Exception as exc:  # the worker died or the task failed outside run_one
                    outcome[cell.id] = _record_crash(sweep, cell, url, exc)
                if outcome[cell.id] == "failed":
                    tqdm.write(f"cell {cell.label} failed (see {sweep.out_dir / 'cells' / cell.id / 'error.txt'})",
                               file=sys.stderr)
                bar.update()
        return outcome
    finally:
        if started:
            ray.shutdown()


def _record_crash(sweep: SweepConfig, cell: Cell, url: str, exc: BaseException) -> str:
    from robalign.experiments.store import Store

    cell_dir = sweep.out_dir / "cells" / cell.id
    cell_dir.mkdir(parents=True, exist_ok=True)
    (cell_dir / "error.txt").write_text(
        f"{type(exc).__name__}: {exc}\n\nThe cell's Ray worker died or its task failed outside the runner (killed, out "
        f"of memory, a crash in native code). The cell's own log: {cell_dir / 'log.txt'}; Ray's worker logs: "
        "/tmp/ray/session_latest/logs/\n", encoding="utf-8")
    store = Store(url)
    if store.status(sweep.name).get(cell.id) == "running":
        store.fail(sweep.name, cell.id, f"{type(exc).__name__}: {str(exc)[:2000]}")
    return "failed"
