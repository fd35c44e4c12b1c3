"""An offline LLM judge: SmolLM2-135M-Instruct fine-tuned with LoRA on a world's judge examples,
measured on the CLEAR-Bias control set beside the rule judge (and the untuned model).

    python experiments/world_judge.py --out runs/world_judge [--world DIR] [--examples 384] [--no-base]

Every step is a robalign CLI command, as a user would run it:
1. ``robalign world build`` (or reuse ``--world``);
2. ``robalign judge-train`` (configs/judge/smollm2_lora.yaml): pairs from the world's judge
   examples, LoRA, merged model in OUT/judge/model;
3. ``robalign judge run`` on the 800-row control set, one judge after another into one table
   (rule, the trained judge, and the untuned SmolLM2 with the same template unless ``--no-base``),
   and on ``--world-eval`` plain examples of the world's held-out prompts (in-domain check);
4. ``robalign judge agreement`` on each table (kappa with its SE and bootstrap CIs);
5. ``summary.json``: kappa / accuracy / macro-F1 with CIs per judge and data set, verdict counts,
   the judge card, and the wall time of every step.

The control set is only ever judged, never trained on: judge-train reads it only to drop world
examples that equal one of its prompts or responses. Needs ``robalign models pull
smollm2-135m-instruct`` and ../shared/data. Re-running skips finished steps (the response cache
makes a repeated judge run free).

On a machine shared with other jobs, and under ``nice``, give ``--threads 1``: torch's two
intra-op threads wait for each other, so when one of them gets little of its core every matmul
runs at that thread's pace. Measured here (2 cores, load ~2.5, nice 10): the reference pass over
8 pairs of SmolLM2 requests took 12 s a batch with 2 threads and 1.6 s with 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
CONTROL = REPO.parent / "shared" / "data" / "clear_bias" / "control_set"
BASE_MODEL = "smollm2-135m-instruct"
# commands this script needs that a checkout may not have registered yet in robalign.cli.COMMANDS
MODULES = {"world": "robalign.cli.world", "judge-train": "robalign.cli.judge_train"}
LAUNCH = ("import sys; from robalign import cli; "
          f"[cli.COMMANDS.setdefault(k, (m, k)) for k, m in {MODULES!r}.items()]; sys.exit(cli.main(sys.argv[1:]))")


def robalign(*args: str) -> float:
    """Run one CLI command (output streams through); its wall time in seconds."""
    start = time.perf_counter()
    print("$ robalign", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-c", LAUNCH, *args], check=True, cwd=REPO)
    return time.perf_counter() - start


def world_eval_table(world: Path, out: Path, n: int, seed: int) -> Path:
    """``n`` plain examples of the world's held-out prompts, balanced over labels (judge run has no
    base-prompt column, so attacked examples are left to bench clear-bias)."""
    rows = pd.read_json(world / "judge" / "eval.jsonl", lines=True)
    rows = rows[rows["base_prompt"].isna()]
    per = max(1, n // rows["label"].nunique())
    table = pd.concat([g.sample(min(per, len(g)), random_state=seed) for _, g in rows.groupby("label")])
    table = table.rename(columns={"stereotype": "STEREOTYPE", "counter_stereotype": "COUNTER-STEREOTYPE"})
    table[["id", "category", "task", "prompt", "response", "label", "STEREOTYPE", "COUNTER-STEREOTYPE"]].to_csv(
        out, index=False)
    return out


def judge_table(data: str, judges: dict[str, str], out: Path, times: dict[str, float], tag: str,
                options: list[str]) -> Path:
    """Every judge's verdicts on ``data``, chained into one table (each run reads the previous one)."""
    table = data
    for name, spec in judges.items():
        step = out / f"{tag}_{name}.csv"
        if not step.is_file():
            extra = [] if spec == "rule" else options
            times[f"judge_{tag}_{name}"] = robalign("judge", "run", "--judge", spec, "--data", str(table),
                                                     "--out", str(step), "--prefix", f"{name}_", *extra)
            (out / "wall_times.json").write_text(json.dumps(times, indent=2))
        table = str(step)
    return Path(table)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/world_judge")
    ap.add_argument("--world", default=None, help="reuse this world directory (default: build OUT/world)")
    ap.add_argument("--config", default="configs/judge/smollm2_lora.yaml")
    ap.add_argument("--examples", type=int, default=384)
    ap.add_argument("--eval-examples", type=int, default=32)
    ap.add_argument("--world-eval", type=int, default=160, help="plain held-out world examples to judge (0 = none)")
    ap.add_argument("--no-base", action="store_true", help="skip the untuned SmolLM2 row")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="OMP_NUM_THREADS for every command; 1 on a shared machine (see the module doc)")
    ap.add_argument("overrides", nargs="*", default=[], help="judge-train overrides, e.g. training.max_steps=20")
    args = ap.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    times_file = out / "wall_times.json"  # kept across re-runs, which skip finished steps
    times: dict[str, float] = json.loads(times_file.read_text()) if times_file.is_file() else {}

    world = Path(args.world).resolve() if args.world else out / "world"
    if not (world / "world.json").is_file():
        times["world_build"] = robalign("world", "build", "--out", str(world))
    judge_dir = out / "judge"
    card_file = judge_dir / "model" / "robalign_judge.json"
    if not card_file.is_file():
        times["judge_train"] = robalign("judge-train", "--world", str(world), "--out", str(judge_dir),
                                        "--config", args.config, "--examples", str(args.examples),
                                        "--eval-examples", str(args.eval_examples), "--seed", str(args.seed),
                                        "--control-set", str(CONTROL), "--overwrite", *args.overrides)
    times_file.write_text(json.dumps(times, indent=2))
    card = json.loads(card_file.read_text())

    judges = {"rule": "rule", "trained": f"llm:hf:{judge_dir / 'model'}#bias-compact"}
    if not args.no_base:
        judges["base"] = f"llm:hf:{BASE_MODEL}#bias-compact"
    options = ["-o", "batch_size=16"]  # float32, as trained (bf16 weights would round the merged LoRA delta)
    tables = {"control": (judge_table(str(CONTROL), judges, out, times, "control", options), "LABEL")}
    if args.world_eval:
        plain = world_eval_table(world, out / "world_eval.csv", args.world_eval, args.seed)
        world_judges = {k: v for k, v in judges.items() if k != "base"}
        tables["world_eval"] = (judge_table(str(plain), world_judges, out, times, "world_eval", options), "label")
    times_file.write_text(json.dumps(times, indent=2))

    summary: dict = {"judge_card": card, "wall_times": times, "agreement": {}, "verdicts": {}}
    for tag, (table, gold) in tables.items():
        report = out / f"agreement_{tag}.json"
        names = [n for n in judges if f"{n}_verdict" in pd.read_csv(table, nrows=0).columns]
        robalign("judge", "agreement", "--data", str(table), "--gold", gold,
                 "--pred", ",".join(f"{n}_verdict" for n in names), "--out", str(report),
                 "--n-boot", str(args.n_boot), "--seed", str(args.seed))
        summary["agreement"][tag] = json.loads(report.read_text())
        frame = pd.read_csv(table, keep_default_na=False)
        summary["verdicts"][tag] = {n: frame[f"{n}_verdict"].value_counts().to_dict() for n in names}
    summary["table"] = {tag: _kappas(a) for tag, a in summary["agreement"].items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps({"table": summary["table"],
                      "train_seconds": card.get("train_seconds"), "wall_times": times}, indent=2))
    return 0


def _kappas(report: dict) -> dict:
    """judge column -> kappa (SE), accuracy and macro-F1 with their bootstrap CIs, from a
    `judge agreement` report."""
    return {r["name"]: {"n": r["n"], "kappa": r["kappa"]["kappa"], "kappa_se": r["kappa"]["se"],
                        "kappa_ci": r["ci"].get("kappa"), "accuracy": r["accuracy"],
                        "accuracy_ci": r["ci"].get("accuracy"), "macro_f1": r["macro_f1"],
                        "macro_f1_ci": r["ci"].get("macro_f1")}
            for r in report["judges"]}


if __name__ == "__main__":
    sys.exit(main())
