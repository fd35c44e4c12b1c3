"""The ShaPO study's figures in a sweep report (issue 12): Figure 4 (composition of each data-robust
loss with ShaPO), Figure 5 (reward-margin distribution and sigma(beta_r * dr)), Figure 6 (probe loss
and accuracy per epoch), Figure 7 (training reward margins per method) and ASR per method and judge.

Each builder returns (caption, PNG, table) or None when the store holds nothing to draw; the table
(headers, rows of text) holds the numbers behind the figure, printed under it on the page. The
curves come from ``curves.py`` (the runner records them per cell); the drawing primitives and the
colours are ``figures.py``'s.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import pandas as pd

from robalign.experiments import analysis
from robalign.experiments.figures import PALETTE, SAFETY, _figure, _groups, _png, line_panels

BETA_R = (0.1, 1.0, 10.0)  # the ShaPO paper's Figure 5 compares these
BETA_COLORS = ("#9467bd", "#111111", "#e377c2")
ASR = "harmful/compliance"
ASR_PATTERN = re.compile(r"^harmful(?:_(?P<judge>[A-Za-z0-9]+))?/compliance$")  # harmful_<judge>/ for a 2nd judge
MARGIN_CURVE, DELTA_R, SOFT_Q = "train/rewards/margins", "soft_labels/reward_margin", "soft_labels/q"
ROBUST = ("cdpo", "rdpo", "drdpo")  # the data-robust losses of the composition (Figure 4)
BASE_COLOR, SHAPO_COLOR = "#1f77b4", "#ff7f0e"
MAX_SERIES = 6  # distinct margin sets / probes drawn in one figure
STUDY = {  # name -> what is missing when it is not drawn
    "reward_distribution": "reward-margin distribution (Figure 5): no soft-label margins in the store",
    "probe_curves": "probe curves (Figure 6): no probe history in the store",
    "train_margins": "training reward margins (Figure 7): no per-step rewards/margins in the store",
    "asr": "attack success rate: no harmful/compliance metric",
    "composition": "composition (Figure 4): no data-robust loss (cdpo, rdpo, drdpo) with and without ShaPO",
}
Table = tuple[list[str], list[list[str]]]


class Recipe(NamedTuple):
    loss: str  # the loss family: dpo, cdpo, rdpo, drdpo (Dr.DPO over dpo), drdpo(cdpo), soft, ...
    shapo: bool


def recipe(train_config: Mapping) -> Recipe | None:
    """A method's loss family and ShaPO flag from its resolved train config (``loss``, ``training.shapo``)."""
    loss = train_config.get("loss") or {}
    losses = list(loss.get("losses") or {})
    if not losses:
        return None
    family = "+".join([n for n in losses if n != "sft"] or losses)  # an auxiliary SFT term keeps the family
    if loss.get("aggregation") == "drdpo":
        family = "drdpo" if family == "dpo" else f"drdpo({family})"
    return Recipe(family, bool(((train_config.get("training") or {}).get("shapo") or {}).get("enabled")))


def method_recipes(cells: pd.DataFrame) -> dict[str, Recipe]:
    """method -> Recipe from the train config in each done cell's provenance (``Store.cells``; a
    method's first cell decides; ``none`` has no train config)."""
    out: dict[str, Recipe] = {}
    for _, row in cells.iterrows():
        method = (row.get("params") or {}).get("method")
        config = (row.get("provenance") or {}).get("train_config")
        if row.get("status") == "done" and method is not None and str(method) not in out and isinstance(config, Mapping):
            if (r := recipe(config)) is not None:
                out[str(method)] = r
    return out


def _f(v, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.{digits}f}"


def _mean_text(d: dict) -> str:
    if d.get("mean") is None:
        return "–"
    return _f(d["mean"]) + (f" [{_f(d['low'])}, {_f(d['high'])}]" if d.get("low") is not None else " (no CI)")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _by_cell(curves: pd.DataFrame, name: str, order: list[str]) -> dict[str, np.ndarray]:
    """cell -> the series' values by step, for the cells in ``order`` (the page's cell order)."""
    rows = curves[curves["name"] == name]
    got = {c: g.sort_values("step")["value"].to_numpy(dtype=float) for c, g in rows.groupby("cell")}
    return {c: got[c] for c in order if c in got}


def _common_label(cells: list[str], labels: dict[str, str]) -> str:
    """The cells' methods, then the ``key=value`` parts every cell's label shares: ``shapo noise_rate=0``."""
    parts = [labels.get(c, c).split() for c in cells]
    methods = list(dict.fromkeys(p.split("=", 1)[1] for ps in parts for p in ps if p.startswith("method=")))
    shared = [p for p in parts[0] if all(p in other for other in parts[1:]) and not p.startswith("method=")]
    who = ", ".join(methods) if len(methods) <= 3 else f"{len(methods)} methods"
    return " ".join([who, *shared]).strip() or "all cells"


def bar_panels(panels: list[tuple[str, list[tuple[str, list[tuple]]]]], y_label: str, title: str,
               legend: list[tuple[str, str]], bar_ticks: bool, ncols: int = 3) -> bytes:
    """Grouped bars with CI error bars, one panel per ``(title, groups)`` (``ncols`` a row); a group is
    ``(label, bars)``, a bar ``(label, mean, low, high, color)``. ``bar_ticks``: each bar named under it
    and the group below that; else one tick per group and the bars told apart by the legend's colours."""
    cols = max(1, min(len(panels), ncols))
    rows = math.ceil(len(panels) / cols)
    widest = max(sum(len(b) for _, b in groups) + len(groups) for _, groups in panels)
    notes = any("\n" in g for _, groups in panels for g, _ in groups)  # a group label of several lines
    fig = _figure(min(max(4.0, (0.55 if notes else 0.42) * widest + 1.8) * cols, 14),
                  (3.9 if bar_ticks else 3.3) * rows + (0.35 * rows if notes else 0))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, (panel, groups) in zip(axes, panels):
        x, ticks, names, centres = 0.0, [], [], []
        for group, bars in groups:
            start = x
            for label, mean, low, high, color in bars:
                if mean is not None:
                    ax.bar(x, mean, width=0.8, color=color)
                    if low is not None and high is not None:
                        ax.errorbar(x, mean, yerr=[[mean - low], [high - mean]], color="#111", capsize=3, lw=1)
                    top = max(mean, high) if high is not None else mean  # a CI past the axis is cut at its top
                    ax.text(x, min(top, 1.03), f"{mean:.2f}", ha="center", va="bottom", fontsize=7)
                ticks.append(x)
                names.append(label)
                x += 1
            centres.append(((start + x - 1) / 2, group))
            x += 0.7
        if bar_ticks:
            ax.set_xticks(ticks, names, rotation=30, ha="right", fontsize=8)
            below = ax.secondary_xaxis("bottom")
            below.set_xticks([c for c, _ in centres], [g for _, g in centres], fontsize=8 if notes else 9,
                             fontweight="bold")
            below.tick_params(length=0, pad=52)
        else:  # long arm names side by side would run into each other: slanted
            slant = max((len(g) for _, g in centres), default=0) > 12
            ax.set_xticks([c for c, _ in centres], [g for _, g in centres], fontsize=8 if slant else 9,
                          rotation=25 if slant else 0, ha="right" if slant else "center")
        ax.set_ylim(0, 1.12)
        ax.set_title(panel, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(y_label)
    if legend:
        from matplotlib.patches import Patch

        fig.legend([Patch(color=c) for _, c in legend], [n for n, _ in legend], loc="outside lower center",
                   ncols=len(legend), fontsize=9, frameon=False)  # below: a narrow figure has no room beside its title
    fig.suptitle(title, fontsize=11)
    return _png(fig)


def margin_histograms(series: list[tuple[str, np.ndarray]], betas: tuple[float, ...] = BETA_R) -> bytes:
    """(a) Δr histograms, the first filled, and on a second axis q = σ(β_r·Δr/sd) for each β_r
    (sd of the first set); (b) the histogram of that q over the first set for each β_r."""
    fig = _figure(11.5, 3.8)
    left, right = fig.subplots(1, 2)
    ref = series[0][1]
    sd = float(ref.std(ddof=1)) if len(ref) > 1 else math.nan
    lo, hi = min(float(v.min()) for _, v in series), max(float(v.max()) for _, v in series)
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 41)
    for i, (label, v) in enumerate(series):
        left.hist(v, bins=bins, color=PALETTE[i % len(PALETTE)], label=f"{label} (n = {len(v)})",
                  histtype="stepfilled" if i == 0 else "step", alpha=0.35 if i == 0 else 1.0, lw=1.5)
    left.set_xlabel("Δr = r(chosen) − r(rejected)")
    left.set_ylabel("pairs")
    left.set_title("(a) reward margins and q = σ(β_r·Δr/sd)", fontsize=10)
    if sd > 0:
        twin, xs = left.twinx(), np.linspace(bins[0], bins[-1], 200)
        for beta, color in zip(betas, BETA_COLORS):
            twin.plot(xs, _sigmoid(beta * xs / sd), ls="--", color=color, lw=1.5, label=f"q, β_r = {beta:g}")
            right.hist(_sigmoid(beta * ref / sd), bins=np.linspace(0, 1, 21), histtype="step", lw=2, color=color,
                       label=f"β_r = {beta:g}")
        twin.set_ylim(0, 1.02)
        twin.set_ylabel("q")
        right.legend(fontsize=8, frameon=False)
    handles = [h for ax in fig.axes if ax is not right for h in ax.get_legend_handles_labels()[0]]
    fig.legend(handles, [h.get_label() for h in handles], loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    right.set_xlabel("soft label q (first set)")
    right.set_ylabel("pairs")
    right.set_title("(b) the soft labels each β_r gives", fontsize=10)
    return _png(fig)


def epoch_panels(probes: list[tuple[str, dict[str, tuple[np.ndarray, np.ndarray]]]]) -> bytes:
    """Loss and accuracy per epoch, train solid and held-out dashed, a colour per probe."""
    fig = _figure(11, 3.5)
    axes = dict(zip(("loss", "accuracy"), fig.subplots(1, 2)))
    for i, (label, fields) in enumerate(probes):
        for kind, ax in axes.items():
            for split, ls in (("train", "-"), ("eval", "--")):
                if f"{split}_{kind}" in fields:
                    x, y = fields[f"{split}_{kind}"]
                    ax.plot(x, y, ls=ls, color=PALETTE[i % len(PALETTE)], marker="o" if len(x) <= 30 else None, ms=3,
                            label=f"{label}, {'held-out' if split == 'eval' else 'train'}")
    axes["loss"].set(xlabel="epoch", ylabel="cross-entropy", title="probe loss")
    axes["accuracy"].set(xlabel="epoch", ylabel="accuracy", title="probe accuracy", ylim=(0, 1.02))
    from matplotlib.ticker import MaxNLocator

    for ax in axes.values():
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, names = axes["loss"].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside right upper", fontsize=8, frameon=False)
    return _png(fig)


def reward_distribution(curves: pd.DataFrame, labels: dict[str, str], frame: pd.DataFrame):
    """Figure 5: the soft-label pairs' Δr, one histogram per distinct set (cells on one file share it),
    the set at the lowest noise rate first (then the one most cells share): the reference for q."""
    delta = _by_cell(curves, DELTA_R, list(labels))
    if not delta:
        return None
    q = _by_cell(curves, SOFT_Q, list(labels))
    distinct: dict[bytes, list[str]] = {}
    for cell, values in delta.items():
        distinct.setdefault(values.tobytes(), []).append(cell)
    noise = (pd.to_numeric(frame.set_index("cell")[analysis.NOISE], errors="coerce").to_dict()
             if analysis.NOISE in frame.columns else {})
    rate = lambda c: math.inf if math.isnan(noise.get(c, math.nan)) else noise[c]  # noqa: E731
    sets = sorted(distinct.values(), key=lambda cells: (min(map(rate, cells)), -len(cells)))[:MAX_SERIES]
    series = [(_common_label(cells, labels), delta[cells[0]]) for cells in sets]
    rows = []
    for (label, v), cells in zip(series, sets):
        sd = float(v.std(ddof=1)) if len(v) > 1 else math.nan
        given = [float(_sigmoid(b * v / sd).mean()) if sd > 0 else None for b in BETA_R]
        trained = q.get(cells[0])
        rows.append([label, str(len(cells)), str(len(v)), _f(v.mean()), _f(sd), _f((v > 0).mean()),
                     _f(trained.mean() if trained is not None and len(trained) else None), *map(_f, given)])
    caption = ("Reward margins Δr = r(chosen) − r(rejected) of the pairs the cells trained on, as the reward model "
               "scored them (the ShaPO paper's Figure 5). (a) One histogram per distinct set of margins (cells that "
               "trained on the same soft-label file share one; the first is filled); dashed, on the right axis: the "
               "soft label q = σ(β_r·Δr/sd) each β_r gives, with Δr standardised by the first set's standard "
               "deviation sd as the smollm2 lane does. (b) The distribution of that q over the first set. The table's "
               "'mean q trained on' is the mean of the labels a cell of the set really trained on, noise included.")
    headers = ["margins of", "cells", "pairs", "mean Δr", "sd", "share Δr > 0", "mean q trained on",
               *(f"mean q at β_r = {b:g}" for b in BETA_R)]
    return caption, margin_histograms(series), (headers, rows)


def probe_curves(curves: pd.DataFrame, labels: dict[str, str], frame: pd.DataFrame):
    """Figure 6: the safety probe's loss and accuracy per epoch, one line pair per distinct probe."""
    rows = curves[curves["name"].str.startswith("probe/")]
    if rows.empty:
        return None
    per_cell: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for (cell, name), g in rows.groupby(["cell", "name"]):
        g = g.sort_values("step")
        per_cell.setdefault(cell, {})[name] = (g["step"].to_numpy(dtype=float), g["value"].to_numpy(dtype=float))
    distinct: dict[tuple, list[str]] = {}
    for cell in [c for c in labels if c in per_cell]:
        key = tuple((n, x.tobytes(), y.tobytes()) for n, (x, y) in sorted(per_cell[cell].items()))
        distinct.setdefault(key, []).append(cell)
    methods = frame.set_index("cell")["method"].astype(str).to_dict() if "method" in frame.columns else {}
    probes, table = [], []
    for i, cells in enumerate(list(distinct.values())[:MAX_SERIES]):
        used = ", ".join(dict.fromkeys(methods.get(c, c) for c in cells))
        by_estimator: dict[str, dict] = {}
        for name, xy in per_cell[cells[0]].items():
            _, estimator, field = name.split("/", 2)
            by_estimator.setdefault(estimator, {})[field] = xy
        for estimator, fields in by_estimator.items():
            label = f"probe {i + 1} ({estimator})" if len(distinct) > 1 else estimator
            probes.append((label, fields))
            last = {k: y[-1] for k, (_, y) in fields.items()}
            epochs = max(len(x) for x, _ in fields.values())
            table.append([label, used, str(len(cells)), str(epochs), *(_f(last.get(k)) for k in
                          ("train_loss", "eval_loss", "train_accuracy", "eval_accuracy"))])
    caption = ("The safety probe behind the cells' ShaPO masks, per epoch (the ShaPO paper's Figure 6): cross-entropy "
               "and accuracy of the linear head on its training texts (solid) and on held-out prompts' texts (dashed). "
               "One colour per distinct probe; the table names the methods whose cells used it.")
    headers = ["probe", "used by", "cells", "epochs", "final train loss", "final held-out loss",
               "final train accuracy", "final held-out accuracy"]
    return caption, epoch_panels(probes), (headers, table)


def _pooled(frame: pd.DataFrame, cells, skip: tuple) -> list[str]:
    rows = frame[frame["cell"].isin(set(cells))]
    return [c for c in analysis.param_columns(frame) if c not in skip and rows[c].nunique(dropna=True) > 1]


def _facets(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, rows) per noise rate × duration the sweep varies (cells of two durations are two models:
    a CI over them would not be one over seeds), durations outer; one ("all cells", frame) otherwise."""
    noise, duration = analysis.sweep_axes(frame)
    out = [("", frame)]
    for axis, word in ((duration, analysis.DURATIONS.get(duration or "")), (noise, "noise rate")):
        if axis:
            out = [(", ".join(t for t in (title, f"{word} {v:g}" if axis == noise else f"{v:g} {word}") if t),
                    rows[rows[axis] == v]) for title, rows in out for v in sorted(frame[axis].dropna().unique())]
    return [(title or "all cells", rows) for title, rows in out]


def _noise_levels(frame: pd.DataFrame) -> int:
    """Panels a row: one column per noise rate (a row per duration)."""
    noise, _ = analysis.sweep_axes(frame)
    return int(frame[noise].nunique()) if noise else 1


def _axes_skipped(frame: pd.DataFrame) -> tuple:
    return ("method", "seed", *(a for a in analysis.sweep_axes(frame) if a))


def _per_panel(frame: pd.DataFrame) -> str:
    noise, duration = analysis.sweep_axes(frame)
    axes = [w for a, w in ((noise, "noise rate"), (duration, analysis.DURATIONS.get(duration or ""))) if a]
    return f", one panel per {' × '.join(axes)}" if axes else ""


def train_margins(frame: pd.DataFrame, curves: pd.DataFrame):
    """Figure 7: the training batch's reward margin per optimizer step, a line per method, band over cells."""
    m = curves[curves["name"] == MARGIN_CURVE]
    if m.empty or "method" not in frame.columns:
        return None
    panels, table = [], []
    for title, at in _facets(frame):
        rows = []
        for g in _groups(frame):
            cells = at.loc[at["method"].astype(str) == g, "cell"]
            wide = m[m["cell"].isin(set(cells))].pivot(index="step", columns="cell", values="value")
            if wide.empty:
                continue
            rows += [{"group": g, "x": float(step)} | analysis.mean_ci(v.to_numpy(dtype=float))
                     for step, v in wide.iterrows()]
            table.append([title, g, str(wide.shape[1]), str(int(rows[-1]["x"])), str(rows[-1]["n"]),
                          _mean_text(rows[-1])])
        if rows:
            panels.append((title, rows))
    if not panels:
        return None
    pooled = _pooled(frame, m["cell"], _axes_skipped(frame))
    caption = ("Reward margin of the training batch at each optimizer step (rewards/margins: the batch mean of "
               "β·[(log π − log π_ref)(chosen) − (log π − log π_ref)(rejected)], TRL's name), one line per method"
               + _per_panel(frame) + " (the ShaPO paper's Figure 7). Band: 95% t CI over "
               "the cells at each step (seeds" + (f"; pooled over {', '.join(pooled)}" if pooled else "") + "); a step "
               "with one cell has no band. The table gives the last step.")
    png = line_panels(panels, "optimizer step", "reward margin", "training reward margins", _groups(frame),
                      y_range=None, dense=True, ncols=_noise_levels(frame))
    return caption, png, (["panel", "method", "cells", "last step", "cells there", "mean margin [95% CI]"], table)


def asr_bars(frame: pd.DataFrame, harmful_judge: str | None = None):
    """Attack success rate per method and judge, bars with CI, one panel per noise rate × duration."""
    judges = [(m.group("judge") or harmful_judge or "judge", c) for c in frame.columns
              if (m := ASR_PATTERN.match(str(c))) and frame[c].notna().any()]
    if not judges or "method" not in frame.columns:
        return None
    color = {j: PALETTE[i % len(PALETTE)] for i, (j, _) in enumerate(judges)}
    panels, table = [], []
    for title, at in _facets(frame):
        groups = []
        for g in _groups(frame):
            rows, bars = at[at["method"].astype(str) == g], []
            for judge, col in judges:
                d = analysis.describe(rows, col, by=None)[0]
                if d["n"]:
                    bars.append((judge, d["mean"], d["low"], d["high"], color[judge]))
                    table.append([title, g, judge, str(d["n"]), _mean_text(d)])
            if bars:
                groups.append((g, bars))
        if groups:
            panels.append((title, groups))
    if not panels:
        return None
    pooled = _pooled(frame, frame["cell"], _axes_skipped(frame))
    keyword = "keyword" in color
    caption = ("Attack success rate on the harmful requests (harmful/compliance: the share of unsafe requests the "
               "model complied with) per method, one bar per judge" + _per_panel(frame)
               + ". Bar: the mean over the cells (seeds" + (f"; pooled over {', '.join(pooled)}" if pooled else "")
               + "); error bar: 95% t CI over those cells, or the cell's own Wilson CI over requests where one cell "
               "stands alone." + (" With the keyword judge the rate is the share of replies without a refusal "
               "phrase, a proxy for compliance." if keyword else ""))
    png = bar_panels(panels, "attack success rate", "attack success rate on harmful requests",
                     [(j, color[j]) for j, _ in judges] if len(judges) > 1 else [], bar_ticks=False,
                     ncols=_noise_levels(frame))
    return caption, png, (["panel", "method", "judge", "cells", "ASR [95% CI]"], table)


def _shapo_minus_base(rows: pd.DataFrame, y: str, base: str, shapo: str, short: bool = False) -> str:
    """Paired mean of y(shapo) − y(base) over cells matched on every other key, its t CI and p
    (``short``: two lines and no count, for a figure's label; "" when there is no pair)."""
    from robalign.errors import UserError

    try:
        (r,) = analysis.paired(rows[rows["method"].astype(str).isin([base, shapo])], y, at=None)
    except (UserError, ValueError):
        return "" if short else "–"
    if r["mean_diff"] is None:
        return "" if short else f"– ({r['note']})"
    sign = -1.0 if r["a"] == shapo else 1.0  # paired gives b − a in group order
    ci = sorted((sign * r["low"], sign * r["high"])) if r["low"] is not None else None
    num = lambda v: f"{round(v, 3) + 0.0:+.3f}"  # noqa: E731  (+ 0.0: no "-0.000")
    if short:  # two lines under a pair of bars
        return (f"Δ {num(sign * r['mean_diff'])}" + (f", p {r['p']:.2g}" if r["p"] is not None else "")
                + (f"\n[{num(ci[0])}, {num(ci[1])}]" if ci else ""))
    text = num(sign * r["mean_diff"]) + (f" [{num(ci[0])}, {num(ci[1])}]" if ci else " (no CI)")
    return text + f", {r['n']} pairs" + (f", p = {r['p']:.2g}" if r["p"] is not None else "")


def composition(frame: pd.DataFrame, recipes: dict[str, Recipe]):
    """Figure 4: each data-robust loss without and with ShaPO, grouped bars of safety and ASR with CIs."""
    if "method" not in frame.columns:
        return None
    arms: dict[str, dict[bool, list[str]]] = {}
    for g in _groups(frame):
        if g in recipes:
            arms.setdefault(recipes[g].loss, {}).setdefault(recipes[g].shapo, []).append(g)
    families = [f for f, a in arms.items() if a.get(False) and a.get(True)]
    metrics = [y for y in (SAFETY, ASR) if y in frame.columns and frame[y].notna().any()]
    if not metrics or not any(f in ROBUST or f.startswith("drdpo") for f in families):
        return None
    facets = _facets(frame)
    panels, table = [], []
    for y in metrics:
        for title, at in facets:
            groups = []
            for fam in families:
                bars, label = [], fam
                base = arms[fam][False][0]
                for method in arms[fam][False] + arms[fam][True]:
                    d = analysis.describe(at[at["method"].astype(str) == method], y, by=None)[0]
                    shapo = recipes[method].shapo
                    bars.append((method, d["mean"], d["low"], d["high"], SHAPO_COLOR if shapo else BASE_COLOR))
                    diff = _shapo_minus_base(at, y, base, method) if shapo else ""
                    table.append([y, title, fam, method, "yes" if shapo else "no", str(d["n"]), _mean_text(d), diff])
                if len(arms[fam][True]) == 1:  # the paired difference: seeds move every bar, pairs cancel that
                    label += "\n" + _shapo_minus_base(at, y, base, arms[fam][True][0], short=True)
                groups.append((label.strip(), bars))
            panels.append((f"{y}, {title}" if len(facets) > 1 else y, groups))
    pooled = _pooled(frame, frame["cell"], _axes_skipped(frame))
    caption = ("Composition (the ShaPO paper's Figure 4): each loss family without ShaPO (blue) and with it (orange), "
               "read from the cells' resolved train configs, for " + " and ".join(metrics) + " (attack success rate: "
               "lower is safer). Bar: the mean over the cells (seeds" + (f"; pooled over {', '.join(pooled)}" if pooled
               else "") + "); error bar: 95% t CI over them, or the cell's own CI where one cell stands alone. Under "
               "each family, and in the table: ShaPO − base (Δ), paired over cells matched on every other key (seed "
               "included), with the paired t CI and p; the pairs remove the seed's shift that widens every bar's CI.")
    png = bar_panels(panels, "value", "composition: loss family × ShaPO",  # rows: metric × duration
                     [("without ShaPO", BASE_COLOR), ("with ShaPO", SHAPO_COLOR)], bar_ticks=True,
                     ncols=_noise_levels(frame))
    return caption, png, (["metric", "panel", "loss family", "method", "ShaPO", "cells", "mean [95% CI]",
                           "ShaPO − base (paired)"], table)


def study_figures(frame: pd.DataFrame, curves: pd.DataFrame | None, recipes: dict[str, Recipe],
                  labels: dict[str, str], harmful_judge: str | None = None) -> dict[str, tuple[str, bytes, Table]]:
    """name -> (caption, PNG, table) for each study figure (``STUDY``) the store has data for."""
    curves = curves if curves is not None else pd.DataFrame(columns=["cell", "name", "step", "value"])
    built = {"reward_distribution": reward_distribution(curves, labels, frame),
             "probe_curves": probe_curves(curves, labels, frame), "train_margins": train_margins(frame, curves),
             "asr": asr_bars(frame, harmful_judge), "composition": composition(frame, recipes)}
    return {name: fig for name, fig in built.items() if fig is not None}
