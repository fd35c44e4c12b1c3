"""robalign subspace-analysis --model DIR --probe DIR --data SPEC --out DIR

  robalign subspace-analysis --model runs/tiny/nano --probe runs/probe/nano --data synthetic:128 --out runs/figure1

The ShaPO paper's Figure 1: for growing K, how much of the worst-case loss increase (perturbation
norm ρ along the loss gradient) comes from perturbing only the Top-K probe-aligned neurons, versus
K random neurons (and Bottom-K, and the gradient oracle: the K neurons with the largest gradient,
the best any K can do to first order). Shares are relative to perturbing every MLP neuron; the
first-order share is ‖g_S‖/‖g_all‖, the measured share uses actual loss increases. Writes
figure1.png and figure1.json.
"""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="policy model (local directory or hub id)")
    p.add_argument("--probe", default=None, help="directory from `robalign probe`; without it only random/oracle")
    p.add_argument("--data", required=True, help="preference pairs: file, hf:<id>, or synthetic[:N]")
    p.add_argument("--out", required=True, help="directory for figure1.png + figure1.json")
    p.add_argument("--reference", default=None, help="reference model for the loss (default: --model)")
    p.add_argument("--format", default="auto")
    p.add_argument("--limit", type=int, default=128, help="pairs the loss is measured on")
    p.add_argument("--loss", default="dpo", help="loss name (dpo, ipo, cdpo, rdpo, soft, sft)")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--rho", type=float, default=0.05, help="perturbation norm for the measured share")
    p.add_argument("--fractions", default="0.001,0.002,0.005,0.01,0.02,0.05,0.1,0.2,0.5,1.0",
                   help="comma-separated K / (layers * d_ff)")
    p.add_argument("--random-seeds", type=int, default=5, help="random-K draws per K (a t-interval over them is plotted)")
    p.add_argument("--max-length", type=int, default=192)
    p.add_argument("--max-prompt-length", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=16)


def run(args) -> int:
    import json
    from pathlib import Path

    from robalign.data.preference import load_pairs
    from robalign.data.tokenize import collate_pairs, tokenize_pairs
    from robalign.models.loading import load_causal_lm, load_tokenizer
    from robalign.provenance import run_record
    from robalign.training.probe import load_probe
    from robalign.training.reference import compute_reference_logps
    from robalign.training.step import LossSettings, accumulate_gradients, evaluate
    from robalign.training.subspace import neuron_scores, share_curves

    fractions = [float(f) for f in args.fractions.split(",")]
    tokenizer = load_tokenizer(args.model)
    model = load_causal_lm(args.model)
    reference_model = load_causal_lm(args.reference) if args.reference else model
    pairs = load_pairs(args.data, format=args.format, limit=args.limit)
    tokenized = tokenize_pairs(pairs, tokenizer, args.max_length, args.max_prompt_length, source=args.data).pairs
    reference = compute_reference_logps(reference_model, tokenized, tokenizer.pad_token_id, args.batch_size)
    batches = [collate_pairs(tokenized[i : i + args.batch_size], tokenizer.pad_token_id)
               for i in range(0, len(tokenized), args.batch_size)]
    settings = LossSettings({args.loss: 1.0}, args.beta, 0.0, 0.1, False, "mean", 1.0)
    model.eval()  # no dropout: the gradient and every perturbed loss see the same function
    accumulate_gradients(model, batches, reference, settings)

    def loss_fn() -> float:
        return evaluate(model, batches, reference, settings)["eval/loss"]

    scores = neuron_scores(model, load_probe(args.probe)[0]) if args.probe else None
    result = share_curves(model, scores, fractions, loss_fn, args.rho, args.random_seeds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"model": args.model, "probe": args.probe, "data": args.data, "pairs": len(tokenized),
              "loss_name": args.loss, "beta": args.beta, **result, "run": run_record()}
    (out / "figure1.json").write_text(json.dumps(record, indent=2))
    plot_shares(result, out / "figure1.png", title=f"{Path(args.model).name}: {args.loss}, ρ = {args.rho}")
    for row in result["rows"]:
        print(f"K={row['k']:>6} ({row['fraction']:.3g})  first-order share  "
              + "  ".join(f"{kind} {row[kind + '_first_order']:.3f}" for kind in ("top", "random", "oracle")
                          if kind + "_first_order" in row))
    print(f"wrote {out / 'figure1.png'} and {out / 'figure1.json'}")
    return 0


def plot_shares(result: dict, path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    ks = [r["k"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
    styles = {"top": ("Top-K (probe)", "C0", "-"), "bottom": ("Bottom-K (probe)", "C1", "-"),
              "random": ("Random-K (mean, 95 % CI over seeds)", "C2", "-"), "oracle": ("gradient oracle", "k", "--")}
    titles = {"first_order": "first-order share ‖g_S‖/‖g_all‖", "energy": "energy share ‖g_S‖²/‖g_all‖²",
              "measured": "measured share of the loss increase"}
    for ax, kind_of_share in zip(axes, titles):
        for kind, (label, color, line) in styles.items():
            key = f"{kind}_{kind_of_share}"
            if key not in rows[0]:
                continue
            ax.plot(ks, [r[key] for r in rows], line, color=color, marker="o", ms=3, label=label)
            if kind == "random":
                ci = [r[key + "_ci95"] for r in rows]
                ax.fill_between(ks, [c[0] for c in ci], [c[1] for c in ci], color=color, alpha=0.2)
        ax.set_xscale("log")
        ax.set_xlabel("K (neurons perturbed)")
        ax.set_title(titles[kind_of_share])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of worst-case loss increase")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
