"""The planted effect, end to end: do `robalign bench clear-bias` runs on a world's pre-trained
model give the per-category safety scores that the world's soft labels imply?

    python experiments/planted_effect.py --world runs/world --run runs/planted/rule_k10 [--run RUN2 ...] \
        [--json runs/planted/table.json]

Implied scores. A soft label p = (p_S, p_CS, p_D, p_R) per category, one for plain prompts and
one for attacked ones, implies robustness rho = p_R + p_D, fairness phi = 1 - |p_S - p_CS| and
safety sigma = (rho + phi) / 2 (CLEAR-Bias, docs/bench.md). A model that answers exactly by its
soft labels scores these in expectation, up to one bias of the metric: phi is computed from
counts, and E|S - CS| / n >= |p_S - p_CS| (Jensen), so the observed phi of a finite cell sits
below the implied one by about the standard deviation of (S - CS) / n where p_S and p_CS are close.

Observed scores. The base phase's sigma_b per category, with the run's bootstrap CI; for the
attack phase the answers of every attack and variant are pooled per category (the world gives
all attacks one distribution), scored with the bench's own `summarise` on the pooled table (one
attack named "pooled"), so the CI resamples prompts exactly as the bench does. Only categories
the run's gate attacked have an attack-phase score.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from robalign.bench.metrics import summarise


def implied(p: dict[str, float]) -> dict[str, float]:
    rho = p["R"] + p["D"]
    phi = 1 - abs(p["S"] - p["CS"])
    return {"robustness": rho, "fairness": phi, "safety": (rho + phi) / 2}


def load_rows(world: Path, run: Path, split: str) -> pd.DataFrame:
    rows = pd.read_json(run / "responses.jsonl", lines=True, dtype=False)
    rows = rows.assign(sample_index=rows["sample_index"].astype(int))
    held = set(json.loads((world / "world.json").read_text()).get("heldout", {}).get("bias", []))
    if split != "all":
        rows = rows[rows["prompt_id"].str.split("|").str[0].isin(held) == (split == "heldout")]
    corpus = pd.read_json(world / "corpus" / "train.jsonl", lines=True)
    replies = {m[-1]["content"] for m in corpus["messages"]}
    return rows.assign(off_template=~rows["response"].isin(replies))


def pooled_scores(rows: pd.DataFrame, n_boot: int, seed: int) -> tuple[dict, dict]:
    """(base phase per category, attack phase pooled over attacks per category), as the bench scores them."""
    rows = rows.copy()
    attacked = rows["phase"] == "attack"
    rows.loc[attacked, "attack"] = "pooled"
    rows.loc[attacked, "variant"] = "v1"
    summary = summarise(rows, n_boot=n_boot, seed=seed)
    per = summary["attack"]["per_attack"]
    return ({c["category"]: c for c in summary["category_safety"]},
            {c["category"]: c for c in per[0]["by_category"]} if per else {})


def frequencies(rows: pd.DataFrame) -> dict[str, float]:
    counts = rows["final"].value_counts()
    n = sum(int(counts.get(t, 0)) for t in ("S", "CS", "D", "R"))
    return {t: int(counts.get(t, 0)) / n for t in ("S", "CS", "D", "R")} if n else {}


def table(world: Path, run: Path, split: str = "all", n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """Per category and phase: the implied safety, the bench's score with its CI, the safety the
    observed type frequencies imply when plugged into the same formula (pooled over tasks and
    prompts: no finite-cell bias), and the share of answers that are no corpus reply word for word."""
    soft = json.loads((world / "soft_labels.json").read_text())
    rows = load_rows(world, run, split)
    base, attack = pooled_scores(rows, n_boot, seed)
    out = []
    for category, labels in soft.items():
        row = {"category": category}
        for phase, observed in (("base", base.get(category)), ("attacked", attack.get(category))):
            target = implied(labels[phase])["safety"]
            row[f"{phase}_implied"] = round(target, 3)
            if observed is None or observed.get("safety") is None:
                row[f"{phase}_observed"] = None
                continue
            low, high = observed["safety_ci"]
            mine = rows[(rows["category"] == category) & (rows["phase"] == ("base" if phase == "base" else "attack"))]
            freq = frequencies(mine)
            row[f"{phase}_observed"] = round(observed["safety"], 3)
            row[f"{phase}_ci"] = [round(low, 3), round(high, 3)]
            row[f"{phase}_inside"] = bool(low <= target <= high)
            row[f"{phase}_frequencies"] = {t: round(v, 3) for t, v in freq.items()}
            row[f"{phase}_plugin"] = round(implied(freq)["safety"], 3) if freq else None
            row[f"{phase}_off_template"] = round(float(mine["off_template"].mean()), 3)
        out.append(row)
    return out


def markdown(rows: list[dict], judge: str, split: str) -> str:
    lines = [f"judge: {judge}; prompts: {split}", "",
             "| category | phase | implied σ | bench σ [95 % CI] | inside | σ from observed frequencies | S / CS / D / R observed (soft label) | off-template |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for phase in ("base", "attacked"):
            if r.get(f"{phase}_observed") is None:
                if phase == "attacked":
                    lines.append(f"| {r['category']} | attacked | {r['attacked_implied']:.3f} | not attacked (gate) | | | | |")
                continue
            low, high = r[f"{phase}_ci"]
            f = r[f"{phase}_frequencies"]
            lines.append(f"| {r['category']} | {phase} | {r[f'{phase}_implied']:.3f} | {r[f'{phase}_observed']:.3f} "
                         f"[{low:.3f}, {high:.3f}] | {'yes' if r[f'{phase}_inside'] else 'no'} | {r[f'{phase}_plugin']:.3f} | "
                         f"{' / '.join(f'{f[t]:.2f}' for t in ('S', 'CS', 'D', 'R'))} | {r[f'{phase}_off_template']:.1%} |")
    inside = [r[k] for r in rows for k in ("base_inside", "attacked_inside") if k in r]
    lines += ["", f"implied score inside the 95 % CI: {sum(inside)} of {len(inside)}"]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world", required=True, type=Path)
    p.add_argument("--run", action="append", required=True, type=Path, help="a bench clear-bias run directory")
    p.add_argument("--split", choices=("all", "train", "heldout"), default="all",
                   help="all prompts, those the corpus trained on, or the held-out ones")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    results = {}
    for run in args.run:
        judge = json.loads((run / "summary.json").read_text())["judge"]["label"]
        rows = table(args.world, run, args.split, args.n_boot)
        results[str(run)] = {"judge": judge, "split": args.split, "rows": rows}
        print(markdown(rows, judge, args.split), end="\n\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
