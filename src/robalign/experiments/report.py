"""DIR/index.html for a sweep: one self-contained page that answers the research question.

Reads only the results store (``Store.frame``, ``Store.samples``, ``Store.sweeps``); the one
place a run directory appears is the link a cell row carries to it. The page holds:

1. headline sentences computed from the table, each with its CI: the un-aligned model's
   safety (``method=none``), each method's at the lowest noise and its paired difference from
   ``none``, and how safety moves across the swept noise and duration ranges (OLS);
2. figures (matplotlib, ``figures.py`` and ``study_figures.py``; PNG embedded as base64 and written to DIR/figures/):
   safety vs noise per method with CI bands, safety vs duration, safety heatmaps over attacks
   and categories, reward accuracy on clean held-out labels beside the noisy training labels;
   then the ShaPO study's figures, each only when the store holds its data, each with the table
   of numbers behind it: the soft-label reward margins (Figure 5), the probe's epochs (Figure 6)
   and the training reward margins (Figure 7) from the ``curves`` table (``curves.py``), the
   attack success rate per method and judge, and the composition of each data-robust loss with
   ShaPO (Figure 4; methods told apart by the train config in the cells' provenance);
3. the analysis tables (``analysis.py``) behind the sentences;
4. a cell table: each row links to the cell's run_dir (relative to DIR when possible) and to
   the cell's per-sample drill-down on this page;
5. per-sample differences between cells that differ only in method: the prompts whose verdict
   changed (e.g. DPO vs ShaPO at the same noise, seed and duration), with both answers.

Style and escaping follow ``robalign.bench.report`` (its CSS is reused): every text goes
through ``html.escape``, since answers are attacker-influenced. Drill-downs show at most
``max_samples`` rows per cell (the store keeps them all) so a 20-cell sweep stays a few MB.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from robalign.bench import charts
from robalign.bench.report import STYLE as BENCH_STYLE
from robalign.experiments import analysis, curves
from robalign.experiments.analysis import DURATIONS, sweep_axes
from robalign.experiments.figures import CLEAN_ACC, NOISY_ACC, SAFETY, make_figures
from robalign.experiments.study_figures import STUDY, method_recipes, study_figures

KEY_METRICS = (SAFETY, "clear_bias/robustness", "clear_bias/fairness", "clear_bias/base/safety",
               "clear_bias_llm/safety", "judges/kappa", "harmful/compliance", "harmful/refusal", "pairwise/win_rate",
               CLEAN_ACC, NOISY_ACC)
# verdicts counted as a move to safety and away from it, per benchmark: CLEAR-Bias (R, D robust; S, CS a
# side taken) and harmful requests (the safety verdict). A harmful *safe* request is labelled by refusal
# (R / NR / C / P): refusing it is over-refusal, neither safer nor less safe, so it is not counted.
DIRECTION = {"clear_bias": ({"R", "D"}, {"S", "CS"}), "harmful": ({"safe"}, {"unsafe"})}
DIFF_ROWS = 40  # changed prompts listed per pair of cells
STYLE = BENCH_STYLE + """
img.fig{max-width:100%;border:1px solid #eee;margin:6px 0} ul.headline{padding-left:30px} .headline li{margin:4px 0}
nav a{margin-right:12px} .lab{white-space:nowrap}
section.cell{border-top:1px solid #eee;margin-top:18px} :target{background:#eff6ff}
"""


@dataclass
class ReportData:
    frame: pd.DataFrame    # Store.frame(sweep): one row per finished cell
    samples: pd.DataFrame  # Store.samples(sweep): one row per judged answer, column "cell" among them
    sweep: str | None
    info: dict             # the store's record of the sweep (name, created, config, provenance, counts)
    store_url: str         # already redacted
    curves: pd.DataFrame | None = None  # curves.read_curves: cell, name, step, value (the study figures)
    recipes: dict = field(default_factory=dict)  # method -> study_figures.Recipe (loss family, ShaPO) from provenance


def collect(store, sweep: str | None = None) -> ReportData:
    """Everything the page shows, read from ``store``. Without ``sweep`` the store must hold one."""
    from robalign.errors import UserError
    from robalign.evaluation.specs import redact_url

    records = store.sweeps()
    if sweep is None:
        if len(records) != 1:
            names = ", ".join(r["name"] for r in records) or "none"
            raise UserError(f"the store holds {len(records)} sweeps ({names}): name one with --sweep")
        sweep = records[0]["name"]
    info = next((r for r in records if r["name"] == sweep), None)
    if info is None:
        raise UserError(f"no sweep {sweep!r} in the store; sweeps: {', '.join(r['name'] for r in records) or 'none'}")
    frame = store.frame(sweep)
    if frame.empty:
        raise UserError(f"sweep {sweep!r} has no finished cell yet (cells: {info.get('counts')})")
    recipes = method_recipes(store.cells(sweep)) if hasattr(store, "cells") else {}
    frame, recipes = fold_arms(frame, recipes)
    return ReportData(order_cells(frame), store.samples(sweep), sweep, info, redact_url(store.url),
                      curves.read_curves(store, sweep, curves.REPORT_PREFIXES), recipes)


def fold_arms(frame: pd.DataFrame, recipes: dict | None = None) -> tuple[pd.DataFrame, dict]:
    """Grid axes other than method, seed, noise and duration (a ShaPO mask, an ascent, beta_r ...)
    folded into the method column: ``shapo mask=subspace:top ascent=fresh`` is one arm of the
    comparison, so every table, figure and paired difference compares arms (matched on seed,
    noise and duration) instead of pooling them under ``shapo``. The folded columns are dropped."""
    recipes = dict(recipes or {})
    if "method" not in frame.columns:
        return frame, recipes
    axes = set(sweep_axes(frame)) | {"method", "seed"}
    extra = [c for c in analysis.param_columns(frame) if c not in axes and frame[c].nunique(dropna=True) > 1]
    if not extra:
        return frame, recipes
    base = frame["method"].astype(str)

    def arm(row, shown) -> str:
        return row["method"] + "".join(f" {c.rsplit('.', 1)[-1]}={_v(row[c])}" for c in shown if not _missing(row[c]))

    def meaningful(row) -> list[str]:  # a ShaPO setting of a method that trains without ShaPO says nothing
        recipe = recipes.get(row["method"])  # study_figures.Recipe (loss, shapo)
        plain = recipe is not None and not recipe[1]
        return [c for c in extra if not (plain and c.startswith("training.shapo."))]

    arms = frame.apply(lambda r: arm(r, extra), axis=1)
    short = frame.apply(lambda r: arm(r, meaningful(r)), axis=1)
    keys = [c for c in ("seed", *sweep_axes(frame)) if c in frame.columns]
    for method in base.unique():  # the short names unless they merge cells a ShaPO axis kept apart
        rows = base == method
        if not frame.loc[rows, keys].assign(_arm=short[rows]).duplicated().any():
            arms[rows] = short[rows]
    arms = arms.where(base != "none", "none")  # the un-aligned model has no arm: its skip rules fix the rest
    recipes |= {arm: recipes[m] for arm, m in zip(arms, base) if m in recipes}
    return frame.drop(columns=extra).assign(method=arms), recipes


# -------------------------------------------------------------------- what to plot against what

def _groups(frame: pd.DataFrame) -> list[str]:
    return [str(m) for m in analysis.group_order(frame["method"]) if m is not None] if "method" in frame.columns else []


def order_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows by method (``none`` first), then by every other parameter: the cell table's order."""
    params = [c for c in analysis.param_columns(frame) if c != "method"]
    if "method" not in frame.columns:
        return frame.sort_values(params, kind="stable").reset_index(drop=True) if params else frame
    rank = {m: i for i, m in enumerate(analysis.group_order(frame["method"]))}
    keyed = frame.assign(_rank=frame["method"].map(lambda m: rank.get(m, len(rank))))
    return keyed.sort_values(["_rank", *params], kind="stable").drop(columns="_rank").reset_index(drop=True)


def cell_labels(frame: pd.DataFrame) -> dict[str, str]:
    """cell -> ``method=dpo noise_rate=0.2 steps=300 seed=0``: method, the parameters that vary, seed."""
    params = analysis.param_columns(frame)
    shown = [c for c in params if c in ("method", "seed") or frame[c].nunique(dropna=True) > 1]
    shown = sorted(shown, key=lambda c: (c != "method", c == "seed"))
    return {r["cell"]: " ".join(f"{c.rsplit('.', 1)[-1]}={_v(r[c])}" for c in shown if not _missing(r[c]))
            for _, r in frame.iterrows()}


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def _v(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


# -------------------------------------------------------------------- headline sentences

def _cells(n: int) -> str:
    return f"{n} cell" if n == 1 else f"{n} cells"


def _ci_text(d: dict, digits: int = 3) -> str:
    if d.get("low") is None:
        return "(no CI: one cell)" if d.get("n") == 1 else "(no CI)"
    how = _how(d)
    return f"[{d['low']:.{digits}f}, {d['high']:.{digits}f}] (95% {how})"


def _how(d: dict) -> str:
    if d.get("source") != "cells":
        return "the cell's own CI"
    return "t CI over cells, cut at the rate's range [0, 1]" if d.get("clipped") else "t CI over cells"


def _signed(v: float, digits: int = 3) -> str:
    return f"{round(v, digits) + 0.0:+.{digits}f}"  # + 0.0: no "-0.000"


def _slope_sentence(row: dict, frame: pd.DataFrame, x: str, y: str, what: str) -> str:
    xs = pd.to_numeric(frame[frame["method"].astype(str) == row["group"]][x], errors="coerce").dropna()
    if row["slope"] is None:
        return f"{row['group']}: no trend with {what} ({row['note']})."
    lo, hi = xs.min(), xs.max()
    span = hi - lo
    if row["constant"]:
        return f"{row['group']}: {y} stays at {row['intercept']:.3f} from {what} {lo:g} to {hi:g} (all {row['n']} cells)."
    if row["low"] is not None:
        ci = f" [{_signed(row['low'] * span)}, {_signed(row['high'] * span)}]"
        ci += f", p = {row['p']:.2g}" if row["p"] is not None else f" ({row['note']})"
    else:
        ci = f" (no CI: {_cells(row['n'])})"
    return (f"{row['group']}: {y} moves by {_signed(row['slope'] * span)}{ci} from {what} {lo:g} to {hi:g} "
            f"(OLS over {_cells(row['n'])}, slope {row['slope'] + 0.0:+.3g} per unit).")


def headline(frame: pd.DataFrame, y: str = SAFETY) -> list[str]:
    """The page's opening sentences, each with its CI, computed from the table alone."""
    if y not in frame.columns:
        return [f"No cell holds the metric {y}: nothing to say about safety. Metrics present: "
                f"{', '.join(analysis.metric_columns(frame)) or 'none'}."]
    noise, duration = sweep_axes(frame)
    methods = _groups(frame)
    out = []
    base = frame[frame["method"].astype(str) == "none"] if "method" in frame.columns else frame.iloc[:0]
    if len(base):
        out.append(f"Un-aligned model (method=none): {y} = {_levels(base, y, duration)}.")
    else:
        out.append("No cell with method=none: this sweep has no un-aligned baseline to compare with.")
    low = frame[frame[noise] == frame[noise].min()] if noise else frame
    where = f" at noise {frame[noise].min():g}" if noise else ""
    comparisons = {(r["a"], r["b"]): r for r in analysis.paired(low, y, at=None)} if len(methods) > 1 else {}
    for m in methods:
        if m == "none":
            continue
        text = f"After {m}{where}: {y} = {_levels(low[low['method'].astype(str) == m], y, duration)}"
        p = comparisons.get(("none", m))  # group_order puts none first: the difference is m - none
        if p and p["mean_diff"] is not None:
            ci = f"[{p['low']:+.3f}, {p['high']:+.3f}]" if p["low"] is not None else f"({p['note']})"
            text += f"; {m} − none = {p['mean_diff']:+.3f} {ci} over {p['n']} matched {_cells(p['n']).split()[1]}"
        out.append(text + ".")
    for x, what in ((noise, "noise rate"), (duration, DURATIONS.get(duration or "", duration))):
        if x:
            out += [_slope_sentence(r, frame, x, y, what) for r in analysis.slopes(frame, x, y)
                    if not (r["group"] == "none" and x == noise)]
    aligned = [m for m in methods if m != "none"]
    if len(aligned) > 1:
        for r in analysis.paired(frame[frame["method"].astype(str).isin(aligned)], y, at=noise):
            if len(aligned) > 3 and r["a"] != aligned[0] and not _base_pair(r["a"], r["b"]):
                continue  # many arms: each against the first aligned one and X_shapo against X, not every pair
            if r["b"] is not None and r["mean_diff"] is not None:
                ci = f"[{r['low']:+.3f}, {r['high']:+.3f}]" if r["low"] is not None else f"({r['note']})"
                where = f" at noise {r['at']:g}" if noise else ""
                out.append(f"{r['b']} − {r['a']}{where}: {r['mean_diff']:+.3f} {ci} over {r['n']} "
                           f"matched {_cells(r['n']).split()[1]}.")
    out += _side_lines(frame, methods)
    return out


def _base_pair(a: str | None, b: str | None) -> bool:
    """True for a method and its ShaPO variant (``rdpo`` and ``rdpo_shapo``): the composition study's pairs."""
    return a is not None and b is not None and (a == f"{b}_shapo" or b == f"{a}_shapo")


def _levels(rows: pd.DataFrame, y: str, duration: str | None) -> str:
    """``0.884 [0.854, 0.886] at 200 pre-training steps, ...``: one value per duration (the cell's own CI
    when the duration has one cell, a t CI over its cells, e.g. seeds, when it has more), or one overall."""
    if not (duration and rows[duration].nunique(dropna=True) > 1):
        d = analysis.describe(rows, y, by=None)[0]
        return f"{d['mean']:.3f} {_ci_text(d)} ({_cells(d['n'])})" if d["mean"] is not None else "no value"
    parts, sources = [], set()
    for value, at in rows.groupby(duration, sort=True):
        d = analysis.describe(at, y, by=None)[0]
        where = f"at {_v(value)} {DURATIONS.get(duration, duration)}"
        if d["mean"] is None:
            parts.append(f"no value {where}")
            continue
        ci = f" [{d['low']:.3f}, {d['high']:.3f}]" if d.get("low") is not None else ""
        sources.add(_how(d) if ci else "no CI")
        parts.append(f"{d['mean']:.3f}{ci} {where}")
    return ", ".join(parts) + f" (95%: {', '.join(sorted(sources))})"


def _side_lines(frame: pd.DataFrame, methods: list[str]) -> list[str]:
    """The judges' agreement on the same answers, and harmful-request compliance per method."""
    out = []
    if "judges/kappa" in frame.columns and frame["judges/kappa"].notna().any():
        k = pd.to_numeric(frame["judges/kappa"], errors="coerce").dropna()
        out.append(f"The sweep's judges agree with Cohen's κ from {k.min():.2f} to {k.max():.2f} over {_cells(len(k))} "
                   f"(median {k.median():.2f}; each cell's κ has its CI in the cell table).")
    if "harmful/compliance" in frame.columns and frame["harmful/compliance"].notna().any():
        noise, duration = sweep_axes(frame)
        low = frame[frame[noise] == frame[noise].min()] if noise else frame
        where = f" at noise {frame[noise].min():g}" if noise else ""
        out += [f"Compliance with harmful requests{where}, {m}: "
                f"{_levels(low[low['method'].astype(str) == m], 'harmful/compliance', duration)}." for m in methods]
        if noise:
            out += [_slope_sentence(r, frame, noise, "harmful/compliance", "noise rate")
                    for r in analysis.slopes(frame, noise, "harmful/compliance") if r["group"] != "none"]
    return out


# -------------------------------------------------------------------- HTML pieces

def _e(x: Any) -> str:
    return escape("" if x is None else str(x), quote=True)


def _num(v, digits: int = 3) -> str:
    return "–" if v is None or _missing(v) else f"{float(v):.{digits}f}"


def _g(v, digits: int = 3) -> str:
    return "–" if v is None or _missing(v) else f"{float(v):.{digits}g}"


def _ci(low, high, digits: int = 3) -> str:
    if low is None or high is None or _missing(low) or _missing(high):
        return ""
    return f" <span class='ci'>[{float(low):.{digits}f}, {float(high):.{digits}f}]</span>"


def anchor(cell: str) -> str:
    return "cell-" + re.sub(r"[^A-Za-z0-9_-]", "_", str(cell))


def run_href(run_dir: str | None, out_dir: Path) -> str | None:
    """A link from DIR/index.html to the run directory: relative when both are local paths."""
    if not run_dir or _missing(run_dir):
        return None
    if re.match(r"^[a-z][a-z0-9+.-]*://", str(run_dir)):
        return str(run_dir)
    target = Path(run_dir).expanduser().resolve()
    try:
        rel = os.path.relpath(target, out_dir.resolve())
    except ValueError:  # another drive on Windows
        return target.as_uri()
    return quote(Path(rel).as_posix() + "/")


def _p_holm(r: dict, name: str) -> str:
    return "–" if r.get(name) is None else f"{_g(r[name], 2)} ({_g(r[name + '_holm'], 2)})"


def _table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<div class='wide'><table class='{cls}'><tr>{head}</tr>{body}</table></div>"


def _analysis_section(frame: pd.DataFrame, y: str, n_boot: int) -> str:
    noise, duration = sweep_axes(frame)
    out = ["<h2 id='analysis'>Analysis tables</h2><p class='muted'>Unit: the cell. Correlation CIs: 95% percentile "
           f"bootstrap over cells ({n_boot} resamples, seed 0); slopes: OLS with t CI; paired: mean of b − a over cells "
           "matched on every other grid key (seed included), paired t CI; p of the paired t test and of the Wilcoxon "
           "signed-rank test, each family Holm-corrected across the table's comparisons in brackets.</p>"]
    if y not in frame.columns:
        return out[0] + f"<p>No {_e(y)} metric in this sweep.</p>"
    for x in (a for a in (noise, duration) if a):
        out.append(f"<h3>{_e(y)} against {_e(x)}</h3>")
        corr = analysis.correlations(frame, x, y, n_boot=n_boot)
        out.append(_table(["method", "n", "Spearman", "Kendall τ-b", "Pearson", "note"], [
            [_e(r["group"]), str(r["n"]), *(_num(r[k]["value"]) + _ci(r[k]["low"], r[k]["high"]) +
                                             (f"<br><span class='ci'>p = {r[k]['p']:.2g}</span>"
                                              if r[k]["p"] is not None else "") for k in ("spearman", "kendall", "pearson")),
             _e(r["note"] or "")] for r in corr]))
        out.append(_table(["method", "n", "OLS slope per unit [CI]", "p", "R²", "note"], [
            [_e(r["group"]), str(r["n"]), _g(r["slope"]) + (f" <span class='ci'>[{_g(r['low'])}, {_g(r['high'])}]"
                                                            "</span>" if r["low"] is not None else ""),
             _g(r["p"], 2), _num(r["r2"], 2), _e(r["note"] or "")] for r in analysis.slopes(frame, x, y)]))
        if x == noise:
            out.append(_table([_e(x), "a", "b", "pairs", "mean b − a [CI]", "paired t p (Holm)",
                               "Wilcoxon p (Holm)", "note"], [
                [_e(_v(r["at"])), _e(r["a"] or "–"), _e(r["b"] or "–"), str(r["n"]),
                 _num(r["mean_diff"], 4) + _ci(r["low"], r["high"], 4), _p_holm(r, "p"), _p_holm(r, "p_wilcoxon"),
                 _e(r["note"] or "")]
                for r in analysis.paired(frame, y, at=x)]))
    rows = []
    for metric in (m for m in KEY_METRICS if m in frame.columns):
        for d in (d for d in analysis.describe(frame, metric) if d["n"]):
            rows.append([_e(metric), _e(d["group"]), str(d["n"]), _num(d["mean"]) + _ci(d["low"], d["high"])])
    out.append("<h3>Key metrics per method (mean over cells, 95% CI)</h3>" + _table(["metric", "method", "cells",
                                                                                    "mean [CI]"], rows))
    return "".join(out)


def _cell_table(frame: pd.DataFrame, labels: dict, out_dir: Path, counts: dict) -> str:
    metrics = [m for m in KEY_METRICS if m in frame.columns]
    rows = []
    for _, r in frame.iterrows():
        href = run_href(r.get("run_dir"), out_dir)
        link = f"<a href='{_e(href)}'>run&nbsp;dir</a>" if href else "–"
        vals = []
        for m in metrics:
            v = r[m]
            color = charts.safety_color(None if _missing(v) else float(v)) if m.endswith("/safety") else None
            style = f" style='background:{color};color:{charts.text_color(color)}'" if color else ""
            vals.append(f"<span{style}>{_num(v)}</span>{_ci(r.get(f'{m}.low'), r.get(f'{m}.high'))}")
        n = counts.get(r["cell"], 0)
        rows.append([f"<span class='lab' id='row-{_e(anchor(r['cell']))}'>{_e(labels[r['cell']])}</span><br>"
                     f"<small class='muted'>{_e(r['cell'])}</small>", link,
                     f"<a href='#{_e(anchor(r['cell']))}'>{n} samples</a>", *vals])
    return ("<h2 id='cells'>Cells</h2><p class='muted'>Each row links to the cell's run directory and to its answers "
            "below.</p>" + _table(["cell", "run", "drill-down", *(_e(m).replace("/", "/<wbr>") for m in metrics)], rows))


def _diff_section(frame: pd.DataFrame, samples: pd.DataFrame, labels: dict) -> str:
    """Cells that differ only in method, joined on (benchmark, prompt, attack, judge): verdict changes."""
    head = "<h2 id='diffs'>Per-sample differences between methods</h2>"
    if samples.empty or "method" not in frame.columns:
        return head + "<p>No samples in the store for this sweep.</p>"
    noise, _ = sweep_axes(frame)
    key = [c for c in ("benchmark", "prompt_id", "attack", "judge") if c in samples.columns]
    summary, blocks = [], []
    for i, p in enumerate(analysis.pairs(frame, at=noise)):
        a = samples[samples["cell"] == p["cell_a"]]
        b = samples[samples["cell"] == p["cell_b"]]
        j = a.merge(b, on=key, suffixes=("_a", "_b"))
        changed = j[j["label_a"].astype(str) != j["label_b"].astype(str)]
        moves = Counter(zip(changed["label_a"].astype(str), changed["label_b"].astype(str)))
        safer = worse = 0
        for bench, x, y in zip(changed["benchmark"], changed["label_a"].astype(str), changed["label_b"].astype(str)):
            safe, unsafe = DIRECTION.get(str(bench), (set(), set()))
            safer += x in unsafe and y in safe
            worse += x in safe and y in unsafe
        ident = f"diff-{i}"
        where = " ".join(f"{k.rsplit('.', 1)[-1]}={_v(v)}" for k, v in p["key"].items() if not _missing(v))
        at = f"noise={_v(p['at'])} " if noise else ""
        summary.append([f"<a href='#{ident}'>{_e(p['a'])} → {_e(p['b'])}</a>", _e(at + where), str(len(j)),
                        str(len(changed)), str(safer), str(worse),
                        _e(", ".join(f"{x}→{y} ×{n}" for (x, y), n in moves.most_common(6)))])
        rows = [[_e(r["benchmark"]), _e(r["prompt_id"]), _e(r.get("category_a", "")), _e(r["attack"] or "base"),
                 f"<b>{_e(r['label_a'])}</b> → <b>{_e(r['label_b'])}</b>",
                 f"<details><summary>{_e(str(r['answer_a'])[:70])}</summary><b>prompt</b><pre>{_e(r['prompt_a'])}"
                 f"</pre><b>{_e(p['a'])}</b><pre>{_e(r['answer_a'])}</pre><b>{_e(p['b'])}</b><pre>{_e(r['answer_b'])}"
                 "</pre></details>"] for _, r in changed.head(DIFF_ROWS).iterrows()]
        more = f"<p class='muted'>{len(changed) - DIFF_ROWS} more not shown.</p>" if len(changed) > DIFF_ROWS else ""
        blocks.append(f"<details id='{ident}'><summary>{_e(p['a'])} → {_e(p['b'])}, {_e(at + where)}: "
                      f"{len(changed)} of {len(j)} verdicts changed (cells <a href='#{anchor(p['cell_a'])}'>"
                      f"{_e(labels.get(p['cell_a']))}</a> and <a href='#{anchor(p['cell_b'])}'>"
                      f"{_e(labels.get(p['cell_b']))}</a>)</summary>"
                      + (_table(["benchmark", "prompt", "category", "attack", "verdict a → b", "answers"], rows) if rows
                         else "<p>No verdict changed.</p>") + more + "</details>")
    if not summary:
        return head + "<p>No two cells differ only in method.</p>"
    return (head + "<p class='muted'>Pairs of cells equal in every grid key but the method; answers joined on "
            f"({', '.join(key)}); a → b reads from the first method's verdict to the second's. Safer: S/CS → R/D "
            "(CLEAR-Bias), unsafe → safe (harmful requests); less safe: the reverse.</p>"
            + _table(["pair", "at", "compared", "changed", "safer", "less safe", "transitions"], summary)
            + "".join(blocks))


def _drilldown(frame: pd.DataFrame, samples: pd.DataFrame, labels: dict, max_samples: int) -> str:
    out = ["<h2 id='drilldown'>Per-cell samples</h2>"]
    by_cell = dict(tuple(samples.groupby("cell", sort=False))) if not samples.empty else {}
    for cell in frame["cell"]:
        rows = by_cell.get(cell, samples.iloc[:0])
        counts = ""
        if len(rows):
            tab = rows.groupby([c for c in ("benchmark", "judge") if c in rows.columns])["label"].value_counts()
            counts = _table(["benchmark / judge", "verdict counts"], [
                [_e(" / ".join(map(str, k)) if isinstance(k, tuple) else k),
                 _e(", ".join(f"{lab} {n}" for lab, n in sub.droplevel(list(range(sub.index.nlevels - 1))).items()))]
                for k, sub in tab.groupby(level=list(range(tab.index.nlevels - 1)))])
        body = [[_e(r["benchmark"]), _e(r["prompt_id"]), _e(r.get("category", "")), _e(r.get("attack") or "base"),
                 _e(r.get("judge", "")), f"<b>{_e(r['label'])}</b>",
                 f"<details><summary>{_e(str(r['answer'])[:90] or '(no answer)')}</summary><b>prompt</b><pre>"
                 f"{_e(r['prompt'])}</pre><b>answer</b><pre>{_e(r['answer'])}</pre>"
                 + (f"<b>extra</b><pre>{_e(json.dumps(r['extra'], default=str))}</pre>"
                    if isinstance(r.get("extra"), dict) and r.get("extra") else "") + "</details>"] for _, r in rows.head(max_samples).iterrows()]
        more = (f"<p class='muted'>First {max_samples} of {len(rows)} shown; the store keeps all.</p>"
                if len(rows) > max_samples else "")
        out.append(f"<section class='cell' id='{_e(anchor(cell))}'><h3>{_e(labels[cell])} "
                   f"<a href='#row-{_e(anchor(cell))}' class='muted'>↑ cell table</a></h3>{counts}"
                   + (_table(["benchmark", "prompt", "category", "attack", "judge", "verdict", "answer"], body)
                      if body else "<p>No samples stored for this cell.</p>") + more + "</section>")
    return "".join(out)


def _when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if hasattr(value, "strftime") else str(value or "–")


def _header(data: ReportData) -> str:
    info = data.info or {}
    cfg = info.get("config") or {}
    rows = [("sweep", _e(data.sweep)), ("store", _e(data.store_url)), ("lane", _e(cfg.get("lane", "–"))),
            ("cells", _e(", ".join(f"{k} {v}" for k, v in (info.get("counts") or {}).items()) or len(data.frame))),
            ("created", _e(_when(info.get("created")))),
            ("written", _e(dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")))]
    dump = lambda v: _e(json.dumps(v, indent=2, default=str, sort_keys=True))  # noqa: E731
    return (f"<h1>Sweep report: {_e(data.sweep)}</h1><table class='kv'>"
            + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"
            f"<details><summary>sweep config</summary><pre>{dump(cfg)}</pre></details>"
            f"<details><summary>provenance</summary><pre>{dump(info.get('provenance') or {})}</pre></details>"
            "<nav><a href='#headline'>headline</a><a href='#figures'>figures</a><a href='#analysis'>analysis</a>"
            "<a href='#cells'>cells</a><a href='#diffs'>differences</a><a href='#drilldown'>samples</a></nav>")


def _figure_html(name: str, caption: str, png: bytes, table=None) -> str:
    """One embedded figure with its caption and, for the study figures, the numbers behind it."""
    numbers = ""
    if table is not None:
        headers, rows = table
        numbers = ("<details class='data'><summary>the numbers behind this figure</summary>"
                   + _table([_e(h) for h in headers], [[_e(c) for c in r] for r in rows], cls="data") + "</details>")
    return (f"<figure id='fig-{_e(name)}'><img class='fig' alt='{_e(caption)}' src='data:image/png;base64,"
            f"{base64.b64encode(png).decode()}'><figcaption class='muted'>{_e(caption)}</figcaption>{numbers}</figure>")


def _figures_section(figs: dict[str, tuple]) -> str:
    body = "".join(_figure_html(name, *fig) for name, fig in figs.items())
    absent = [why for name, why in STUDY.items() if name not in figs]
    note = (f"<p class='muted'>Not drawn: {_e('; '.join(absent))}.</p>" if absent else "")
    return f"<h2 id='figures'>Figures</h2>{body or '<p>No figure: the sweep varies no axis.</p>'}{note}"


def render(data: ReportData, out_dir: Path, figs: dict[str, tuple], n_boot: int = 2000,
           max_samples: int = 200, y: str = SAFETY) -> str:
    """The page as one HTML string; ``figs`` from ``make_figures`` (caption, PNG) and ``study_figures``
    (caption, PNG, table), embedded as base64 PNG."""
    labels = cell_labels(data.frame)
    counts = data.samples["cell"].value_counts().to_dict() if not data.samples.empty else {}
    lines = "".join(f"<li>{_e(s)}</li>" for s in headline(data.frame, y))
    parts = [_header(data), f"<h2 id='headline'>Headline</h2><ul class='verdict headline'>{lines}</ul>",
             _figures_section(figs), _analysis_section(data.frame, y, n_boot),
             _cell_table(data.frame, labels, out_dir, counts), _diff_section(data.frame, data.samples, labels),
             _drilldown(data.frame, data.samples, labels, max_samples)]
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
            f"content='width=device-width, initial-scale=1'><title>Sweep report: {_e(data.sweep)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}{_OPEN_TARGET}</body></html>")


# a link to a collapsed per-pair block (#diff-3) opens it: browsers scroll to a closed <details> but leave it shut
_OPEN_TARGET = """<script>
(function () {
  function open() {
    var t = location.hash && document.getElementById(decodeURIComponent(location.hash.slice(1)));
    if (t && t.tagName === 'DETAILS') { t.open = true; t.scrollIntoView(); }
  }
  window.addEventListener('hashchange', open);
  open();
})();
</script>"""


def harmful_judge(info: dict) -> str | None:
    """The judge behind ``harmful/compliance``, from the sweep config (``rule`` runs as ``keyword`` there)."""
    judge = ((((info or {}).get("config") or {}).get("bench") or {}).get("harmful") or {}).get("judge")
    return "keyword" if judge == "rule" else judge


def write_report(store, out: str | Path, sweep: str | None = None, n_boot: int = 2000,
                 max_samples: int = 200) -> Path:
    """DIR/index.html and DIR/figures/*.png for ``sweep`` in ``store``; returns the page's path."""
    return write(collect(store, sweep), out, n_boot=n_boot, max_samples=max_samples)


def write(data: ReportData, out: str | Path, n_boot: int = 2000, max_samples: int = 200) -> Path:
    """Write the page and its figures for collected ``data``."""
    out = Path(out)
    labels = cell_labels(data.frame)
    figs = make_figures(data.frame, labels) | study_figures(data.frame, data.curves, data.recipes, labels,
                                                            harmful_judge(data.info))
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for name, (_, png, *_) in figs.items():
        (out / "figures" / f"{name}.png").write_bytes(png)
    page = out / "index.html"
    tmp = page.with_suffix(".html.tmp")  # a half-written page never replaces a whole one
    tmp.write_text(render(data, out, figs, n_boot=n_boot, max_samples=max_samples), encoding="utf-8")
    tmp.replace(page)
    return page
