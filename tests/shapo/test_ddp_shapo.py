"""ShaPO under data parallelism: two CPU processes (torchrun, gloo) take the same step as one
process with the whole batch, and the first pass runs without DDP's gradient all-reduce."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from shapo_helpers import grads, make_setup, settings

from robalign.training.shapo import shapo_step
from robalign.training.subspace import build_mask, resolve_parameter_mask

TORCHRUN = Path(sys.executable).with_name("torchrun")
HERE = Path(__file__).resolve().parent


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside this interpreter")
def test_two_ranks_equal_one_process(tmp_path, nano_llama, tiny_tokenizer):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    # --standalone picks a free port (torch 2.13 passes --master_port 0 through literally and hangs)
    done = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2",
                           str(HERE / "ddp_worker.py"), str(nano_llama), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=False)
    setup = make_setup(nano_llama, tiny_tokenizer)
    mask = resolve_parameter_mask(setup.model, build_mask(setup.model, 0.05, "random", seed=3))
    for aggregation in ("mean", "drdpo"):
        setup.model.zero_grad(set_to_none=True)
        single = shapo_step(setup.model, setup.batches(8), setup.reference, settings(aggregation), mask, 0.05)
        expected, got = grads(setup.model), ddp[aggregation]
        # one synced backward per step: the first (masked) pass never reaches DDP's all-reduce
        assert got["plain_reductions"] > 0 and got["shapo_reductions"] == got["plain_reductions"]
        for key in ("loss", "shapo/loss_gain", "shapo/grad_norm_masked", "shapo/eps_norm"):
            assert got["metrics"][key] == pytest.approx(single[key], rel=1e-6, abs=1e-10), key
        assert expected.keys() == got["grads"].keys()
        for name, g in expected.items():
            torch.testing.assert_close(got["grads"][name], g, rtol=1e-6, atol=1e-10)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside this interpreter")
def test_trainer_with_shapo_under_ddp_matches_one_process(tmp_path, nano_llama):
    def run(out, world, per_device, accumulation):
        common = [f"output_dir={out}", f"model.name_or_path={nano_llama}", "data.train=synthetic:120",
                  "data.max_length=80", "data.max_prompt_length=48", "training.max_steps=3",
                  "training.learning_rate=1e-3", f"training.per_device_batch_size={per_device}",
                  f"training.gradient_accumulation_steps={accumulation}", "training.save_model=false",
                  "training.shapo.enabled=true", "training.shapo.rho=0.1", "training.shapo.interval=2"]
        launcher = [str(TORCHRUN), "--standalone", "--nproc_per_node", str(world)] if world > 1 else [sys.executable]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        done = subprocess.run([*launcher, "-m", "robalign.cli", "train", *common], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return [r for r in rows if "grad_norm" in r]

    single = run(tmp_path / "one", 1, 8, 1)
    double = run(tmp_path / "two", 2, 2, 2)  # 2 ranks x 2 micro-batches x 2 pairs = 8
    assert [("shapo/loss_gain" in r) for r in double] == [True, False, True]
    for a, b in zip(single, double, strict=True):
        assert a.keys() == b.keys()
        for key in ("loss", "grad_norm", "rewards/margins", "shapo/loss_gain", "shapo/grad_norm_masked"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
