"""robalign bench export-inspect RUN --out DIR: a bench run as an Inspect AI log for ``inspect view``.

  robalign bench export-inspect runs/bench/smollm2 --out runs/inspect-logs
  inspect view --log-dir runs/inspect-logs

Needs the extra: pip install 'robalign[inspect]'. What the log holds: ``robalign.interop.inspect_log``.
"""

from __future__ import annotations

from robalign.errors import UserError


def add_arguments(p) -> None:
    p.add_argument("run", metavar="RUN", help="a finished `bench clear-bias` or `bench harmful` run directory")
    p.add_argument("--out", required=True, help="log directory to write the .eval file into (inspect view --log-dir)")


def run(args) -> int:
    try:
        import inspect_ai  # noqa: F401
    except ImportError:
        raise UserError("export-inspect needs Inspect AI, which is not installed: pip install 'robalign[inspect]'") from None
    from robalign.interop.inspect_log import export_run

    path = export_run(args.run, args.out)
    print(f"wrote {path}\nopen it with: inspect view --log-dir {args.out}")
    return 0
