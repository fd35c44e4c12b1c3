"""robalign train-reward --model DIR_OR_ID --data SPEC --out DIR [--cost]

  robalign train-reward --model runs/tiny/nano --data synthetic:600 --out runs/reward/nano
  robalign train-reward --model runs/tiny/nano --data ../shared/data/pku_saferlhf_dpo/pku_seferlhf_realign_dpo_5k.json \\
      --cost --out runs/cost/nano

Bradley–Terry training of a reward model (or, with --cost, a cost model that scores the rejected,
less safe response higher) on preference pairs, with a held-out ranking accuracy. The output is
a save_pretrained sequence-classification model plus robalign_reward.json; feed it to
`robalign soft-labels`. A reward model trained on clean labels will re-label flipped pairs when it
scores noisy data: report that confound with any soft-label result.

--noise-rate R (data.noise_mode=reward_labels, docs/methods.md#label-noise) swaps chosen and
rejected on round(R·n) of the n training pairs (seeded by --noise-seed) before training, so the
soft labels this model gives inherit the noise; the held-out pairs stay clean, so eval_accuracy
still measures the true preferences. robalign_reward.json records the flipped ids.
"""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="causal LM (gets a scalar head) or a 1-label sequence classifier")
    p.add_argument("--data", required=True, help="preference pairs: file, hf:<id>, or synthetic[:N]")
    p.add_argument("--out", required=True, help="directory for the trained model")
    p.add_argument("--cost", action="store_true", help="train a cost model (higher = less safe)")
    p.add_argument("--format", default="auto", help="auto | pairs | hh_rlhf | pku_saferlhf")
    p.add_argument("--split", default="train")
    p.add_argument("--limit", type=int, default=None, help="use the first N pairs")
    p.add_argument("--eval-fraction", type=float, default=0.1, help="share of pairs held out (whole prompts)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--max-prompt-length", type=int, default=128)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16 = autocast, fp32 weights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise-rate", type=float, default=0.0,
                   help="share of the training pairs swapped before training (reward_labels noise); 0 = clean")
    p.add_argument("--noise-seed", type=int, default=0, help="seeds which pairs are swapped")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")


def run(args) -> int:
    import json
    from pathlib import Path

    import torch

    from robalign.data.noise import flip_labels
    from robalign.data.preference import data_fingerprint, load_pairs, split_holdout
    from robalign.errors import UserError
    from robalign.models.loading import model_fingerprint
    from robalign.provenance import run_record, write_json_atomic
    from robalign.training.reward import INFO_FILE, load_reward_model, tokenize_for_reward, train_reward_model

    torch.manual_seed(args.seed)
    pairs = load_pairs(args.data, format=args.format, split=args.split, limit=args.limit)
    train, held = split_holdout(pairs, args.eval_fraction, args.seed)
    try:  # after the hold-out: the held-out pairs measure the true preferences
        noisy = flip_labels(train, args.noise_rate, args.noise_seed)
    except ValueError as exc:
        raise UserError(f"--noise-rate: {exc}") from None
    train = noisy.pairs
    reward = load_reward_model(args.model, allow_new_head=True)  # a causal LM gets a fresh head to train
    model, tokenizer = reward.model, reward.tokenizer
    model.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    kw = dict(max_length=args.max_length, max_prompt_length=args.max_prompt_length, source=args.data)
    tok_train = tokenize_for_reward(train, reward, **kw).pairs
    tok_held = tokenize_for_reward(held, reward, **kw).pairs
    kind = "cost" if args.cost else "reward"
    result = train_reward_model(model, tok_train, tok_held, tokenizer.pad_token_id, kind, args.epochs,
                                args.batch_size, args.lr, args.seed,
                                torch.bfloat16 if args.precision == "bf16" else None)
    out = Path(args.out)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    summary = {"kind": kind, "layout": reward.layout, "base_model": args.model,
               "base_model_fingerprint": model_fingerprint(args.model),
               "data": args.data, "train_fingerprint": data_fingerprint(train), "train_pairs": len(tok_train),
               "steps": result.steps, "final_train_loss": result.final_train_loss,
               "eval_accuracy": result.eval_accuracy, "eval_loss": result.eval_loss, "eval_pairs": result.eval_pairs,
               "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
               "noise": {"mode": "reward_labels", "rate": args.noise_rate, "seed": args.noise_seed,
                         "flipped_ids": noisy.flipped_ids} if args.noise_rate else None}
    write_json_atomic(out / INFO_FILE, run_record(**summary))
    print(json.dumps({"out": str(out), **summary}, indent=2))
    return 0
