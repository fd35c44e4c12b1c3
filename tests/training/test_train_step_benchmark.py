"""benchmarks/train_step.py reports each ratio as a median over paired rounds, with its spread,
so one noisy moment on a shared machine cannot flip a verdict."""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "train_step.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_step_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_spread_and_cycle_ratios_by_hand(bench):
    # inclusive quartiles of 1..5: positions 1 + (5 − 1)/4 = 2 and 4
    assert bench.spread([5.0, 1.0, 4.0, 2.0, 3.0]) == {"median": 3.0, "min": 1.0, "q1": 2.0, "q3": 4.0, "max": 5.0}
    assert bench.spread([0.7]) == {"median": 0.7, "min": 0.7, "q1": 0.7, "q3": 0.7, "max": 0.7}
    # k = 5 cycles: (1+1+1+1+1)/(5·0.5) = 2.0 and (2+1+1+1+1)/2.5 = 2.4; a trailing partial cycle is dropped
    times, base = [1.0] * 5 + [2.0, 1.0, 1.0, 1.0, 1.0] + [9.0], [0.5] * 11
    assert bench.cycle_ratios(times, base, 5) == pytest.approx([2.0, 2.4])


def test_one_noisy_round_cannot_flip_the_verdict(bench):
    """Seven rounds at robalign 0.62 s vs TRL 1.0 s, one of them hit by a load burst on robalign's
    side (1.95 s): the median ratio stays 0.62, the goal (≤ 0.8) is met, and the spread shows the
    burst as the maximum."""
    ours = [{"median_s": 0.62, "reference_precompute_s": 0.4, "reference_pairs": 80,
             "mean_tokens_per_sequence": 120.0} for _ in range(7)]
    ours[3] = ours[3] | {"median_s": 1.95}
    trl = [{"median_s": 1.0} for _ in range(7)]
    ratios = bench.round_ratios(ours, trl, batch=8)
    assert ratios["robalign_over_trl"] == pytest.approx([0.62] * 3 + [1.95] + [0.62] * 3)
    # with the one-off reference pass spread over the epoch: 0.62 + 0.4·8/80 = 0.66
    assert statistics.median(ratios["robalign_incl_reference_over_trl"]) == pytest.approx(0.66)
    summary = {name: bench.spread(values) for name, values in ratios.items()}
    args = argparse.Namespace(size="micro", batch=8, max_length=160, steps=8, rounds=7, model=None, data=None, epochs=1)
    out = bench.report(args, 9_000_000, ours, trl, {"shapo_mask_share": 0.0031}, summary,
                       {"robalign_over_trl": 0.8})
    assert out["robalign_over_trl"] == 0.62 and out["goal_met"] == {"robalign_over_trl": True}
    assert out["robalign_over_trl_spread"] == {"min": 0.62, "q1": 0.62, "q3": 0.62, "max": 1.95}
    assert out["robalign_dpo_s"] == 0.62 and out["trl_dpo_s"] == 1.0 and out["rounds"] == 7


@pytest.mark.slow
def test_the_benchmark_runs_and_prints_spreads(tmp_path):
    """A nano run with 3 rounds (TRL included when installed): one JSON object on stdout."""
    done = subprocess.run([sys.executable, str(BENCH), "--size", "nano", "--steps", "2", "--warmup", "1",
                           "--rounds", "3", "--batch", "2", "--max-length", "64", "--json"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out["rounds"] == 3 and out["shapo_steps_timed"] == 15
    for name in ("shapo_k1_over_dpo", "shapo_k5_over_dpo") + (("robalign_over_trl",) if out["trl_dpo_s"] else ()):
        s = out[f"{name}_spread"]
        assert s["min"] <= s["q1"] <= out[name] <= s["q3"] <= s["max"], (name, s)
