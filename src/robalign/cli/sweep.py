"""robalign sweep --config NAME_OR_PATH [--executor local|ray] [--store URL] [--restart] [--dry-run] [key=value ...]

  robalign sweep --config world-noise --dry-run
  robalign sweep --config configs/sweep/world-noise.yaml grid.seed=[0,1] --executor ray
  robalign sweep --config my_sweep.yaml --store postgresql://me@db.lab/robalign

Exit status 0 when every cell is done, 1 when a cell failed (re-run the same command to retry
it; done cells are kept), 2 for a mistake in the config or the arguments.
"""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--config", required=True,
                   help="sweep YAML, or the name of a shipped one (configs/sweep/NAME.yaml; `robalign configs list`)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, grid lists as YAML: grid.seed=[0,1] grid.data.noise_rate=[0,0.2]")
    p.add_argument("--executor", choices=("local", "ray"), default=None,
                   help="local: one cell at a time in this process; ray: cells as Ray tasks (default: executor.kind)")
    p.add_argument("--store", default=None,
                   help="SQLAlchemy URL of the results store (default: the config's store, else sqlite:///OUT/results.sqlite)")
    p.add_argument("--restart", action="store_true",
                   help="delete this sweep's cells (store rows and OUT/cells) and run them all again")
    p.add_argument("--dry-run", action="store_true", help="list the cells and which are done; run nothing")
    p.add_argument("--runner", default=None,
                   help="module with prepare(sweep, log) and run_cell(sweep, cell, cell_dir, log) "
                        "(default robalign.experiments.pipeline)")


def run(args) -> int:
    from robalign.experiments.sweep import load_sweep_config, run_sweep

    sweep = load_sweep_config(args.config, args.overrides)
    summary = run_sweep(sweep, executor=args.executor, store_url=args.store, restart=args.restart,
                        dry_run=args.dry_run, runner=args.runner)
    if args.dry_run:
        for row in summary["cells"]:
            print(f"{row['id']}  {row['status']:<8} {row['label']}")
        counts = {s: sum(r["status"] == s for r in summary["cells"]) for s in ("done", "running", "failed", "pending")}
        print(f"{sweep.name}: {len(summary['cells'])} cells, " + ", ".join(f"{n} {s}" for s, n in counts.items()))
        return 0
    print(f"results: {summary['store']}  (sweep {sweep.name}; summary {sweep.out_dir / 'sweep.json'})")
    if summary["failed"]:
        print(f"{len(summary['failed'])} cells failed:")
        for cell, label in summary["failed"].items():
            print(f"  {cell}  {label}  ({sweep.out_dir / 'cells' / cell / 'error.txt'})")
        print("fix the cause and run the same command again: failed cells are retried, done cells kept")
        return 1
    return 0
