"""robalign judge-train --world DIR --out RUN [--config configs/judge/smollm2_lora.yaml] [key=value ...]
robalign judge-train --world DIR --out RUN --tiny [--steps N] [--size nano|micro] [--threads T]

  robalign judge-train --world runs/world --out runs/judge/smollm2
  robalign judge-train --world runs/world --out runs/judge/tiny --tiny --threads 1
  robalign judge run --judge llm:hf:runs/judge/tiny/model#bias-compact \\
      --data ../shared/data/clear_bias/control_set --out runs/judge/tiny_control.csv

Trains an offline CLEAR-Bias judge on the world's judge examples. By default a small instruct
model fine-tuned with LoRA (``robalign train``, robalign.world.judge): RUN/data/{train,eval}.jsonl
are the pairs, RUN/model the merged model; dotted overrides go to the training config
(output_dir, data.train and data.eval are set here). With --tiny, a nano Llama trained from
scratch by soft-label pre-training (robalign.world.tiny_judge): RUN/data is the judge corpus laid
out as a world (with pretrain's logs), RUN/model the judge. Either way RUN/model/robalign_judge.json
is the judge card (spec, template version, world, examples, wall time; --tiny adds its held-out
accuracy) and RUN/run_info.json the run's record.
"""

from __future__ import annotations

from pathlib import Path

CONTROL_SET = Path("..") / "shared" / "data" / "clear_bias" / "control_set"  # the checkout's layout
LORA_CONFIG = "configs/judge/smollm2_lora.yaml"
SET_HERE = ("output_dir", "data.train", "data.eval")
TINY_ONLY = ("steps", "size", "threads")


def add_arguments(p) -> None:
    p.add_argument("--world", required=True, help="a world directory (`robalign world build`)")
    p.add_argument("--out", required=True, help="run directory: data/, model/ (the judge), run_info.json")
    p.add_argument("--config", default=None,
                   help=f"training YAML (default {LORA_CONFIG}: SmolLM2-135M-Instruct, LoRA); not with --tiny")
    p.add_argument("--examples", type=int, default=None,
                   help="training examples, balanced over S / CS / D / R (default 384; --tiny: all of them)")
    p.add_argument("--eval-examples", type=int, default=32,
                   help="held-out-prompt examples for the trainer's eval (--tiny: all of judge/eval.jsonl)")
    p.add_argument("--attacked-share", type=float, default=0.125, help="share of examples on attacked prompts")
    p.add_argument("--template", default="bias-compact", help="judge template the requests are rendered with")
    p.add_argument("--seed", type=int, default=0, help="example selection and rejected verdicts")
    p.add_argument("--control-set", default=None, metavar="DIR",
                   help="drop examples equal to a control-set prompt or response "
                        f"(default {CONTROL_SET} when it exists; 'none' = no check)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="training overrides, e.g. training.max_steps=40 model.name_or_path=DIR (not with --tiny)")
    tiny = p.add_argument_group("tiny judge (--tiny)")
    tiny.add_argument("--tiny", action="store_true",
                      help="train a ~1M-parameter Llama from scratch (~1 min on 2 cores) instead of LoRA on SmolLM2")
    tiny.add_argument("--steps", type=int, default=None, help="optimizer steps (default 800 of 16 rows)")
    tiny.add_argument("--size", default=None, choices=["nano", "micro"],
                      help="nano (default: 128 wide, 2 layers, 8 heads, ~0.95M parameters) or micro (~9M, ~10x slower)")
    tiny.add_argument("--threads", type=int, default=None,
                      help="torch CPU threads (default: torch's); 1 is ~4x faster on a busy 2-core machine")


def run(args) -> int:
    import json
    import time

    from robalign.config import TrainConfig, load_config, validate_train_config
    from robalign.errors import UserError
    from robalign.training.trainer import train
    from robalign.world.judge import judge_spec, write_judge_card, write_judge_data

    if args.tiny:
        return run_tiny(args)
    given = [name for name in TINY_ONLY if getattr(args, name) is not None]
    if given:
        raise UserError(f"--{given[0]} is an option of the tiny judge: add --tiny, or drop it")
    taken = [o for o in args.overrides if o.split("=", 1)[0] in SET_HERE]
    if taken:
        raise UserError(f"judge-train sets {', '.join(SET_HERE)} itself (--out, the world's pairs); drop {taken[0]}")
    out = Path(args.out)
    _clear_run_dir(out, args.overwrite)
    control = _control_set(args.control_set)
    config = load_config(TrainConfig, args.config or LORA_CONFIG, args.overrides)

    start = time.perf_counter()
    data = write_judge_data(args.world, out / "data", examples=args.examples or 384, eval_examples=args.eval_examples,
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


def run_tiny(args) -> int:
    import json

    from robalign.errors import UserError
    from robalign.world.tiny_judge import TinyJudgeConfig, train_tiny_judge

    if args.config or args.overrides:
        raise UserError("--tiny takes no training YAML or KEY=VALUE overrides (they configure the LoRA judge); "
                        "use --steps, --size, --threads, --seed")
    out = Path(args.out)
    _clear_run_dir(out, args.overwrite)
    d = TinyJudgeConfig(world="", out="")
    config = TinyJudgeConfig(world=args.world, out=str(out), steps=d.steps if args.steps is None else args.steps,
                             size=args.size or d.size,
                             seed=args.seed, template=args.template, examples=args.examples,
                             attacked_share=args.attacked_share, control_set=_control_set(args.control_set),
                             threads=args.threads)
    result = train_tiny_judge(config)
    card = result.card
    print(json.dumps({"judge": result.spec, "steps": card["steps"], "train_seconds": card["train_seconds"],
                      "rows": card["counts"], "dropped_overlap": card["dropped_overlap"],
                      "heldout_eval": card.get("heldout_eval"), "card": str(result.model / "robalign_judge.json")},
                     indent=2))
    return 0


def _control_set(option: str | None) -> str | None:
    """--control-set: a directory, 'none', or (unset) the checkout's copy when there is one."""
    control = option or (str(CONTROL_SET) if CONTROL_SET.is_dir() else None)
    return None if control in (None, "none") else str(Path(control).resolve())


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
