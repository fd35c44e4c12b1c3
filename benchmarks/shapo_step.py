"""Seconds per optimizer step: robalign DPO, ShaPO with the fresh ascent (ε from ∇L(θ): two passes)
and ShaPO with the previous step's gradient (training.shapo.ascent=previous: one pass), same
model, same data, same process.

    python benchmarks/shapo_step.py --json                       # micro model (~9M), batch 8, 1 % neurons
    python benchmarks/shapo_step.py --json --mask uniform        # full SAM: fresh = two full passes
    python benchmarks/shapo_step.py --json --model smollm2-135m-instruct --batch 4 --steps 3 --warmup 1 \
        --rounds 3                                               # the real model (robalign models pull ...)

Each contender has its own copy of the model and its own AdamW and takes whole trainer steps:
the gradient (one or two passes), clipping at 10, the optimizer step, zero_grad and, for
`previous`, the copy of M⊙.grad kept for the next step. ShaPO runs every step (k = 1; with k the
saving per step is 1/k of the per-ShaPO-step saving) with ρ = 0.05 on `--mask` (a fraction of the
MLP neurons at random — a probe's Top-K costs the same — or `uniform`). The warm-up steps include
each ShaPO run's first step, which is always fresh.

Noise. Other processes on a shared machine slow whichever step they land on. The three
contenders run step by step in turn (the order rotated every step), so a burst hits all three
alike, and each of --rounds rounds of --steps steps gives one paired ratio of median step
times; the JSON gives each ratio's median over rounds with its spread (min, quartiles, max).
A wide spread says the machine was busy: measure again on a quiet one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import bench_pairs, spread  # noqa: E402  the DPO benchmark's pairs and spread

CONTENDERS = ("dpo", "fresh", "previous")
RATIOS = {"shapo_fresh_over_dpo": ("fresh", "dpo"), "shapo_previous_over_dpo": ("previous", "dpo"),
          "shapo_previous_over_fresh": ("previous", "fresh")}


class Contender(NamedTuple):
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    mask: object  # ParameterMask, None for DPO
    ascent: str | None  # None for DPO
    kept: list  # previous: [M⊙.grad of the last step]


def make_contenders(model_dir: Path, mask_spec: str) -> dict[str, Contender]:
    from robalign.models.loading import load_causal_lm
    from robalign.training.subspace import build_mask, resolve_parameter_mask

    out = {}
    for name in CONTENDERS:
        model = load_causal_lm(str(model_dir)).train()
        mask = None
        if name != "dpo":
            spec = "uniform" if mask_spec == "uniform" else build_mask(model, float(mask_spec), "random", seed=0)
            mask = resolve_parameter_mask(model, spec)
        out[name] = Contender(model, torch.optim.AdamW(model.parameters(), lr=1e-5), mask,
                              None if name == "dpo" else name, [None])
    return out


def train_step(c: Contender, batch, reference, settings, rho: float) -> None:
    """One trainer step as robalign.training.trainer takes it (k = 1)."""
    from robalign.training.shapo import masked_gradient, shapo_step
    from robalign.training.step import accumulate_gradients

    if c.ascent is None:
        accumulate_gradients(c.model, [batch], reference, settings)
    else:
        shapo_step(c.model, [batch], reference, settings, c.mask, rho, ascent=c.ascent, previous_gradient=c.kept[0])
        if c.ascent == "previous":
            c.kept[0] = masked_gradient(c.mask)
    torch.nn.utils.clip_grad_norm_(c.model.parameters(), 10.0)
    c.optimizer.step()
    c.optimizer.zero_grad(set_to_none=True)


def time_rounds(model_dir: Path, pairs, args) -> tuple[list[dict[str, float]], dict]:
    """Per round, each contender's median step time; plus what was timed."""
    from robalign.data.tokenize import collate_pairs, tokenize_pairs
    from robalign.models.loading import load_tokenizer
    from robalign.training.reference import compute_reference_logps
    from robalign.training.step import LossSettings

    tok = load_tokenizer(str(model_dir))
    tp = tokenize_pairs(pairs, tok, args.max_length, args.max_length // 2, prompt_format="plain").pairs
    settings = LossSettings({"dpo": 1.0}, 0.1, 0.0, 0.1, False, "mean", 1.0)
    runs = make_contenders(model_dir, args.mask)
    reference = compute_reference_logps(runs["dpo"].model, tp, tok.pad_token_id, batch_size=32)
    rounds, times, tokens = [], {name: [] for name in CONTENDERS}, []
    for step in range(args.warmup + args.rounds * args.steps):
        batch = collate_pairs(tp[(step * args.batch) % len(tp):][: args.batch], tok.pad_token_id)
        order = CONTENDERS[step % 3:] + CONTENDERS[: step % 3]
        for name in order:
            t0 = time.perf_counter()
            train_step(runs[name], batch, reference, settings, args.rho)
            if step >= args.warmup:
                times[name].append(time.perf_counter() - t0)
        if step >= args.warmup:
            tokens.append(batch.attention_mask.sum().item() / batch.input_ids.shape[0])
            if len(times["dpo"]) == args.steps:
                rounds.append({name: statistics.median(ts) for name, ts in times.items()})
                times = {name: [] for name in CONTENDERS}
    n_params = sum(p.numel() for p in runs["dpo"].model.parameters())
    mask_params = runs["fresh"].mask.numel
    return rounds, {"parameters": n_params, "mask_params": mask_params, "mask_share": mask_params / n_params,
                    "mean_tokens_per_sequence": statistics.mean(tokens)}


def round_ratios(rounds: list[dict[str, float]]) -> dict[str, list[float]]:
    """One paired ratio per round for each of RATIOS."""
    return {key: [r[a] / r[b] for r in rounds] for key, (a, b) in RATIOS.items()}


def report(args, n_params: int, rounds: list[dict[str, float]], info: dict, ratios: dict[str, list[float]]) -> dict:
    """The JSON object: median step seconds, each ratio's median over rounds and its spread."""
    summary = {name: spread(values) for name, values in ratios.items()}
    return {
        "benchmark": "shapo_step", "model": args.model or f"tiny llama {args.size}", "parameters": n_params,
        "batch_pairs": args.batch, "max_length": args.max_length, "mask": args.mask, "rho": args.rho, "interval": 1,
        "threads": torch.get_num_threads(), "device": "cpu", "steps_timed": args.steps, "rounds": args.rounds,
        "load_average_1m": round(os.getloadavg()[0], 2),
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in info.items()},
        **{f"{name}_s": round(statistics.median(r[name] for r in rounds), 4) for name in CONTENDERS},
        **{name: round(s["median"], 3) for name, s in summary.items()},
        **{f"{name}_spread": {k: round(v, 3) for k, v in s.items() if k != "median"} for name, s in summary.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="micro", choices=["nano", "micro", "mini"])
    parser.add_argument("--model", default=None,
                        help="a model directory or packaged name (e.g. smollm2-135m-instruct) instead of a tiny one")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=160)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per round and contender")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (>= 1: ShaPO's first is fresh)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; each gives one paired ratio")
    parser.add_argument("--mask", default="0.01", help="fraction of MLP neurons (random), or uniform")
    parser.add_argument("--rho", type=float, default=0.05)
    parser.add_argument("--json", action="store_true", help="print the JSON object on one line")
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be >= 1: the previous-gradient run's first step is a fresh one")
    torch.manual_seed(0)
    from robalign.models.loading import resolve_model_path
    from robalign.models.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model_dir = Path(resolve_model_path(args.model))
        else:
            model_dir = build_tiny_model(Path(tmp) / "model", size=args.size, arch="llama")
        pairs = bench_pairs(args.batch * (args.warmup + args.rounds * args.steps))
        rounds, info = time_rounds(model_dir, pairs, args)
    result = report(args, info.pop("parameters"), rounds, info, round_ratios(rounds))
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
