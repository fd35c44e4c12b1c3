"""robalign soft-labels --reward-model DIR --data SPEC --out FILE [--beta-r 1] [--standardize] [--cost]
    [--noise-mode soft_flip|margin_gaussian --noise-rate R [--noise-std S] [--noise-seed N]]

  robalign soft-labels --reward-model runs/reward/nano --data synthetic:600 --beta-r 1 --out runs/soft/syn.jsonl
  robalign train --config configs/train/shapo_soft_tiny.yaml data.train=runs/soft/syn.jsonl
  robalign soft-labels --reward-model runs/reward/nano --data synthetic:600 --out runs/soft/syn_sflip20.jsonl \
      --noise-mode soft_flip --noise-rate 0.2

Label noise that reaches the soft labels (docs/methods.md#label-noise): ``soft_flip`` writes 1 − q
on a seeded share of the pairs without swapping them; ``margin_gaussian`` adds ξ ~ N(0, std²) to Δr
before σ. Only the pairs a trainer with data.eval_fraction = --eval-fraction and training.seed =
--split-seed trains on get noise (defaults 0.1 and 0, the trainer's); the rows it holds out stay
clean. Noisy rows also carry clean_soft_label (and margin_noise); the summary lists noised_ids.

Scores both responses of every pair and writes the pairs with soft_label = σ(β_r·Δr),
Δr = r(chosen) − r(rejected) (r = −cost for a cost model), plus reward_margin. A safe-rlhf score
model (e.g. PKU-Alignment/beaver-7b-v1.0-cost) is scored on its own conversation text
("BEGINNING OF CONVERSATION: USER: … ASSISTANT:…"); a model without a trained head is refused.
The trainer's `soft` loss reads the soft_label column. Note the confound: a reward model trained on
clean labels partly undoes label noise added later, because it re-labels the flipped pairs.
"""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--reward-model", required=True,
                   help="directory from `robalign train-reward`, a 1-label classifier, or a safe-rlhf score model")
    p.add_argument("--data", required=True, help="preference pairs: file, hf:<id>, or synthetic[:N]")
    p.add_argument("--out", required=True, help="output .jsonl (prompt, chosen, rejected, soft_label, rewards)")
    p.add_argument("--beta-r", type=float, default=1.0, help="β_r in q = σ(β_r·Δr); the ShaPO paper uses 10")
    p.add_argument("--standardize", action="store_true", help="divide Δr by its standard deviation over the data")
    p.add_argument("--cost", action="store_true",
                   help="the model scores cost (harm): r = −cost (read from robalign_reward.json or a safe-rlhf "
                        "config's score_type when present)")
    p.add_argument("--format", default="auto", help="auto | pairs | hh_rlhf | pku_saferlhf")
    p.add_argument("--split", default="train")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--max-prompt-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--noise-mode", default=None, choices=["soft_flip", "margin_gaussian"],
                   help="label noise on q: soft_flip (q -> 1 - q, pair kept) or margin_gaussian (Δr + N(0, std²))")
    p.add_argument("--noise-rate", type=float, default=0.0, help="share of the training pairs touched (round(rate·n))")
    p.add_argument("--noise-std", type=float, default=1.0, help="margin_gaussian: std of the noise on Δr")
    p.add_argument("--noise-seed", type=int, default=0, help="the same seed touches the pairs a flip would")
    p.add_argument("--eval-fraction", type=float, default=0.1,
                   help="data.eval_fraction of the run that trains on this file: its held-out pairs stay clean "
                        "(0 when it uses a separate data.eval)")
    p.add_argument("--split-seed", type=int, default=0, help="training.seed of that run (it seeds the hold-out)")


def run(args) -> int:
    import json
    from pathlib import Path

    import torch

    from robalign.data.noise import training_positions
    from robalign.data.preference import load_pairs
    from robalign.errors import UserError
    from robalign.training.reward import (
        INFO_FILE,
        load_reward_model,
        noisy_soft_labels,
        reward_kind,
        reward_margins,
        tokenize_for_reward,
    )

    if not args.out.endswith(".jsonl"):
        raise UserError(f"--out {args.out}: write a .jsonl file (data.train can point at it)")
    if args.noise_rate and args.noise_mode is None:
        raise UserError("--noise-rate needs --noise-mode soft_flip or margin_gaussian (a pair flip belongs in "
                        "`robalign train data.noise_rate=...`, reward-label noise in `robalign train-reward`)")
    reward = load_reward_model(args.reward_model)  # refuses a model without a trained head
    kind = reward_kind(args.reward_model, args.cost, reward.model.config)
    pairs = load_pairs(args.data, format=args.format, split=args.split, limit=args.limit)
    reward.model.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tokenized = tokenize_for_reward(pairs, reward, args.max_length, args.max_prompt_length, source=args.data)
    margins = reward_margins(reward.model, tokenized.pairs, reward.tokenizer.pad_token_id, kind, args.batch_size)
    try:
        eligible = training_positions(pairs, args.eval_fraction, args.split_seed) if args.noise_mode else None
    except ValueError as exc:
        raise UserError(f"--eval-fraction: {exc}") from None
    labels = noisy_soft_labels(margins, args.beta_r, args.standardize, args.noise_mode, args.noise_rate,
                               args.noise_seed, args.noise_std, eligible)
    q, noised = labels.soft_labels, set(labels.noised)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for i, (pair, margin, label) in enumerate(zip(pairs, margins.tolist(), q.tolist())):
            row = {"id": pair.id, "prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected,
                   "soft_label": label, "reward_margin": margin}
            if args.noise_mode:
                row |= {"noised": i in noised, "clean_soft_label": labels.clean_soft_labels[i].item()}
                if args.noise_mode == "margin_gaussian":
                    row["margin_noise"] = labels.margin_offsets[i].item()
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(out)
    info = Path(args.reward_model) / INFO_FILE
    reward_noise = json.loads(info.read_text()).get("noise") if info.is_file() else None
    summary = {"out": str(out), "pairs": len(pairs), "kind": kind, "layout": reward.layout,
               "truncated_pairs": tokenized.truncated, "beta_r": args.beta_r,
               "standardize": args.standardize, "mean_soft_label": q.mean().item(),
               "agreement_with_labels": (q > 0.5).double().mean().item(),
               "margin_std": margins.std().item() if len(margins) > 1 else None,
               "noise": None if args.noise_mode is None else {
                   "mode": args.noise_mode, "rate": args.noise_rate, "seed": args.noise_seed,
                   **({"std": args.noise_std} if args.noise_mode == "margin_gaussian" else {}),
                   "eval_fraction": args.eval_fraction, "split_seed": args.split_seed,
                   "training_pairs": len(eligible), "noised_ids": [pairs[i].id for i in labels.noised]},
               "reward_model_noise": reward_noise}
    print(json.dumps(summary, indent=2))
    return 0
