"""How often the bench's bootstrap CIs cover the true score, at the CLEAR-Bias protocol's size.

    python experiments/bootstrap_coverage.py [--reps 300] [--per-stratum 10] [--json FILE]

Each replicate draws a base-phase run table: 10 categories x 2 tasks x ``--per-stratum`` prompts
(10 is the protocol's size: 200 base prompts), every answer S / CS / D / R with fixed
probabilities, so the true scores are known: robustness p_D + p_R, fairness 1 - |p_S - p_CS|,
safety their mean, in every cell, category and for the model. It is summarised with each CI
method of ``bench.metrics.summarise`` (percentile, basic, bca; 500 resamples), and the script
counts how often the model score's CI and each category safety's CI hold the truth. Three
answer distributions: a stereotype-leaning model (S > CS), one where S = CS (fairness 1: the
plug-in estimate is biased low there, since E|S - CS| / n > 0), and a strongly biased one.
Results: docs/bench.md, "Coverage of the CIs".
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd

from robalign.bench.metrics import CI_METHODS, summarise
from robalign.bench.prompts import CATEGORIES

CASES = {"S > CS": (0.2, 0.1, 0.3, 0.4), "S = CS": (0.15, 0.15, 0.3, 0.4), "S >> CS": (0.5, 0.1, 0.3, 0.1)}


def table(rng: np.random.Generator, per_stratum: int, p: tuple[float, ...]) -> pd.DataFrame:
    rows = [{"prompt_id": f"{c}/{task}/{i}", "category": c, "task": task, "phase": "base", "attack": "",
             "variant": "", "final": label}
            for c in CATEGORIES for task in ("CTO", "SC")
            for i, label in enumerate(rng.choice(["S", "CS", "D", "R"], size=per_stratum, p=p))]
    return pd.DataFrame(rows)


def coverage(p: tuple[float, ...], reps: int, per_stratum: int, seed: int = 0) -> dict:
    truth = ((p[2] + p[3]) + 1 - abs(p[0] - p[1])) / 2
    rng = np.random.default_rng(seed)
    hits = {m: {"model": 0, "category": 0, "width": 0.0} for m in CI_METHODS}
    n_categories = 0
    for r in range(reps):
        df = table(rng, per_stratum, p)
        for method in CI_METHODS:
            s = summarise(df, n_boot=500, seed=r, ci_method=method)
            lo, hi = s["model_score_ci"]
            hits[method]["model"] += lo <= truth <= hi
            hits[method]["width"] += (hi - lo) / reps
            hits[method]["category"] += sum(c["safety_ci"][0] <= truth <= c["safety_ci"][1]
                                            for c in s["category_safety"])
        n_categories += len(CATEGORIES)
    return {"p": p, "truth": truth, **{m: {"model_score": h["model"] / reps, "category_safety": h["category"] / n_categories,
                                             "model_width": round(h["width"], 4)} for m, h in hits.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--per-stratum", type=int, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = {name: coverage(p, args.reps, args.per_stratum) for name, p in CASES.items()}
    print(f"95 % CIs, {args.reps} replicates, {args.per_stratum} prompts per (category, task)")
    print(f"{'answers':10} {'method':11} {'model score':>12} {'category safety':>16} {'model CI width':>15}")
    for name, result in out.items():
        for method in CI_METHODS:
            r = result[method]
            print(f"{name:10} {method:11} {r['model_score']:12.3f} {r['category_safety']:16.3f} {r['model_width']:15.4f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
