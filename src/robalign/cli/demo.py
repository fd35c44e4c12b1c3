"""robalign demo: the research loop end to end on the embedded default, offline, on a laptop CPU.

    robalign demo                 # configs/sweep/demo.yaml: the synthetic world, tiny models (minutes)
    robalign demo --quick         # configs/sweep/demo_quick.yaml: a smaller world and grid (what tests run)
    robalign demo --real          # configs/sweep/smollm2_noise.yaml: SmolLM2-135M-Instruct (much longer)
    robalign demo --out DIR grid.seed=[0,1]      # dotted overrides of the sweep config

One sweep (docs/experiments.md): build the world, pre-train a tiny model on its soft-label corpus
at two durations, align each checkpoint with DPO and ShaPO at several label-noise rates (plus the
un-aligned checkpoint), benchmark every cell with the CLEAR-Bias protocol and the harmful-prompt
benchmark on the world's prompts, judge with the sweep's judges, store every result in
DIR/results.sqlite, and write the report (DIR/report/index.html). Re-running resumes: finished
cells are kept. The headline sentences of the report are printed at the end.
"""

from __future__ import annotations

CONFIGS = {"default": "demo", "quick": "demo_quick", "real": "smollm2_noise"}


def add_arguments(p) -> None:
    p.add_argument("--out", default=None, help="directory of the demo's sweep (default: runs/demo, runs/demo-quick, "
                                               "runs/demo-real)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a smaller world and grid (about 3 minutes)")
    size.add_argument("--real", action="store_true", help="the SmolLM2-135M-Instruct lane (slow on a CPU)")
    p.add_argument("--executor", choices=("local", "ray"), default=None, help="run cells here or as Ray tasks")
    p.add_argument("--restart", action="store_true", help="run every cell again")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides of the sweep config")


def run(args) -> int:
    import time

    from robalign.experiments.report import collect, headline, write
    from robalign.experiments.store import Store
    from robalign.experiments.sweep import default_store_url, load_sweep_config, run_sweep

    start = time.perf_counter()
    kind = "quick" if args.quick else "real" if args.real else "default"
    out = args.out or {"default": "runs/demo", "quick": "runs/demo-quick", "real": "runs/demo-real"}[kind]
    sweep = load_sweep_config(CONFIGS[kind], [f"out={out}", *args.overrides])
    print(f"robalign demo: sweep {sweep.name} ({CONFIGS[kind]}) into {sweep.out_dir}")
    summary = run_sweep(sweep, executor=args.executor, restart=args.restart)
    if summary["failed"]:
        for cell, label in summary["failed"].items():
            print(f"  failed {cell}  {label}  ({sweep.out_dir / 'cells' / cell / 'error.txt'})")
        print("run the same command again to retry the failed cells (finished ones are kept)")
        return 1
    data = collect(Store(default_store_url(sweep)), sweep.name)
    page = write(data, sweep.out_dir / "report")
    print("\n".join(["", "Headline:", *(f"  - {line}" for line in headline(data.frame))]))
    print(f"\nreport: {page}\nresults: {summary['store']}\n"
          f"demo finished in {time.perf_counter() - start:.0f} s ({len(data.frame)} cells)")
    return 0
