"""A training process killed with SIGKILL and resumed reaches the same losses as one that
was never interrupted (CPU, fixed seed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from robalign.training.checkpoint import checkpoint_dirs


def _args(out, model_dir, *extra):
    return [sys.executable, "-m", "robalign.cli", "train", f"output_dir={out}", f"model.name_or_path={model_dir}",
            "data.train=synthetic:200", "data.max_length=96", "data.max_prompt_length=64",
            "data.noise_rate=0.1", "training.max_steps=24", "training.per_device_batch_size=4",
            "training.gradient_accumulation_steps=2", "training.learning_rate=1e-3", "training.warmup_steps=3",
            "training.lr_scheduler=linear", "training.save_steps=4", "training.save_total_limit=10", *extra]


def _losses(out):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: (r["loss"], r["rewards/margins"]) for r in rows if "loss" in r}


def test_kill_then_resume_matches_uninterrupted(tmp_path, nano_llama):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_args(straight, nano_llama), check=True, env=env, capture_output=True, timeout=300)

    proc = subprocess.Popen(_args(killed, nano_llama), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not any(int(p.name.split("-")[1]) >= 8 for p in checkpoint_dirs(killed)):
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    info = json.loads((killed / "run_info.json").read_text())
    assert info["status"] == "running" and not (killed / "model").exists()  # nothing claims completion

    done = subprocess.run(_args(killed, nano_llama, "--resume"), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    expected, got = _losses(straight), _losses(killed)
    assert sorted(got) == list(range(1, 25))
    for step in expected:
        assert abs(got[step][0] - expected[step][0]) < 1e-6, (step, got[step], expected[step])
        assert abs(got[step][1] - expected[step][1]) < 1e-6
    info = json.loads((killed / "run_info.json").read_text())
    assert info["status"] == "complete" and info["resumed_from"]
