"""robalign pretrain --world DIR --steps N --save-every K [--size nano|micro] [--seed S] [--cooldown C]
                  [--resume | --overwrite]
robalign pretrain --world DIR --check STEP [--k K] [--per-cell N] [--split all|train|heldout]

  robalign pretrain --world runs/world --steps 2400 --save-every 800 --cooldown 400
  robalign pretrain --world runs/world --steps 4800 --save-every 800 --cooldown 400 --resume   # extend it
  robalign pretrain --world runs/world --check 2400 --k 10 --per-cell 64 --split train

Soft-label pre-training of a tiny Llama-style model from scratch on the world's corpus
(DIR/corpus/train.jsonl; loss on the answer tokens only). Checkpoints go to DIR/models/step_<N>/
(save_pretrained directories: use them as hf:DIR/models/step_<N>) and are listed in DIR/world.json.
--check samples k answers per world prompt (base and attacked) from a checkpoint, classifies them
with the rule judge, and prints per category the soft label against the observed frequencies
with Wilson 95 % intervals (also written to DIR/checks/step_<N>_k<K>_<split>.json).
"""

from __future__ import annotations


def add_arguments(p) -> None:
    from robalign.training.pretrain import DEFAULT_LR, SCHEDULES, PretrainConfig

    d = PretrainConfig(world="", steps=1, save_every=1)
    p.add_argument("--world", required=True, help="world directory (robalign world build --out DIR)")
    p.add_argument("--steps", type=int, help="optimizer steps to reach (required unless --check)")
    p.add_argument("--save-every", type=int, help="checkpoint every K steps (the last step is always saved)")
    p.add_argument("--size", default=d.size, choices=list(DEFAULT_LR),
                   help="nano ~0.8M or micro ~9M parameters")
    p.add_argument("--seed", type=int, default=d.seed, help="weight initialisation and data order")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="corpus rows per step")
    p.add_argument("--lr", type=float, default=None, help="peak AdamW learning rate (default: 3e-3 nano, 1e-3 micro)")
    p.add_argument("--warmup", type=int, default=d.warmup_steps, help="linear warm-up steps")
    p.add_argument("--schedule", default=d.schedule, choices=SCHEDULES,
                   help="constant after warm-up (a checkpoint does not depend on --steps), or cosine to 10%%")
    p.add_argument("--cooldown", type=int, default=d.cooldown, metavar="C",
                   help="save each checkpoint after C extra steps of LR decaying to 0, branched off the constant-LR "
                        "run (which goes on unchanged); sharper answer frequencies at C steps per checkpoint")
    p.add_argument("--precision", default=d.precision, choices=["fp32", "bf16"],
                   help="bf16 = autocast with fp32 weights (micro ~1.75x faster on CPUs with AMX)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's); 1 is ~4x faster on a busy 2-core machine")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    runs = p.add_mutually_exclusive_group()
    runs.add_argument("--resume", action="store_true", help="continue from the last checkpoint up to --steps")
    runs.add_argument("--overwrite", action="store_true", help="delete existing checkpoints and start afresh")
    p.add_argument("--check", type=int, metavar="STEP", help="measure what checkpoint STEP answers instead of training")
    p.add_argument("--k", type=int, default=10, help="--check: answers sampled per prompt (temperature 1)")
    p.add_argument("--per-cell", type=int, default=None,
                   help="--check: at most N prompts per (category, base|attacked), a seeded subset")
    p.add_argument("--split", default="all", choices=["all", "train", "heldout"],
                   help="--check: all prompts, or only those the corpus trained on / held out")
    p.add_argument("--max-new-tokens", type=int, default=64, help="--check: answer length limit")


def run(args) -> int:
    from robalign.errors import UserError
    from robalign.training import pretrain as pt
    from robalign.training import pretrain_check as pc

    if args.check is not None:
        import torch

        from robalign.evaluation.rules import bias_rule_verdict

        if args.threads:
            torch.set_num_threads(args.threads)

        result = pc.check_checkpoint(args.world, args.check, bias_rule_verdict, k=args.k, seed=args.seed,
                                     per_cell=args.per_cell, split=args.split, max_new_tokens=args.max_new_tokens, device=args.device)
        print(pc.format_table(result.rows))
        print(f"wrote {result.path}")
        return 0
    if args.steps is None or args.save_every is None:
        raise UserError("--steps and --save-every are required to train (or pass --check STEP)")
    config = pt.PretrainConfig(world=args.world, steps=args.steps, save_every=args.save_every, size=args.size,
                               seed=args.seed, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup,
                               schedule=args.schedule, cooldown=args.cooldown, precision=args.precision,
                               threads=args.threads, device=args.device)
    result = pt.pretrain(config, resume=args.resume, overwrite=args.overwrite)
    for c in result.checkpoints:
        held = f", held-out {c['heldout_loss']:.3f}" if c.get("heldout_loss") is not None else ""
        print(f"step {c['steps']:>6}  {c['path']}  loss {c['loss']:.3f}{held}  tokens {c['tokens']:,}  "
              f"{c['seconds']:.1f} s")
    return 0
