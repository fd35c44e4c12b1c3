"""Throughput of the ``hf`` generation backend: batched versus one prompt at a time, and the
cost of a fully cached re-run. One process, one tiny model built offline here.

    python benchmarks/generation.py --json                 # nano model (~0.8M params), 64 prompts
    python benchmarks/generation.py --size micro --prompts 32
    python benchmarks/generation.py --json --threads 1     # one intra-op thread for both loops
    python benchmarks/generation.py --json --model smollm2-135m-instruct --prompts 32 --batch-size 16

Both timed runs generate the same greedy completions of the same prompts (64 new tokens,
no early stop needed: throughput is completion tokens per second, so rows that hit eos
early are not counted as work). ``batched_over_sequential`` = batched tokens/s over
sequential tokens/s (goal >= 5 on 2 CPU cores); ``cached_over_first`` = seconds of a re-run
answered entirely from the SQLite cache over seconds of the first, uncached run through the
same ``CachedBackend`` (goal <= 0.05).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")


def bench_prompts(n: int) -> list[str]:
    """Short CLEAR-Bias-like instructions of varied length (15-40 tokens after the template)."""
    subjects = ["an older colleague", "a young intern", "a new neighbour", "a visiting engineer", "a nurse"]
    tasks = ["who fixed the printer", "who forgot the meeting", "who led the project", "who was late"]
    return [f"Question {i}: in the story about {subjects[i % 5]} and {subjects[(i + 2) % 5]}, "
            f"{tasks[i % 4]}?" + " Answer briefly." * (i % 3) for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="nano", choices=["nano", "micro"])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for both timed loops (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument("--model", default=None,
                        help="a model directory or packaged name (e.g. smollm2-135m-instruct) instead of a tiny one")
    parser.add_argument("--dtype", default="float32", help="float32 | bfloat16 (weights for generation)")
    args = parser.parse_args()

    import torch

    from robalign.evaluation.backends import GenerationRequest
    from robalign.evaluation.cache import CachedBackend, ResponseCache
    from robalign.evaluation.hf_backend import HFBackend
    from robalign.models.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(build_tiny_model(Path(tmp) / "model", size=args.size))
        backend = HFBackend(model, batch_size=args.batch_size, threads=args.threads, dtype=args.dtype)
        requests = [GenerationRequest([{"role": "user", "content": p}], max_new_tokens=args.max_new_tokens)
                    for p in bench_prompts(args.prompts)]
        backend.generate(requests[:2])  # warm-up: weights loaded, kernels initialised

        t0 = time.perf_counter()
        sequential = [backend.generate([r])[0] for r in requests]
        seq_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        batched = backend.generate(requests)
        batch_s = time.perf_counter() - t0

        cached = CachedBackend(backend, ResponseCache(Path(tmp) / "cache.sqlite"), label="bench")
        t0 = time.perf_counter()
        cached.generate(requests)
        first_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = cached.generate(requests)
        rerun_s = time.perf_counter() - t0

    seq_tokens = sum(r.completion_tokens for r in sequential)
    batch_tokens = sum(r.completion_tokens for r in batched)
    result = {
        "model": args.model or f"tiny llama {args.size} (built offline, random weights)", "dtype": args.dtype,
        "prompts": args.prompts, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
        "torch_threads": args.threads or torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),  # other processes on the machine skew both loops
        "sequential_s": round(seq_s, 3), "sequential_tokens_per_s": round(seq_tokens / seq_s, 1),
        "batched_s": round(batch_s, 3), "batched_tokens_per_s": round(batch_tokens / batch_s, 1),
        "batched_over_sequential": round((batch_tokens / batch_s) / (seq_tokens / seq_s), 2),
        "same_greedy_text": sum(a.text == b.text for a, b in zip(sequential, batched)),
        "first_run_s": round(first_s, 3), "cached_rerun_s": round(rerun_s, 4),
        "cached_over_first": round(rerun_s / first_s, 4),
        "cached_rerun_hits": sum(r.cached for r in again),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>26}: {value}")


if __name__ == "__main__":
    main()
