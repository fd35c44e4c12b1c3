"""Small real runners for the sweep engine's tests (imported by module path, also in Ray workers).

``run_cell`` computes its metrics from the cell's params by a formula the tests work out by
hand, writes ``result.json`` into the cell directory and appends the cell id to
``OUT/runs.log``, so a test counts how often each cell really ran. Files in ``OUT`` steer it
from outside the process (a subprocess, a Ray worker):

- ``OUT/crash_at`` holding k: the k-th run of this sweep (counted in runs.log) kills its own
  process with SIGKILL after logging itself, as a power cut would;
- ``OUT/fail_on`` holding a label fragment: a cell whose label contains it raises.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import NamedTuple

# safety = 0.9 - NOISE_WEIGHT[method] * noise_rate + 0.01 * seed (+ 0.001 * steps / 100 when given)
NOISE_WEIGHT = {"none": 0.0, "dpo": 1.0, "shapo": 0.5}


class CellResult(NamedTuple):
    metrics: dict
    samples: list[dict]
    provenance: dict


def toy_safety(params: dict) -> float:
    noise = params.get("data.noise_rate", 0.0)
    return 0.9 - NOISE_WEIGHT[params["method"]] * noise + 0.01 * params["seed"] + \
        0.001 * params.get("pretrain.steps", 0) / 100


def prepare(sweep, log=print) -> None:
    out = Path(sweep.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "prepare.log", "a", encoding="utf-8") as f:
        f.write(f"{os.getpid()}\n")


def run_cell(sweep, cell, cell_dir: Path, log=print) -> CellResult:
    out = Path(sweep.out_dir)
    with open(out / "runs.log", "a", encoding="utf-8") as f:
        f.write(f"{cell.id}\n")
    runs = len((out / "runs.log").read_text().split())
    crash_at = out / "crash_at"
    if crash_at.is_file() and runs == int(crash_at.read_text()):
        os.kill(os.getpid(), signal.SIGKILL)
    fail_on = out / "fail_on"
    if fail_on.is_file() and fail_on.read_text().strip() in cell.label:
        raise RuntimeError(f"told to fail on {cell.label}")
    log(f"running {cell.label}")
    safety = round(toy_safety(cell.params), 6)
    (cell_dir / "result.json").write_text(json.dumps({"params": cell.params, "safety": safety}))
    metrics = {"toy/safety": {"value": safety, "low": round(safety - 0.05, 6), "high": round(safety + 0.05, 6),
                              "n": 20},
               "toy/params": float(len(cell.params))}
    samples = [{"benchmark": "toy", "prompt_id": f"p{i}", "category": "AGE", "attack": "" if i == 0 else "roleplay",
                "prompt": f"prompt {i}", "answer": f"answer {i} of {cell.label}", "label": "R", "judge": "rule"}
               for i in range(2)]
    return CellResult(metrics, samples, {"runner": "tests/experiments/runners.py", "pid": os.getpid()})
