"""robalign judge-train --world DIR --out RUN [--config configs/judge/smollm2_lora.yaml] [key=value ...]

  robalign judge-train --world runs/world --out runs/judge/smollm2
  robalign judge run --judge llm:hf:runs/judge/smollm2/model#bias-compact \\
      --data ../shared/data/clear_bias/control_set --out runs/judge/smollm2_control.csv

Fine-tunes a small instruct model (LoRA, ``robalign train``) into a CLEAR-Bias judge on the
world's judge examples (robalign.world.judge): RUN/data/{train,eval}.jsonl are the pairs,
RUN/model the merged model with its tokenizer and chat template, RUN/model/robalign_judge.json
the judge card (spec, template version, world, pairs, wall time). Dotted overrides go to the
training config; output_dir, data.train and data.eval are set here.
"""

from __future__ import annotations

from pathlib import Path

CONTROL_SET = Path("..") / "shared" / "data" / "clear_bias" / "control_set"  # the checkout's layout
SET_HERE = ("output_dir", "data.train", "data.eval")


def add_arguments(p) -> None:
    p.add_argument("--world", required=True, help="a world directory (`robalign world build`)")
    p.add_argument("--out", required=True, help="run directory: data/, model/ (the judge), run_info.json")
    p.add_argument("--config", default="configs/judge/smollm2_lora.yaml",
                   help="training YAML (default configs/judge/smollm2_lora.yaml: SmolLM2-135M-Instruct, LoRA)")
    p.add_argument("--examples", type=int, default=384, help="training examples, balanced over S / CS / D / R")
    p.add_argument("--eval-examples", type=int, default=32, help="held-out-prompt examples for the trainer's eval")
    p.add_argument("--attacked-share", type=float, default=0.125, help="share of examples on attacked prompts")
    p.add_argument("--template", default="bias-compact", help="judge template the requests are rendered with")
    p.add_argument("--seed", type=int, default=0, help="example selection and rejected verdicts")
    p.add_argument("--control-set", default=None, metavar="DIR",
                   help="drop examples equal to a control-set prompt or response "
                        f"(default {CONTROL_SET} when it exists; 'none' = no check)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="training overrides, e.g. training.max_steps=40 model.name_or_path=DIR")


def run(args) -> int:
    import json
    import time

    from robalign.config import TrainConfig, load_config, validate_train_config
    from robalign.errors import UserError
    from robalign.training.trainer import train
    from robalign.world.judge import judge_spec, write_judge_card, write_judge_data

    taken = [o for o in args.overrides if o.split("=", 1)[0] in SET_HERE]
    if taken:
        raise UserError(f"judge-train sets {', '.join(SET_HERE)} itself (--out, the world's pairs); drop {taken[0]}")
    out = Path(args.out)
    _clear_run_dir(out, args.overwrite)
    control = args.control_set or (str(CONTROL_SET) if CONTROL_SET.is_dir() else None)
    control = None if control == "none" else str(Path(control).resolve())
    config = load_config(TrainConfig, args.config, args.overrides)

    start = time.perf_counter()
    data = write_judge_data(args.world, out / "data", examples=args.examples, eval_examples=args.eval_examples,
                            attacked_share=args.attacked_share, template=args.template, seed=args.seed,
                            control_set=control)
    config.output_dir, config.data.train, config.training.save_model = str(out), str(data.train), True
    config.data.eval = str(data.eval) if data.counts["eval"]["pairs"] else None
    validate_train_config(config)
    result = train(config)
    seconds = time.perf_counter() - start

    model = out / "model"
    info = json.loads((out / "run_info.json").read_text(encoding="utf-8"))
    card = write_judge_card(model, data, base_model=config.model.name_or_path, steps=result.steps,
                            pairs_trained=info.get("train_pairs"), pairs_skipped_long=len(info.get("skipped_ids", [])),
                            train_seconds=round(seconds, 1), eval_metrics=result.eval_metrics,
                            lora={"r": config.lora.r, "alpha": config.lora.alpha,
                                  "target_modules": config.lora.target_modules},
                            losses=config.loss.losses)
    print(json.dumps({"judge": judge_spec(model, args.template), "steps": result.steps,
                      "train_seconds": round(seconds, 1), "pairs": data.counts,
                      "dropped_overlap": data.dropped_overlap, "card": str(card),
                      "eval": {k: v for k, v in result.eval_metrics.items() if "rewards/" in k}}, indent=2))
    return 0


def _clear_run_dir(out: Path, overwrite: bool) -> None:
    """Refuse to write into a directory that holds something else; empty a run's with --overwrite."""
    import shutil

    from robalign.errors import UserError

    if not out.exists() or not any(out.iterdir()):
        return
    ours = (out / "run_info.json").exists() or {p.name for p in out.iterdir()} <= {"data"}  # data: a run cut short
    if not ours:
        raise UserError(f"--out {out} is a non-empty directory that holds no run; choose a new or empty directory")
    if not overwrite:
        raise UserError(f"--out {out} already holds a run; pass --overwrite to replace it, or choose another --out")
    shutil.rmtree(out)
