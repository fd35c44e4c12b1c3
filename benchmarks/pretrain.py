"""Tokens per second of soft-label pre-training (``robalign pretrain``) on this machine.

    python benchmarks/pretrain.py --json                       # default world, nano + micro (fp32, bf16)
    python benchmarks/pretrain.py --world runs/world --threads 2 --windows 6

Runs the real loop (``robalign.training.pretrain.pretrain``) on a world built here with the
default config (or ``--world DIR``, copied so its checkpoints are left alone) and reads its
metrics log: one line per window of ``--window-steps`` steps, each with the tokens per second
of that window (real tokens, prompt and answer, pads not counted; checkpoint writing not
timed). The first window (warm-up: allocator, first kernels) is dropped and the median of the
others reported with their min and max: other processes on a shared machine slow whichever
window they land on, so a wide spread says the machine was busy. ``setup_s`` is the time
before the first step (tokenizer training on the corpus, encoding ~18.5k rows), and the final
checkpoint save. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# (size, precision, steps per window): windows of roughly 5-10 s each on 2 busy cores
CASES = [("nano", "fp32", 10), ("micro", "fp32", 2), ("micro", "bf16", 3)]


def measure(world: Path, size: str, precision: str, window_steps: int, windows: int, batch_size: int) -> dict:
    from robalign.training.pretrain import PretrainConfig, pretrain

    steps = window_steps * (windows + 1)
    cfg = PretrainConfig(world=str(world), steps=steps, save_every=steps, size=size, batch_size=batch_size,
                         log_every=window_steps, heldout_rows=0, precision=precision, device="cpu")
    start = time.perf_counter()
    pretrain(cfg, overwrite=True)
    wall = time.perf_counter() - start
    log = [json.loads(line) for line in (world / "models" / "metrics.jsonl").read_text().splitlines()]
    rates = [m["tokens/s"] for m in log[1:]]  # the first window is warm-up
    return {"size": size, "precision": precision, "batch_size": batch_size, "steps": steps,
            "tokens_per_s": round(statistics.median(rates)), "min": round(min(rates)), "max": round(max(rates)),
            "windows": len(rates), "tokens_per_step": round(log[-1]["tokens"] / steps),
            "padding": round(statistics.mean(m["padding"] for m in log), 3),
            "setup_s": round(wall - log[-1]["seconds"], 1), "final_loss": round(log[-1]["loss"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default=None, help="a world directory (default: build the default world here)")
    parser.add_argument("--windows", type=int, default=4, help="timed windows per case (after one warm-up window)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--cases", default=None, help="e.g. nano:fp32:10,micro:bf16:3 (size:precision:window steps)")
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cases = [(s, p, int(n)) for s, p, n in (c.split(":") for c in args.cases.split(","))] if args.cases else CASES
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "world"
        build_s = None
        if args.world:
            shutil.copytree(args.world, world, ignore=shutil.ignore_patterns("models", "checks"))
            meta = json.loads((world / "world.json").read_text())
            (world / "world.json").write_text(json.dumps(meta | {"checkpoints": []}))
        else:
            from robalign.world.build import build_world
            from robalign.world.config import load_world_config

            build_s = round(build_world(load_world_config(None, []), world).seconds, 2)
        results = []
        for size, precision, window_steps in cases:
            results.append(measure(world, size, precision, window_steps, args.windows, args.batch_size))
            if not args.json:
                print(json.dumps(results[-1]), file=sys.stderr)
    out = {"benchmark": "pretrain", "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "world": args.world or "default", "world_build_s": build_s, "results": results}
    print(json.dumps(out, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
