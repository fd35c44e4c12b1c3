"""robalign probe --model DIR_OR_ID --data SPEC --out DIR

  robalign probe --model runs/tiny/nano --data synthetic:400 --categories harmful --out runs/probe/nano
  robalign probe --model meta-llama/Llama-3.2-3B-Instruct --data ../shared/data/pku_saferlhf_dpo/pku_seferlhf_realign_dpo_5k.json \\
      --dtype bfloat16 --out runs/probe/llama3b

Fits a linear safe/unsafe head on the frozen model's mean-pooled final-layer hidden states and
writes probe.safetensors (v = W[unsafe] − W[safe]) and probe.json (held-out accuracy, chance level).
"""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="local model directory or hub id")
    p.add_argument("--data", required=True, help="preference pairs: file, hf:<id>, or synthetic[:N]")
    p.add_argument("--out", required=True, help="directory for probe.safetensors + probe.json")
    p.add_argument("--format", default="auto", help="auto | pairs | hh_rlhf | pku_saferlhf")
    p.add_argument("--split", default="train", help="split name for hf: data")
    p.add_argument("--limit", type=int, default=None, help="use the first N pairs")
    p.add_argument("--categories", default=None,
                   help="comma-separated meta categories to keep (synthetic world: harmful keeps the pairs where "
                        "chosen = refusal / rejected = compliance is a real safety label)")
    p.add_argument("--exclude-categories", default=None,
                   help="comma-separated meta categories to drop (synthetic world: harmless, where rejected = "
                        "an over-refusal, not an unsafe answer)")
    p.add_argument("--eval-fraction", type=float, default=0.2, help="share of prompts held out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-length", type=int, default=256, help="tokens per text (long texts keep their end)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--l2", type=float, default=1e-3, help="L2 penalty on the standardised head weights (lbfgs)")
    p.add_argument("--estimator", default="lbfgs",
                   help="lbfgs (L2 logistic regression) | adam (the ShaPO paper's head, per-epoch log) | lbfgs,adam "
                        "(both reported; the first one's vector is saved)")
    p.add_argument("--epochs", type=int, default=20, help="epochs of the adam estimator")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate of the adam estimator")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 (weights at load)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--prompt-format", default="auto",
                   help="auto | chat_template | hh | safe_rlhf | plain: render prompts as training does "
                        "(auto = the tokenizer's chat template, else HH transcript)")
    p.add_argument("--no-chat-template", action="store_true", help="same as --prompt-format hh")


def run(args) -> int:
    import json

    import torch

    from robalign.data.preference import data_fingerprint, load_pairs
    from robalign.errors import UserError
    from robalign.models.loading import load_causal_lm, load_tokenizer, model_fingerprint
    from robalign.provenance import run_record
    from robalign.training.probe import probe_examples, save_probe, train_probe

    pairs = load_pairs(args.data, format=args.format, split=args.split, limit=args.limit)
    if args.categories:
        keep = {c.strip() for c in args.categories.split(",")}
        pairs = [p for p in pairs if p.meta.get("category") in keep]
        if not pairs:
            raise UserError(f"--categories {args.categories}: no pair of {args.data} has meta category in {sorted(keep)}")
    if args.exclude_categories:
        drop = {c.strip() for c in args.exclude_categories.split(",")}
        pairs = [p for p in pairs if p.meta.get("category") not in drop]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(args.model)
    model = load_causal_lm(args.model, dtype=args.dtype).to(device)
    from robalign.data.formats import resolve_format

    prompt_format = resolve_format("hh" if args.no_chat_template else args.prompt_format, tokenizer)
    templated = prompt_format == "chat_template"
    data = probe_examples(pairs, tokenizer, prompt_format=prompt_format)
    result = train_probe(model, tokenizer, data, args.eval_fraction, args.seed, args.batch_size, args.max_length,
                         args.l2, add_special_tokens=not templated,
                         estimators=[e.strip() for e in args.estimator.split(",") if e.strip()],
                         epochs=args.epochs, lr=args.lr)
    meta = {"model": args.model, "model_fingerprint": model_fingerprint(args.model), "data": args.data,
            "data_fingerprint": data_fingerprint(pairs), "categories": args.categories,
            "exclude_categories": args.exclude_categories, "pairs": len(pairs),
            "label_source": data.label_source, "conflicting_texts_dropped": data.conflicts,
            "features": "final-layer hidden states, mean over non-pad tokens", "seed": args.seed,
            "prompt_format": prompt_format, "eval_fraction": args.eval_fraction, "max_length": args.max_length,
            "l2": args.l2, "estimator": args.estimator, "adam_epochs": args.epochs, "adam_lr": args.lr,
            "run": run_record()}
    out = save_probe(args.out, result, meta)
    print(json.dumps({"out": str(out), "train_accuracy": round(result.train_accuracy, 4),
                      "eval_accuracy": round(result.eval_accuracy, 4),
                      "eval_majority_baseline": round(result.eval_majority, 4),
                      "n_train_texts": result.n_train, "n_eval_texts": result.n_eval,
                      "label_source": data.label_source,
                      "estimators": {name: {k: v for k, v in r.items() if k != "history"}
                                     for name, r in result.estimators.items()}}, indent=2))
    return 0
