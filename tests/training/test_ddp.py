"""Data-parallel training on two CPU processes (torchrun, gloo) takes the same steps as one
process with the same global batch, for mean and Dr.DPO aggregation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TORCHRUN = Path(sys.executable).with_name("torchrun")


def _run(out, model_dir, world, per_device, accumulation, aggregation):
    common = [f"output_dir={out}", f"model.name_or_path={model_dir}", "data.train=synthetic:120",
              "data.max_length=96", "data.max_prompt_length=64", "training.max_steps=3", "training.learning_rate=1e-3",
              f"training.per_device_batch_size={per_device}", f"training.gradient_accumulation_steps={accumulation}",
              f"loss.aggregation={aggregation}", "training.save_model=false"]
    launcher = ([str(TORCHRUN), "--standalone", "--nproc_per_node", str(world)] if world > 1
                else [sys.executable])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launcher, "-m", "robalign.cli", "train", *common], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["loss"], r["grad_norm"], r["rewards/margins"]) for r in rows if "grad_norm" in r]


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside this interpreter")
@pytest.mark.parametrize("aggregation", ["mean", "drdpo"])
def test_two_processes_match_one(tmp_path, nano_llama, aggregation):
    single = _run(tmp_path / "one", nano_llama, 1, 8, 1, aggregation)
    double = _run(tmp_path / "two", nano_llama, 2, 2, 2, aggregation)  # 2 ranks x 2 micro x 2 pairs = 8
    assert len(single) == len(double) == 3
    for a, b in zip(single, double):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
