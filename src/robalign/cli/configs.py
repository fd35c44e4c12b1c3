"""robalign configs list [--kind KIND] | robalign configs cp NAME DEST [--force]

The example configs ship inside the package (``robalign/configs/<kind>/<name>.yaml``). ``list``
prints one line per config: name, kind and the file's first comment line. ``cp`` copies one out
to edit; ``--config NAME`` on any command reads a shipped config directly when no file NAME exists.
"""

from __future__ import annotations


def add_arguments(p) -> None:
    from robalign.shipped_configs import KINDS

    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="one line per shipped config: name, kind, description")
    ls.add_argument("--kind", choices=KINDS, default=None, help="only configs of this kind")
    cp = sub.add_parser("cp", help="copy a shipped config to a file or folder, to edit it")
    cp.add_argument("name", metavar="NAME", help="a shipped config: dpo_tiny or train/dpo_tiny (`robalign configs list`)")
    cp.add_argument("dest", metavar="DEST", help="file to write, or an existing folder (writes DEST/NAME.yaml)")
    cp.add_argument("--force", action="store_true", help="overwrite DEST if it exists")


def run(args) -> int:
    from robalign.shipped_configs import copy_config, list_configs

    if args.action == "list":
        configs = list_configs(args.kind)
        width = max((len(c.name) for c in configs), default=0)
        for c in configs:
            print(f"{c.name:<{width}}  {c.kind:<6}  {c.description}")
        return 0
    dest = copy_config(args.name, args.dest, force=args.force)
    print(f"wrote {dest}; edit it, then pass --config {dest}")
    return 0
