"""robalign analyze --store URL [--sweep NAME] --x AXIS --y METRIC [--by method] [--json FILE]

  robalign analyze --store sqlite:///runs/sweeps/world-noise/results.sqlite --x data.noise_rate --y clear_bias/safety
  robalign analyze --store runs/sweeps/world-noise/results.sqlite --x pretrain.steps --y harmful/compliance --json a.json

Reads the finished cells of a results store and prints, per group of --by (default: method),
Spearman / Kendall / Pearson of the metric against the axis with bootstrap CIs over cells,
the OLS slope with its CI and p, and, when the axis is a grid parameter, paired differences
between methods at each of its levels (cells matched on every other parameter, seed included).
--by '' pools every cell. --store takes a URL or the path of a SQLite file.
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--store", required=True, help="results store: a SQLAlchemy URL or the path of a .sqlite file")
    p.add_argument("--sweep", default=None, help="only this sweep's cells (default: every sweep in the store)")
    p.add_argument("--x", required=True, help="the axis: a parameter (data.noise_rate, pretrain.steps) or a metric")
    p.add_argument("--y", required=True, help="the metric, e.g. clear_bias/safety or harmful/compliance")
    p.add_argument("--by", default="method", help="group by this column (default: method; '' pools every cell)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples for the correlation CIs")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--json", default=None, help="also write every number to this JSON file")


def open_store(text: str):
    """A Store for a URL, or for the path of an existing SQLite file. A sqlite URL naming a file
    that does not exist is refused: opening it would create an empty store and answer nothing."""
    from robalign.errors import UserError
    from robalign.experiments.store import Store

    if "://" not in text:
        if not Path(text).is_file():
            raise UserError(f"--store {text}: no such file; give a SQLAlchemy URL or the path of a results .sqlite")
        text = f"sqlite:///{Path(text).resolve()}"
    elif text.startswith("sqlite:///") and text != "sqlite:///:memory:":
        path = Path(text.removeprefix("sqlite:///").split("?", 1)[0])
        if not path.is_file():
            raise UserError(f"--store {text}: {path} does not exist (a sweep writes OUT/results.sqlite by default)")
    return Store(text)


def load_frame(store, sweep: str | None):
    """The store's finished cells (of ``sweep``), or a UserError saying what the store holds."""
    from robalign.errors import UserError

    frame = store.frame(sweep)
    if frame.empty:
        names = [s["name"] for s in store.sweeps()]
        held = f"sweeps in the store: {', '.join(names)}" if names else "the store holds no sweep"
        raise UserError(f"no finished cells{f' in sweep {sweep!r}' if sweep else ''}; {held}")
    return frame


def _n(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _p(v) -> str:
    return "–" if v is None else f"{v:.2g}"


def _ci(low, high, digits: int = 3) -> str:
    return "" if low is None or high is None else f" [{low:.{digits}f}, {high:.{digits}f}]"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns, two spaces apart; the last column (notes) is not padded."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r[:-1], widths)) + "  " + str(r[-1])  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)]).rstrip()


def run(args) -> int:
    import json

    from robalign.evaluation.specs import redact_url
    from robalign.experiments import analysis

    store = open_store(args.store)
    frame = load_frame(store, args.sweep)
    by = args.by or None
    analysis.require_columns(frame, x=args.x, y=args.y, by=by)
    corr = analysis.correlations(frame, args.x, args.y, by=by, n_boot=args.n_boot, seed=args.seed)
    slopes = analysis.slopes(frame, args.x, args.y, by=by)
    is_param = args.x in analysis.param_columns(frame)
    paired = analysis.paired(frame, args.y, by=by, at=args.x) if by and is_param else []
    name = by or "group"

    print(f"{args.y} against {args.x}{f', by {by}' if by else ''}: {len(frame)} cells "
          f"(store {redact_url(store.url)}{f', sweep {args.sweep}' if args.sweep else ''})\n")
    print(f"correlations (95% percentile bootstrap CI over cells, {args.n_boot} resamples)")
    print(table([name, "n", "spearman [CI]", "kendall [CI]", "pearson [CI]", "note"],
                [[r["group"], r["n"], *(_n(r[k]["value"]) + _ci(r[k]["low"], r[k]["high"])
                                        for k in ("spearman", "kendall", "pearson")), r["note"] or ""]
                 for r in corr]))
    print(f"\nOLS slope of {args.y} per unit of {args.x} (95% t CI)")
    print(table([name, "n", "slope [CI]", "p", "r2", "note"],
                [[r["group"], r["n"], _n(r["slope"], 4) + _ci(r["low"], r["high"], 4), _p(r["p"]), _n(r["r2"], 2),
                  r["note"] or ""] for r in slopes]))
    if paired:
        keys = analysis.match_keys(frame, by, args.x)
        print(f"\npaired differences b - a at each {args.x} (cells matched on {', '.join(keys) or 'nothing'}; "
              "95% paired t CI; p of the paired t and Wilcoxon signed-rank tests, Holm-corrected across rows)")
        print(table([args.x, "a", "b", "n", "mean diff [CI]", "t p", "t p Holm", "Wilcoxon p", "Wilcoxon p Holm",
                     "note"],
                    [[r["at"], r["a"] or "–", r["b"] or "–", r["n"], _n(r["mean_diff"], 4) + _ci(r["low"], r["high"], 4),
                      _p(r["p"]), _p(r["p_holm"]), _p(r["p_wilcoxon"]), _p(r["p_wilcoxon_holm"]), r["note"] or ""]
                     for r in paired]))
    elif by:
        print(f"\n(no paired comparison: {args.x} is a metric, not a grid parameter)")
    if args.json:
        out = {"store": redact_url(store.url), "sweep": args.sweep, "x": args.x, "y": args.y, "by": by,
               "cells": len(frame), "n_boot": args.n_boot, "seed": args.seed, "level": 0.95,
               "correlations": corr, "slopes": slopes, "paired": paired}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")
    return 0
