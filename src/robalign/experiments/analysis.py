"""Statistics over a sweep's results table: how an axis (noise rate, duration) moves a metric.

Every function takes a pandas DataFrame shaped like ``Store.frame()``: one row per finished
cell, columns ``sweep, cell, run_dir, finished``, the cell's parameters by dotted key
(``method``, ``data.noise_rate``, ``pretrain.steps``, ``seed`` ...), then its metrics by name
(``clear_bias/safety`` ...) with their CI columns ``NAME.low``, ``NAME.high``, ``NAME.n``.
Parameters and metrics are told apart by the slash every metric name carries. The unit of
every statistic here is the *cell*: a CI says how much the answer would move with other
cells (seeds) of the same grid, not with other prompts (that is the cell's own bench CI).

- ``correlations``: Spearman, Kendall (tau-b) and Pearson from ``scipy.stats`` per group, each
  with a seeded percentile bootstrap CI that resamples cells. Resamples in which x or y is
  constant have no coefficient; they are left out and counted (with 3 cells, 3 of 27 equally
  likely resamples repeat one cell). Under 3 cells there is no correlation to report.
- ``slopes``: OLS ``y ~ 1 + x`` per group (statsmodels): slope, t CI, p. Two cells give a
  slope but no CI (no residual degrees of freedom).
- ``paired``: at each level of ``at``, every pair of groups compared on cells matched on
  every other parameter (seed included): mean difference b - a with the paired t CI
  (``scipy.stats.ttest_rel``); one pair gives a difference and no CI.
- ``curve``: the mean of y at each x per group, for figures: a t CI over the cells at that
  point, or the cell's own CI when it is alone there.

Results are lists of plain dicts (JSON-ready: floats, None, strings); a statistic that cannot
be computed is None and the row's ``note`` says why.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from robalign.errors import UserError

META = ("sweep", "cell", "run_dir", "finished")
NOISE = "data.noise_rate"
# the duration axis of each lane: pre-training steps (world), preference-training steps (smollm2)
DURATIONS = {"pretrain.steps": "pre-training steps", "training.max_steps": "preference-training steps"}
CI_SUFFIXES = (".low", ".high", ".n")
ALL = "all"  # the group name when there is no grouping column


# -------------------------------------------------------------------- columns of the table

def metric_columns(df: pd.DataFrame) -> list[str]:
    """Metric names (a slash in the name), without their CI columns."""
    cols = [c for c in df.columns if "/" in str(c)]
    return [c for c in cols if not any(c.endswith(s) and c[: -len(s)] in df.columns for s in CI_SUFFIXES)]


def param_columns(df: pd.DataFrame) -> list[str]:
    """Grid parameters: every column that is neither bookkeeping nor a metric (or a metric's CI)."""
    return [c for c in df.columns if c not in META and "/" not in str(c)]


def sweep_axes(df: pd.DataFrame) -> tuple[str | None, str | None]:
    """(noise axis, duration axis): ``data.noise_rate`` and the first duration column, each only
    when the table holds it with more than one value."""
    varies = lambda c: c in df.columns and df[c].nunique(dropna=True) > 1  # noqa: E731
    return (NOISE if varies(NOISE) else None), next((c for c in DURATIONS if varies(c)), None)


def require_columns(df: pd.DataFrame, **named: str | None) -> None:
    """UserError naming the option and listing what the table holds when a column is missing."""
    for option, column in named.items():
        if column is not None and column not in df.columns:
            raise UserError(f"{option} '{column}' is not a column of the results; parameters: "
                            f"{', '.join(param_columns(df)) or '(none)'}; metrics: "
                            f"{', '.join(metric_columns(df)) or '(none)'}")


def _numeric(df: pd.DataFrame, column: str, option: str) -> pd.Series:
    values = pd.to_numeric(df[column], errors="coerce")
    bad = df[column][values.isna() & df[column].notna()]
    if len(bad):
        raise UserError(f"{option} '{column}' must be numeric; it holds {', '.join(map(str, bad.unique()[:5]))}")
    return values.astype(float)


def group_order(values) -> list:
    """Distinct values, ``none`` (the un-aligned baseline) first, then sorted (numbers as numbers),
    missing last: the order of groups in every table and of a and b in a pair (b - a)."""
    present = [v for v in pd.unique(pd.Series(list(values), dtype=object)) if not _missing(v)]
    try:
        rest = sorted(v for v in present if v != "none")
    except TypeError:
        rest = sorted((v for v in present if v != "none"), key=str)
    missing = len(present) < len(pd.unique(pd.Series(list(values), dtype=object)))
    return (["none"] if "none" in present else []) + rest + ([None] if missing else [])


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def _groups(df: pd.DataFrame, by: str | None) -> list[tuple[str, pd.DataFrame]]:
    """(name, rows) per value of ``by``, in ``group_order``."""
    if by is None:
        return [(ALL, df)]
    out = []
    for value in group_order(df[by]):
        rows = df[df[by].isna()] if value is None else df[df[by] == value]
        out.append((_name(value), rows))
    return out


def _name(value) -> str:
    if isinstance(value, tuple):  # pandas gives 1-tuples for a list of one key
        value = value[0]
    return "(missing)" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _clean(value) -> float | None:
    """A float for JSON, None for NaN / inf / missing."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _xy(rows: pd.DataFrame, x: str, y: str) -> tuple[np.ndarray, np.ndarray, int]:
    """The rows' x and y with every row missing either left out; also how many were left out."""
    xs, ys = _numeric(rows, x, "x"), _numeric(rows, y, "y")
    keep = xs.notna() & ys.notna()
    return xs[keep].to_numpy(), ys[keep].to_numpy(), int((~keep).sum())


def _constant(v: np.ndarray) -> bool:
    """No spread beyond float rounding (a mean of 0.1-steps can differ in the 17th digit)."""
    return len(v) > 0 and float(np.ptp(v)) <= 1e-12 * max(1.0, float(np.abs(v).max()))


def _dropped_note(dropped: int, x: str, y: str) -> str | None:
    return f"{dropped} cell(s) without {x} or {y} left out" if dropped else None


def _join(*notes: str | None) -> str | None:
    text = "; ".join(n for n in notes if n)
    return text or None


# -------------------------------------------------------------------- correlations

def _rank_pearson(xb: np.ndarray, yb: np.ndarray, rank: bool) -> np.ndarray:
    from scipy import stats

    if rank:
        xb, yb = stats.rankdata(xb, axis=1), stats.rankdata(yb, axis=1)
    return stats.pearsonr(xb, yb, axis=1).statistic


def _bootstrap(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int, level: float) -> tuple[dict, int]:
    """Percentile CIs of the three coefficients over ``n_boot`` resamples of the cells;
    resamples with a constant x or y are left out (returned: how many)."""
    from scipy import stats

    idx = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))
    xb, yb = x[idx], y[idx]
    ok = ~np.array([_constant(a) or _constant(b) for a, b in zip(xb, yb)], dtype=bool)
    xb, yb = xb[ok], yb[ok]
    if not len(xb):
        return {}, n_boot
    draws = {"spearman": _rank_pearson(xb, yb, rank=True), "pearson": _rank_pearson(xb, yb, rank=False),
             "kendall": np.array([stats.kendalltau(a, b).statistic for a, b in zip(xb, yb)])}
    tail = 100 * (1 - level) / 2
    return {k: np.percentile(v, [tail, 100 - tail]) for k, v in draws.items()}, int((~ok).sum())


def correlations(df: pd.DataFrame, x: str, y: str, by: str | None = "method", n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> list[dict]:
    """Per group: n cells, and Spearman / Kendall tau-b / Pearson of y against x, each
    ``{"value", "low", "high", "p"}`` (scipy's p-value; bootstrap percentile CI over cells)."""
    from scipy import stats

    require_columns(df, x=x, y=y, by=by)
    out = []
    for group, rows in _groups(df, by):
        xs, ys, dropped = _xy(rows, x, y)
        row = {"group": group, "n": len(xs), "dropped": dropped, "n_boot": n_boot, "degenerate": 0}
        empty = {"value": None, "low": None, "high": None, "p": None}
        row |= {k: dict(empty) for k in ("spearman", "kendall", "pearson")}
        why = None
        if len(xs) < 3:
            why = f"n = {len(xs)} cell(s): a correlation needs at least 3"
        elif _constant(xs):
            why = f"{x} takes one value ({xs[0]:g}) in this group: no correlation"
        elif _constant(ys):
            why = f"{y} is constant ({ys[0]:g}) in this group: no correlation"
        if why is None:
            point = {"spearman": stats.spearmanr(xs, ys), "kendall": stats.kendalltau(xs, ys),
                     "pearson": stats.pearsonr(xs, ys)}
            ci, row["degenerate"] = _bootstrap(xs, ys, n_boot, seed, level) if n_boot > 0 else ({}, 0)
            for k, res in point.items():
                low, high = ci.get(k, (None, None))
                row[k] = {"value": _clean(res.statistic), "low": _clean(low), "high": _clean(high),
                          "p": _clean(res.pvalue)}
            if row["degenerate"]:
                why = (f"{row['degenerate']} of {n_boot} bootstrap resamples had a constant {x} or {y} and "
                       "were left out of the CI")
        out.append(row | {"note": _join(_dropped_note(dropped, x, y), why)})
    return out


# -------------------------------------------------------------------- slopes

def slopes(df: pd.DataFrame, x: str, y: str, by: str | None = "method", level: float = 0.95) -> list[dict]:
    """Per group, OLS ``y = intercept + slope * x`` over cells: slope with its t CI and p
    (H0: slope = 0), intercept, R^2. The slope is per unit of x (per 1.0 of a noise rate)."""
    import statsmodels.api as sm

    require_columns(df, x=x, y=y, by=by)
    out = []
    for group, rows in _groups(df, by):
        xs, ys, dropped = _xy(rows, x, y)
        row = {"group": group, "n": len(xs), "dropped": dropped, "slope": None, "low": None, "high": None,
               "p": None, "intercept": None, "r2": None, "constant": False}
        why = None
        if len(np.unique(xs)) < 2:
            why = f"{x} takes {len(np.unique(xs))} distinct value(s) here: no slope"
        elif _constant(ys):  # OLS would return a slope of 1e-16 and a meaningless p
            row |= {"slope": 0.0, "intercept": float(ys[0]), "low": 0.0, "high": 0.0, "constant": True}
            why = f"{y} is constant ({ys[0]:g}) here: slope 0, no spread, no p-value"
        else:
            with warnings.catch_warnings():  # n = 2 (no residual df) and exact fits divide by zero
                warnings.simplefilter("ignore")
                fit = sm.OLS(ys, sm.add_constant(xs, has_constant="add")).fit()
                row |= {"slope": _clean(fit.params[1]), "intercept": _clean(fit.params[0])}
                if len(xs) < 3:
                    why = f"n = {len(xs)} cells: a slope but no CI (no residual degrees of freedom)"
                else:
                    low, high = fit.conf_int(alpha=1 - level)[1]
                    row |= {"low": _clean(low), "high": _clean(high), "p": _clean(fit.pvalues[1]),
                            "r2": _clean(fit.rsquared)}
        out.append(row | {"note": _join(_dropped_note(dropped, x, y), why)})
    return out


# -------------------------------------------------------------------- paired comparisons

def _key(values: Sequence) -> tuple:
    """Matching key of a cell: NaN (a parameter the cell does not have) matches NaN; a list-valued
    parameter (overrides) matches by its text."""
    values = [v.item() if isinstance(v, np.generic) else v for v in values]
    return tuple(None if v is None or (isinstance(v, float) and math.isnan(v))
                 else v if isinstance(v, str | int | float | bool) else repr(v) for v in values)


def match_keys(df: pd.DataFrame, by: str, at: str | None, pair_on: Sequence[str] | None = None) -> list[str]:
    """Columns that must agree for two cells to be a pair: by default every parameter except
    ``by`` and ``at``, plus ``sweep`` when the table holds several sweeps."""
    if pair_on is None:
        pair_on = [c for c in param_columns(df) if c not in (by, at)]
        if "sweep" in df.columns and df["sweep"].nunique() > 1:
            pair_on = ["sweep", *pair_on]
    require_columns(df, **{f"pair_on[{i}]": c for i, c in enumerate(pair_on)})
    return list(pair_on)


def _index(rows: pd.DataFrame, keys: list[str], group: str, where: str) -> dict[tuple, pd.Series]:
    out: dict[tuple, pd.Series] = {}
    for _, r in rows.iterrows():
        k = _key([r[c] for c in keys])
        if k in out:
            raise UserError(f"cells {out[k].get('cell')} and {r.get('cell')} of {group} {where} share "
                            f"{', '.join(f'{c}={v}' for c, v in zip(keys, k)) or 'every parameter'}: the pairing keys "
                            "do not tell them apart; add the parameter they differ in")
        out[k] = r
    return out


def pairs(df: pd.DataFrame, by: str = "method", at: str | None = "data.noise_rate",
          pair_on: Sequence[str] | None = None) -> list[dict]:
    """Every matched pair of cells: ``{"at", "a", "b", "key", "cell_a", "cell_b"}`` for groups
    a before b (grid order) at each level of ``at``; the report's per-sample diff walks these."""
    require_columns(df, by=by, at=at)
    keys = match_keys(df, by, at, pair_on)
    out = []
    for level, rows in _levels(df, at):
        where = f"at {at}={level}" if at else ""
        index = {g: _index(r, keys, g, where) for g, r in _groups(rows, by)}
        for a, b in itertools.combinations(index, 2):
            for k in (k for k in index[a] if k in index[b]):  # in the table's row order
                out.append({"at": level, "a": a, "b": b, "key": dict(zip(keys, k)),
                            "cell_a": index[a][k].get("cell"), "cell_b": index[b][k].get("cell")})
    return out


def _levels(df: pd.DataFrame, at: str | None) -> list[tuple[object, pd.DataFrame]]:
    if at is None:
        return [(None, df)]
    values = [v for v in df[at].dropna().unique()]
    try:
        values = sorted(values)
    except TypeError:
        pass
    return [(v.item() if hasattr(v, "item") else v, df[df[at] == v]) for v in values]


def paired(df: pd.DataFrame, y: str, by: str = "method", at: str | None = "data.noise_rate",
           pair_on: Sequence[str] | None = None, level: float = 0.95) -> list[dict]:
    """At each level of ``at``, for every pair of groups (a, b) present there: the mean of
    y_b - y_a over cells matched on ``pair_on`` (default: every other parameter, seed included),
    the paired t CI and p (``scipy.stats.ttest_rel``), the Wilcoxon signed-rank p
    (``scipy.stats.wilcoxon``: exact for small n, no normality assumed), n pairs. One pair: no CI.
    ``p_holm`` / ``p_wilcoxon_holm``: each family of p-values (every comparison returned, across
    levels) corrected by Holm's step-down method (``statsmodels``), which controls the chance of
    any false positive among them without assuming the tests independent."""
    from scipy import stats

    require_columns(df, y=y, by=by, at=at)
    df = df.reset_index(drop=True)  # rows are found again by index label below
    keys = match_keys(df, by, at, pair_on)
    values = _numeric(df, y, "y")
    out = []
    for lvl, rows in _levels(df, at):
        where = f"at {at}={lvl}" if at else ""
        index = {g: _index(r, keys, g, where) for g, r in _groups(rows, by)}
        if len(index) < 2:
            out.append({"at": lvl, "a": next(iter(index), None), "b": None, "n": 0, "mean_diff": None, "low": None,
                        "high": None, "p": None, "sd": None, "dropped": 0,
                        "note": f"only {', '.join(index) or 'no group'} has cells {where}: nothing to compare"})
            continue
        for a, b in itertools.combinations(index, 2):
            common = [k for k in index[a] if k in index[b]]
            ya = np.array([values[index[a][k].name] for k in common], dtype=float)
            yb = np.array([values[index[b][k].name] for k in common], dtype=float)
            ok = ~(np.isnan(ya) | np.isnan(yb))
            dropped, ya, yb = int((~ok).sum()), ya[ok], yb[ok]
            d = yb - ya
            row = {"at": lvl, "a": a, "b": b, "n": len(d), "mean_diff": _clean(d.mean()) if len(d) else None,
                   "low": None, "high": None, "p": None, "p_wilcoxon": None,
                   "sd": _clean(d.std(ddof=1)) if len(d) > 1 else None, "dropped": dropped}
            why = None
            if not len(d):
                why = (f"no {a} and {b} cells {where} match on {', '.join(keys) or 'the parameters'}"
                       if not common else f"every matched pair lacks {y}")
            elif len(d) == 1:
                why = "one matched pair: a difference but no CI"
            elif np.allclose(d, d[0], rtol=0, atol=1e-12):  # 0.1 - 0.06 is not 0.04 in floats
                row |= {"low": row["mean_diff"], "high": row["mean_diff"]}
                why = f"all {len(d)} differences are equal: no spread, no p-value"
            else:
                res = stats.ttest_rel(yb, ya)
                ci = res.confidence_interval(confidence_level=level)
                row |= {"low": _clean(ci.low), "high": _clean(ci.high), "p": _clean(res.pvalue),
                        "p_wilcoxon": _clean(stats.wilcoxon(yb, ya).pvalue)}
            out.append(row | {"note": _join(f"{dropped} matched pair(s) without {y} left out" if dropped else None,
                                            why)})
    for name in ("p", "p_wilcoxon"):
        _holm(out, name)
    return out


def _holm(rows: list[dict], name: str) -> None:
    """rows[i][name + '_holm']: Holm-adjusted over the rows that have a p-value under ``name``."""
    from statsmodels.stats.multitest import multipletests

    have = [r for r in rows if r.get(name) is not None]
    adjusted = multipletests([r[name] for r in have], method="holm")[1] if have else []
    for r in rows:
        r[f"{name}_holm"] = None
    for r, q in zip(have, adjusted):
        r[f"{name}_holm"] = _clean(q)


# -------------------------------------------------------------------- summaries for figures and headlines

# metrics that are shares of prompts or pairs (the last part of the name): their t CIs are clipped to [0, 1]
RATES = frozenset({"safety", "robustness", "fairness", "compliance", "refusal", "over_refusal", "accuracies",
                   "accuracy", "eval_accuracy", "win_rate", "asr"})


def metric_range(name: str | None) -> tuple[float, float] | None:
    """(0, 1) for a metric that is a rate (``RATES``), else None (margins, losses, differences)."""
    return (0.0, 1.0) if name and name.rsplit("/", 1)[-1] in RATES else None


def mean_ci(values: Sequence[float], lows: Sequence[float] | None = None, highs: Sequence[float] | None = None,
            level: float = 0.95, bounds: tuple[float, float] | None = None) -> dict:
    """Mean of the cells' values with a t CI over cells (n >= 2), or the single cell's own CI
    (``lows`` / ``highs``, e.g. the bench's bootstrap over prompts). ``source`` says which. With
    ``bounds`` (a rate's [0, 1]), a t CI reaching past them is cut there (two seeds' t CI of a
    rate easily spans ±0.3) and ``clipped`` is True."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    keep = ~np.isnan(v)
    v = v[keep]
    out = {"n": len(v), "mean": _clean(v.mean()) if len(v) else None, "low": None, "high": None, "source": None}
    if len(v) >= 2:
        sem = v.std(ddof=1) / math.sqrt(len(v))
        low, high = (v.mean(), v.mean()) if sem == 0 else stats.t.interval(level, len(v) - 1, loc=v.mean(), scale=sem)
        clipped = bool(bounds is not None and (low < bounds[0] or high > bounds[1]))
        if clipped:
            low, high = max(low, bounds[0]), min(high, bounds[1])
        out |= {"low": _clean(low), "high": _clean(high), "source": "cells", "clipped": clipped}
    elif len(v) == 1 and lows is not None and highs is not None:
        low, high = np.asarray(lows, dtype=float)[keep][0], np.asarray(highs, dtype=float)[keep][0]
        if not (math.isnan(low) or math.isnan(high)):
            out |= {"low": _clean(low), "high": _clean(high), "source": "cell"}
    return out


def _ci_columns(rows: pd.DataFrame, y: str) -> tuple:
    if f"{y}.low" in rows.columns and f"{y}.high" in rows.columns:
        return _numeric(rows, f"{y}.low", "y.low"), _numeric(rows, f"{y}.high", "y.high")
    return None, None


def describe(df: pd.DataFrame, y: str, by: str | None = "method", level: float = 0.95) -> list[dict]:
    """Per group: ``mean_ci`` of y over its cells."""
    require_columns(df, y=y, by=by)
    return [{"group": g} | mean_ci(_numeric(rows, y, "y"), *_ci_columns(rows, y), level=level, bounds=metric_range(y))
            for g, rows in _groups(df, by)]


def curve(df: pd.DataFrame, x: str, y: str, by: str | None = "method", level: float = 0.95) -> list[dict]:
    """Per group and x value (sorted): ``mean_ci`` of y over the cells there."""
    require_columns(df, x=x, y=y, by=by)
    out = []
    for g, rows in _groups(df, by):
        xs = _numeric(rows, x, "x")
        for value in sorted(xs.dropna().unique()):
            at = rows[xs == value]
            out.append({"group": g, "x": float(value)} | mean_ci(_numeric(at, y, "y"), *_ci_columns(at, y),
                                                                  level=level, bounds=metric_range(y)))
    return out
