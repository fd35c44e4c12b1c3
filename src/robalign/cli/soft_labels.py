"""robalign soft-labels --reward-model DIR --data SPEC --out FILE [--beta-r 1] [--standardize] [--cost]

  robalign soft-labels --reward-model runs/reward/nano --data synthetic:600 --beta-r 1 --out runs/soft/syn.jsonl
  robalign train --config configs/train/shapo_soft_tiny.yaml data.train=runs/soft/syn.jsonl

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


def run(args) -> int:
    import json
    from pathlib import Path

    import torch

    from robalign.data.preference import load_pairs
    from robalign.errors import UserError
    from robalign.training.reward import (
        load_reward_model,
        reward_kind,
        reward_margins,
        soft_labels,
        tokenize_for_reward,
    )

    if not args.out.endswith(".jsonl"):
        raise UserError(f"--out {args.out}: write a .jsonl file (data.train can point at it)")
    reward = load_reward_model(args.reward_model)  # refuses a model without a trained head
    kind = reward_kind(args.reward_model, args.cost, reward.model.config)
    pairs = load_pairs(args.data, format=args.format, split=args.split, limit=args.limit)
    reward.model.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tokenized = tokenize_for_reward(pairs, reward, args.max_length, args.max_prompt_length, source=args.data)
    margins = reward_margins(reward.model, tokenized.pairs, reward.tokenizer.pad_token_id, kind, args.batch_size)
    q = soft_labels(margins, args.beta_r, args.standardize)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for pair, margin, label in zip(pairs, margins.tolist(), q.tolist()):
            row = {"id": pair.id, "prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected,
                   "soft_label": label, "reward_margin": margin}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(out)
    summary = {"out": str(out), "pairs": len(pairs), "kind": kind, "layout": reward.layout,
               "truncated_pairs": tokenized.truncated, "beta_r": args.beta_r,
               "standardize": args.standardize, "mean_soft_label": q.mean().item(),
               "agreement_with_labels": (q > 0.5).double().mean().item(),
               "margin_std": margins.std().item() if len(margins) > 1 else None}
    print(json.dumps(summary, indent=2))
    return 0
