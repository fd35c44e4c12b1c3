"""Seconds per DPO optimizer step: robalign versus TRL's DPOTrainer, same model, same data,
same process; and the cost of robalign's ShaPO step (k = 1 and k = 5) relative to robalign DPO.

    python benchmarks/train_step.py --json            # micro model (~9M params), batch 8
    python benchmarks/train_step.py --size nano --steps 10
    python benchmarks/train_step.py --json --model smollm2-135m-instruct --batch 4 --max-length 256 \
        --data ../shared/data/pku_saferlhf_dpo/pku_seferlhf_realign_dpo_5k.json --steps 4 --warmup 1 \
        --rounds 3 --epochs 3 --no-shapo --peak-rss     # the real model (robalign models pull ...)
    python benchmarks/train_step.py --json --model smollm2-135m-instruct --batch 4 --max-length 256 --min-tokens 200 \
        --data ../shared/data/pku_saferlhf_dpo/pku_seferlhf_realign_dpo_5k.json --steps 4 --warmup 1 --rounds 3 \
        --epochs 3 --no-shapo                            # issue 8's comparison: ~256-token sequences

TRL is configured fairly for a CPU: fp32 (its DPOConfig defaults to bf16), no gradient
checkpointing (also on by default), no evaluation or saving, its default reference handling
(a reference forward every step). robalign precomputes reference log-probs once (their time
is reported separately) and runs chosen + rejected in one forward pass.
Prints one JSON object; `robalign_over_trl` < 1 means robalign is faster.

Noise. Other processes on a shared machine slow whichever step they land on (one brief burst
once read robalign_over_trl = 1.95 instead of 0.62). So every ratio is measured many times and
reported as the median with its spread (min, quartiles, max): robalign and TRL run in --rounds
alternating rounds (order swapped every round), each round giving one paired ratio; the three
ShaPO contenders run step by step in turn, each k = 5 cycle giving one paired ratio. A verdict
compares the median with its goal; a wide spread says the machine was busy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

import torch  # noqa: E402


def bench_pairs(n: int, seed: int = 0, data: str | None = None, min_tokens: int = 0, tokenizer=None):
    """Synthetic pairs lengthened to ~128 tokens (two prompts, two-sentence responses), or the
    first ``n`` pairs of a data file; with ``min_tokens``, the first ``n`` whose prompt plus
    shorter response is at least that many tokens (PKU pairs average ~80 tokens a sequence,
    so a 256-token comparison needs the long ones)."""
    from robalign.data.preference import PreferencePair, load_pairs
    from robalign.data.synthetic import synthetic_pairs

    if data and min_tokens:
        def text(x, prompt: bool = False) -> str:  # a conversation (HH-RLHF) as HH-style plain text, for both
            if isinstance(x, str):
                return x
            turns = "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in x)
            return turns + "\n\nAssistant:" if prompt else turns.split(": ", 1)[-1]

        flat = [PreferencePair(id=p.id, prompt=text(p.prompt, True), chosen=" " + text(p.chosen),
                               rejected=" " + text(p.rejected)) for p in load_pairs(data, on_invalid="skip")]
        long = [p for p in flat
                if len(tokenizer(p.prompt + min(p.chosen, p.rejected, key=len))["input_ids"]) >= min_tokens][:n]
        if len(long) < n:
            raise SystemExit(f"{data}: only {len(long)} pairs reach {min_tokens} tokens, {n} needed")
        return long
    if data:
        return load_pairs(data, limit=n)

    base = synthetic_pairs(2 * n, seed=seed)
    return [PreferencePair(id=f"b{i}", prompt=a.prompt + " " + b.prompt, chosen=a.chosen + " " + b.chosen,
                           rejected=a.rejected + " " + b.rejected)
            for i, (a, b) in enumerate(zip(base[::2], base[1::2]))]


def time_robalign(model_dir: Path, pairs, batch: int, steps: int, warmup: int, max_length: int) -> dict:
    from robalign.data.tokenize import collate_pairs, tokenize_pairs
    from robalign.models.loading import load_causal_lm, load_tokenizer
    from robalign.training.reference import compute_reference_logps
    from robalign.training.step import LossSettings, accumulate_gradients

    tok = load_tokenizer(str(model_dir))
    model = load_causal_lm(str(model_dir))
    tp = tokenize_pairs(pairs, tok, max_length, max_length // 2, prompt_format="plain").pairs
    t0 = time.perf_counter()
    reference = compute_reference_logps(model, tp, tok.pad_token_id, batch_size=32)
    ref_seconds = time.perf_counter() - t0
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    settings = LossSettings({"dpo": 1.0}, 0.1, 0.0, 0.1, False, "mean", 1.0)
    times, tokens = [], []
    for step in range(warmup + steps):
        chunk = tp[(step * batch) % len(tp):][:batch]
        t0 = time.perf_counter()
        b = collate_pairs(chunk, tok.pad_token_id)
        accumulate_gradients(model, [b], reference, settings)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= warmup:
            times.append(time.perf_counter() - t0)
            tokens.append(b.attention_mask.sum().item() / b.input_ids.shape[0])
    return {"median_s": statistics.median(times), "mean_tokens_per_sequence": statistics.mean(tokens),
            "reference_precompute_s": ref_seconds, "reference_pairs": len(tp)}


def time_shapo(model_dir: Path, pairs, batch: int, cycles: int, warmup: int, max_length: int) -> dict:
    """robalign DPO, ShaPO every step (k = 1) and every 5th step (k = 5), one step of each in turn on
    three copies of the model, so load from other processes hits all three alike. Mask: 1 % of the
    MLP neurons (random; a probe's Top-K has the same cost), ρ = 0.05. Each k = 5 cycle (one ShaPO
    step, four plain ones) gives one paired ratio of summed step times over DPO's in that cycle."""
    from robalign.data.tokenize import collate_pairs, tokenize_pairs
    from robalign.models.loading import load_causal_lm, load_tokenizer
    from robalign.training.reference import compute_reference_logps
    from robalign.training.shapo import shapo_due, shapo_step
    from robalign.training.step import LossSettings, accumulate_gradients
    from robalign.training.subspace import build_mask, resolve_parameter_mask

    tok = load_tokenizer(str(model_dir))
    tp = tokenize_pairs(pairs, tok, max_length, max_length // 2, prompt_format="plain").pairs
    settings = LossSettings({"dpo": 1.0}, 0.1, 0.0, 0.1, False, "mean", 1.0)
    runs = {}
    for name, interval in (("dpo", None), ("shapo_k1", 1), ("shapo_k5", 5)):
        model = load_causal_lm(str(model_dir)).train()
        mask = resolve_parameter_mask(model, build_mask(model, 0.01, "random", seed=0)) if interval else None
        runs[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-5), interval, mask, [])
    reference = compute_reference_logps(runs["dpo"][0], tp, tok.pad_token_id, batch_size=32)
    timed = 5 * cycles  # whole k = 5 cycles
    for step in range(warmup + timed):
        b = collate_pairs(tp[(step * batch) % len(tp):][:batch], tok.pad_token_id)
        for model, opt, interval, mask, times in runs.values():
            t0 = time.perf_counter()
            if interval and shapo_due(step, interval):
                shapo_step(model, [b], reference, settings, mask, 0.05)
            else:
                accumulate_gradients(model, [b], reference, settings)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step >= warmup:
                times.append(time.perf_counter() - t0)
    seconds = {name: run[4] for name, run in runs.items()}
    n_params = sum(p.numel() for p in runs["dpo"][0].parameters())
    return {"shapo_dpo_s": statistics.median(seconds["dpo"]), "shapo_k1_s": statistics.median(seconds["shapo_k1"]),
            "shapo_k5_per_step_s": statistics.median(cycle_sums(seconds["shapo_k5"], 5)) / 5,
            "shapo_k1_over_dpo": cycle_ratios(seconds["shapo_k1"], seconds["dpo"], 5),
            "shapo_k5_over_dpo": cycle_ratios(seconds["shapo_k5"], seconds["dpo"], 5),
            "shapo_mask_share": runs["shapo_k1"][3].numel / n_params, "shapo_steps_timed": timed}


def cycle_sums(times: list[float], cycle: int) -> list[float]:
    """Summed step times of each whole cycle: (len(times) // cycle,)."""
    return [sum(times[i : i + cycle]) for i in range(0, len(times) - cycle + 1, cycle)]


def cycle_ratios(times: list[float], baseline: list[float], cycle: int) -> list[float]:
    """One paired ratio per cycle: Σ times / Σ baseline over the same steps."""
    return [a / b for a, b in zip(cycle_sums(times, cycle), cycle_sums(baseline, cycle))]


def spread(values: list[float]) -> dict[str, float]:
    """median, min, quartiles (q1, q3: statistics.quantiles, inclusive) and max of ≥ 1 values."""
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return {"median": statistics.median(values), "min": min(values), "q1": q1, "q3": q3, "max": max(values)}


def round_ratios(ours: list[dict], trl: list[dict], batch: int, epochs: int = 1) -> dict[str, list[float]]:
    """Per alternating round, robalign's median step over TRL's, without and with the one-off
    reference pass spread over ``epochs`` epochs of the benchmark pairs (later epochs reuse it)."""
    plain, with_ref = [], []
    for o, t in zip(ours, trl):
        plain.append(o["median_s"] / t["median_s"])
        per_step = o["reference_precompute_s"] * batch / (o["reference_pairs"] * epochs)
        with_ref.append((o["median_s"] + per_step) / t["median_s"])
    return {"robalign_over_trl": plain, "robalign_incl_reference_over_trl": with_ref}


def time_trl(model_dir: Path, pairs, batch: int, steps: int, warmup: int, max_length: int) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self._t = [], 0.0

        def on_step_begin(self, args, state, control, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self._t)

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ds = Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs])
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(output_dir=tmp, per_device_train_batch_size=batch, max_steps=warmup + steps,
                         learning_rate=1e-5, bf16=False, gradient_checkpointing=False, use_cpu=True,
                         report_to=[], logging_steps=10_000, save_strategy="no", max_length=max_length,
                         beta=0.1, loss_type=["sigmoid"], dataloader_num_workers=0, disable_tqdm=True)
        trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[timer])
        with contextlib.redirect_stdout(sys.stderr):  # Trainer prints a metrics dict; stdout is for our JSON
            trainer.train()
    return {"median_s": statistics.median(timer.times[warmup:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="micro", choices=["nano", "micro", "mini"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per round and contender")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=7,
                        help="alternating robalign/TRL rounds, and ShaPO k = 5 cycles; each gives one ratio")
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--model", default=None,
                        help="a model directory or packaged name (e.g. smollm2-135m-instruct) instead of a tiny one")
    parser.add_argument("--data", default=None, help="preference pairs file instead of synthetic pairs")
    parser.add_argument("--min-tokens", type=int, default=0,
                        help="with --data: only pairs whose prompt + shorter response has at least this many tokens")
    parser.add_argument("--epochs", type=int, default=1, help="epochs the reference pass is amortised over")
    parser.add_argument("--no-shapo", action="store_true", help="skip the ShaPO timings")
    parser.add_argument("--peak-rss", action="store_true",
                        help="also run one robalign round in a child process and report its peak RSS")
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.manual_seed(0)
    from robalign.models.loading import resolve_model_path
    from robalign.models.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model_dir = Path(resolve_model_path(args.model))
            n_params = None
        else:
            model_dir = build_tiny_model(Path(tmp) / "model", size=args.size, arch="llama")
            n_params = json.loads((model_dir / "robalign_tiny.json").read_text())["parameters"]
        tokenizer = None
        if args.min_tokens:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model_dir)
        pairs = bench_pairs(args.batch * (args.steps + args.warmup), data=args.data, min_tokens=args.min_tokens,
                            tokenizer=tokenizer)
        timing = (model_dir, pairs, args.batch, args.steps, args.warmup, args.max_length)
        if args.rss_child:  # one robalign round, for the parent's peak-RSS reading
            time_robalign(*timing)
            return
        if n_params is None:
            from robalign.models.loading import load_causal_lm

            n_params = sum(p.numel() for p in load_causal_lm(str(model_dir)).parameters())
        ours_rounds, trl_rounds = [], []
        for r in range(args.rounds):  # who goes first alternates, so a slow spell hits both sides alike
            for side in (("robalign", "trl") if r % 2 == 0 else ("trl", "robalign")):
                if side == "robalign":
                    ours_rounds.append(time_robalign(*timing))
                else:
                    with contextlib.suppress(ImportError):
                        trl_rounds.append(time_trl(*timing))
        shapo = {} if args.no_shapo else time_shapo(model_dir, pairs, args.batch, args.rounds, args.warmup,
                                                        args.max_length)
    ratios = round_ratios(ours_rounds, trl_rounds, args.batch, args.epochs) if trl_rounds else {}
    ratios |= {k: shapo.pop(k) for k in ("shapo_k1_over_dpo", "shapo_k5_over_dpo") if k in shapo}
    goals = {"robalign_over_trl": 0.8, "shapo_k1_over_dpo": 2.0, "shapo_k5_over_dpo": 1.25}
    summary = {name: spread(values) for name, values in ratios.items()}
    result = report(args, n_params, ours_rounds, trl_rounds, shapo, summary, goals)
    if args.peak_rss:
        result["robalign_dpo_peak_rss_gb"] = child_peak_rss_gb()
    print(json.dumps(result, indent=None if args.json else 2))


def child_peak_rss_gb() -> float:
    """Peak resident memory of a child process running one robalign round of this benchmark
    (model, reference pass, optimizer state, steps): ru_maxrss of the waited-for children, in GB."""
    import resource
    import subprocess

    argv = [a for a in sys.argv[1:] if a not in ("--peak-rss", "--json")]
    subprocess.run([sys.executable, __file__, *argv, "--rss-child"], check=True, stdout=subprocess.DEVNULL)
    return round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2, 2)  # KiB on Linux


def report(args, n_params: int, ours: list[dict], trl: list[dict], shapo: dict, summary: dict, goals: dict) -> dict:
    """The JSON object: medians under the old key names, each ratio's spread, and the verdicts."""
    def r4(x):
        return round(x, 4) if isinstance(x, float) else x

    median = {name: s["median"] for name, s in summary.items()}
    return {
        "benchmark": "train_step", "model": args.model or f"tiny llama {args.size}", "parameters": n_params,
        "data": args.data or "synthetic", "reference_amortised_over_epochs": args.epochs,
        "batch_pairs": args.batch, "max_length": args.max_length, "min_tokens": getattr(args, "min_tokens", 0),
        "mean_tokens_per_sequence": round(statistics.mean(o["mean_tokens_per_sequence"] for o in ours), 1),
        "threads": torch.get_num_threads(), "device": "cpu", "steps_timed": args.steps, "rounds": args.rounds,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "robalign_dpo_s": r4(statistics.median(o["median_s"] for o in ours)),
        "robalign_reference_precompute_s": round(statistics.median(o["reference_precompute_s"] for o in ours), 3),
        "trl_dpo_s": r4(statistics.median(t["median_s"] for t in trl)) if trl else None,
        **{name: round(value, 3) for name, value in median.items()},
        **{f"{name}_spread": {k: round(v, 3) for k, v in s.items() if k != "median"} for name, s in summary.items()},
        **{k: r4(v) for k, v in shapo.items()},
        **{f"goal_{name}": goal for name, goal in goals.items()},
        "goal_met": {name: median[name] <= goal for name, goal in goals.items() if name in median},
    }


if __name__ == "__main__":
    main()
