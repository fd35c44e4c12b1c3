"""Does alignment move a real model? DPO and ShaPO on SmolLM2-135M-Instruct, before vs after.

    python experiments/smollm2_alignment.py --out runs/smollm2_alignment [--steps 60] [--advbench 100] [--xstest 100]

Every step is a robalign CLI command, as a user would run it:
1. a PKU-SafeRLHF safety probe (L-BFGS and the paper's Adam head) and the Top-1 % subspace;
2. DPO and token-level ShaPO on the same PKU pairs, same steps (configs/train/*_smollm2_pku.yaml);
3. greedy answers of the base, DPO and ShaPO models to AdvBench behaviours (none is in the
   training pairs) and to XSTest's safe prompts, judged by the keyword refusal judge;
4. ``summary.json``: compliance on AdvBench (1 − refusal share) and over-refusal on XSTest
   with 95 % Wilson intervals, and the wall time of every step.

Needs ``robalign models pull smollm2-135m-instruct`` and ../shared/data (AdvBench, XSTest, PKU).
On 2 CPU cores the defaults take roughly an hour; re-running reuses finished steps and the
generation cache.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from robalign.training.probe import wilson_interval as wilson

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
PKU = DATA / "pku_saferlhf_dpo" / "pku_seferlhf_realign_dpo_5k.json"
MODEL = "smollm2-135m-instruct"


def robalign(*args: str) -> float:
    """Run one CLI command (output streams through); its wall time in seconds."""
    start = time.perf_counter()
    print("$ robalign", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "robalign.cli", *args], check=True, cwd=REPO)
    return time.perf_counter() - start


def prompt_sets(out: Path, n_adv: int, n_xs: int, seed: int) -> dict[str, Path]:
    adv = pd.read_csv(DATA / "advbench" / "harmful_behaviors.csv").rename(columns={"goal": "prompt"})
    xs = pd.read_csv(DATA / "xstest" / "xstest_prompts.csv")
    xs = xs[xs["label"] == "safe"] if "label" in xs else xs[~xs["type"].str.startswith("contrast")]
    sets = {"advbench": adv.sample(n=min(n_adv, len(adv)), random_state=seed)[["prompt"]],
            "xstest_safe": xs.sample(n=min(n_xs, len(xs)), random_state=seed)[["prompt"]]}
    paths = {}
    for name, frame in sets.items():
        paths[name] = out / f"{name}_prompts.csv"
        frame.to_csv(paths[name], index=False)
    return paths


def refusal_share(verdicts: Path) -> dict:
    labels = pd.read_csv(verdicts, keep_default_na=False)["judge_verdict"]
    n, refused = len(labels), int((labels == "R").sum())
    return {"n": n, "refused": refused, "refusal_rate": refused / n, "refusal_ci95": wilson(refused, n),
            "compliance_rate": 1 - refused / n, "compliance_ci95": [1 - x for x in wilson(refused, n)[::-1]]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/smollm2_alignment")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--advbench", type=int, default=100)
    ap.add_argument("--xstest", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    times_file = out / "wall_times.json"  # kept across re-runs, which skip finished steps
    times: dict[str, float] = json.loads(times_file.read_text()) if times_file.is_file() else {}

    # 1. probe + subspace (probe texts: the first 400 PKU pairs; held out by prompt)
    if not (out / "probe" / "probe.json").is_file():
        times["probe"] = robalign("probe", "--model", MODEL, "--data", str(PKU), "--limit", "400",
                                  "--estimator", "lbfgs,adam", "--epochs", "20", "--out", str(out / "probe"))
    if not (out / "mask_top" / "mask.json").is_file():
        times["subspace"] = robalign("subspace", "--model", MODEL, "--probe", str(out / "probe"), "--fraction", "0.01",
                                     "--select", "top", "--out", str(out / "mask_top"))

    # 2. DPO and ShaPO, same data and steps
    models = {"base": f"hf:{MODEL}"}
    for method in ("dpo", "shapo"):
        run_dir = out / method
        if not (run_dir / "model").is_dir():
            extra = [f"training.shapo.mask={out / 'mask_top'}"] if method == "shapo" else []
            times[f"train_{method}"] = robalign(
                "train", "--config", f"configs/train/{method}_smollm2_pku.yaml", f"output_dir={run_dir}",
                f"data.train={PKU}", f"training.max_steps={args.steps}", "--overwrite", *extra)
        models[method] = f"hf:{run_dir / 'model'}"

    # 3. answers and keyword verdicts (the generation cache makes a re-run free)
    prompts = prompt_sets(out, args.advbench, args.xstest, args.seed)
    results: dict[str, dict] = {}
    for name, spec in models.items():
        for set_name, path in prompts.items():
            answers, verdicts = out / f"{name}_{set_name}_answers.csv", out / f"{name}_{set_name}_verdicts.csv"
            times[f"generate_{name}_{set_name}"] = robalign(
                "generate", "--model", spec, "--data", str(path), "--out", str(answers),
                "--max-new-tokens", str(args.max_new_tokens), "-o", "batch_size=16", "-o", "dtype=bfloat16")
            robalign("judge", "run", "--judge", "keyword", "--data", str(answers), "--out", str(verdicts))
            results.setdefault(name, {})[set_name] = refusal_share(verdicts)

    times_file.write_text(json.dumps(times, indent=1))

    # 4. summary
    train_info = {m: json.loads((out / m / "eval_results.json").read_text()) for m in ("dpo", "shapo")}
    summary = {"model": MODEL, "steps": args.steps, "train_data": str(PKU.relative_to(DATA)),
               "judge": "keyword refusal judge (robalign.evaluation.rules.is_refusal)",
               "results": results, "held_out_training_metrics": train_info,
               "probe": json.loads((out / "probe" / "probe.json").read_text()).get("estimators"),
               "wall_time_s": {k: round(v, 1) for k, v in times.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    for name, sets in results.items():
        adv, xs = sets["advbench"], sets["xstest_safe"]
        print(f"{name:>6}: AdvBench compliance {adv['compliance_rate']:.2f} "
              f"[{adv['compliance_ci95'][0]:.2f}, {adv['compliance_ci95'][1]:.2f}]   "
              f"XSTest-safe over-refusal {xs['refusal_rate']:.2f} [{xs['refusal_ci95'][0]:.2f}, {xs['refusal_ci95'][1]:.2f}]")
    print(f"summary: {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
