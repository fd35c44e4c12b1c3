"""ShaPO under data parallelism: two CPU processes (torchrun, gloo) take the same step as one
process with the whole batch, and the first pass runs without DDP's gradient all-reduce."""

from __future__ import annotations

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
    done = subprocess.run([str(TORCHRUN), "--nproc_per_node", "2", "--master_port", "0",
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
