"""robalign subspace --model DIR_OR_ID --probe DIR --fraction 0.01 --select top|bottom|random|uniform --out DIR

  robalign subspace --model runs/tiny/nano --probe runs/probe/nano --fraction 0.01 --select top --out runs/mask/top
  robalign subspace --model runs/tiny/nano --fraction 0.01 --select random --seed 1 --out runs/mask/random

Scores every MLP down-projection column by cos(W_down[:, j], v) with the probe vector v, ranks all
layers together and keeps K = fraction · (layers · d_ff). `top` keeps the most aligned neurons,
`bottom` the most anti-aligned (the official ShaPO code's sort); `random` (seeded) and `uniform`
(every trainable parameter) are the controls. Use the directory as training.shapo.mask.
"""

from __future__ import annotations


def add_arguments(p) -> None:
    from robalign.training.subspace import SELECTIONS

    p.add_argument("--model", required=True, help="local model directory or hub id (the model you will train)")
    p.add_argument("--probe", default=None, help="directory from `robalign probe` (needed by top and bottom)")
    p.add_argument("--fraction", type=float, default=0.01, help="K / (layers * d_ff); official recipe 0.01")
    p.add_argument("--select", default="top", choices=list(SELECTIONS))
    p.add_argument("--seed", type=int, default=0, help="seed of the random selection")
    p.add_argument("--dtype", default="float32", help="weight dtype at load (float32 | bfloat16)")
    p.add_argument("--out", required=True, help="directory for mask.safetensors + mask.json")


def run(args) -> int:
    import json

    from robalign.models.loading import load_causal_lm, model_fingerprint
    from robalign.provenance import run_record
    from robalign.training.probe import load_probe
    from robalign.training.subspace import build_mask, fraction_of_parameters, resolve_parameter_mask

    model = load_causal_lm(args.model, dtype=args.dtype)
    vector, probe_info = load_probe(args.probe) if args.probe else (None, {})
    if probe_info.get("model_fingerprint") not in (None, model_fingerprint(args.model)):
        print(f"note: the probe was fitted on {probe_info.get('model')}, not on {args.model}")
    meta = {"model": args.model, "model_fingerprint": model_fingerprint(args.model), "probe": args.probe,
            "probe_eval_accuracy": probe_info.get("eval_accuracy"), "run": run_record()}
    mask = build_mask(model, args.fraction, args.select, args.seed, vector, meta)
    out = mask.save(args.out)
    share = fraction_of_parameters(resolve_parameter_mask(model, mask), model)
    keys = ("select", "k", "total_neurons", "fraction", "neurons_per_layer", "score_min_selected",
            "score_max_selected", "score_mean_all")
    print(json.dumps({"out": str(out), **{k: mask.info[k] for k in keys if k in mask.info},
                      "share_of_parameters": share}, indent=2))
    return 0
