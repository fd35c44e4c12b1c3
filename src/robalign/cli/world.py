"""robalign world build --out DIR [--config world.yaml] [--overwrite] [--lengths] [key=value ...]

  robalign world build --out runs/world
  robalign world build --out runs/world --config configs/world/default.yaml corpus.draws_base=40 seed=1

Writes the synthetic testbed (docs/world.md): CLEAR-Bias-layout prompts and attacks, a harmful
request table, the soft-label pre-training corpus, preference pairs, judge examples,
soft_labels.json and world.json; prints the rows per file and the build time. --lengths also
measures the corpus in tokens of the offline tiny tokenizers (a few seconds more) and records
it in world.json.
"""

from __future__ import annotations


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = sub.add_parser("build", help="write a world directory from a config (defaults: configs/world/default.yaml)")
    build.add_argument("--out", required=True, help="the world directory to create")
    build.add_argument("--config", default=None, help="world YAML (e.g. configs/world/default.yaml); default: built-in")
    build.add_argument("--overwrite", action="store_true",
                       help="replace an existing world in --out (its pre-trained checkpoints go too)")
    build.add_argument("--lengths", action="store_true",
                       help="measure corpus token lengths per attack against the 512-token tiny context")
    build.add_argument("overrides", nargs="*", default=[], help="dotted overrides, e.g. corpus.draws_base=40 seed=1")


def run(args) -> int:
    import json

    from robalign.provenance import write_json_atomic
    from robalign.world.build import build_world
    from robalign.world.config import load_world_config

    cfg = load_world_config(args.config, args.overrides)
    summary = build_world(cfg, args.out, overwrite=args.overwrite)
    attacked = {p: n for p, n in summary.files.items() if "/jailbreak_prompts/" in p}
    shown = {p: n for p, n in summary.files.items() if p not in attacked}
    if attacked:
        shown[f"clear_bias/jailbreak_prompts/ ({len(attacked)} files)"] = sum(attacked.values())
    width = max(map(len, shown))
    for path, rows in shown.items():
        print(f"{path:<{width}}  {rows:>7,}")
    for note in summary.notes:
        print(f"note: {note}")
    print(f"world {summary.out} (seed {cfg.seed}) built in {summary.seconds:.2f} s")
    if args.lengths:
        from robalign.world.lengths import measure_world

        lengths = measure_world(summary.out)
        world_json = summary.out / "world.json"
        write_json_atomic(world_json, json.loads(world_json.read_text(encoding="utf-8")) | {"token_lengths": lengths})
        print(f"tokens per corpus row (chat template, reply included; context {lengths['context']}):")
        print(f"  {'group':<24}" + "".join(f"{name + ' max':>16}{'over':>7}" for name in ("tiny", "tiny+world")))
        for group in lengths["tiny"]:
            cells = "".join(f"{lengths[n][group]['total_max']:>16}{lengths[n][group]['over_context']:>7}"
                            for n in ("tiny", "tiny+world"))
            print(f"  {group:<24}{cells}")
    return 0
