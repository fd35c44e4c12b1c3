"""Matplotlib figures of a sweep report (``report.py``), each returned as PNG bytes.

``make_figures`` reads a results table and draws what it supports: safety against the noise and
duration axes (``analysis.sweep_axes``), heatmaps from the per-attack / per-category safety
metrics, reward accuracy on clean held-out vs noisy training labels, the held-out reward margin.
The drawing functions below it know nothing of sweeps.

``matplotlib.figure.Figure`` is used directly, never ``pyplot``: no global figure state, no
GUI backend (a Figure draws on the Agg canvas by itself), so figures can be made from worker
threads and in tests. PNG metadata carries no version string, so the same numbers give the
same bytes. Colours follow the bench report: one fixed colour per method in grid order, and
the red-amber-green safety scale for heatmaps (0 red, 0.5 amber, 1 green).

The inputs are rows from ``analysis.curve`` (``group, x, mean, low, high``), so every band a
figure draws is a CI the tables print too.
"""

from __future__ import annotations

import io
import math
import re

import numpy as np
import pandas as pd

from robalign.experiments import analysis

# tab10 without its red and green (those mean "unsafe" / "safe" on this page)
PALETTE = ["#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
NONE_COLOR = "#111111"  # the un-aligned model, drawn as a dashed reference
SAFETY = "clear_bias/safety"
CLEAN_ACC, NOISY_ACC, MARGIN = ("train/eval/rewards/accuracies", "train/noisy/rewards/accuracies",
                                "train/eval/rewards/margins")


def colors(groups: list[str]) -> dict[str, str]:
    """A stable colour per group: ``none`` black, the others the palette in order."""
    others = [g for g in groups if g != "none"]
    out = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(others)}
    return out | ({"none": NONE_COLOR} if "none" in groups else {})


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig


def line_panels(panels: list[tuple[str, list[dict]]], x_label: str, y_label: str, title: str,
                groups: list[str], y_range: tuple[float, float] | None = (0.0, 1.0), dense: bool = False,
                ncols: int | None = None) -> bytes:
    """One panel per ``(panel title, curve rows)``: a line per group with its CI band. A group
    with a single x in a panel where the others have several (the un-aligned model, which
    ignores noise) is drawn as a dashed horizontal reference with its band. ``dense``: many x
    (training steps): no markers, no tick per x. ``ncols``: panels a row (default: all in one)."""
    n = max(1, len(panels))
    cols = min(n, ncols or n)
    fig = _figure(min((6.0 if dense else 4.2) * cols, 13), 3.6 * math.ceil(n / cols))
    axes = fig.subplots(math.ceil(n / cols), cols, sharey=True, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    palette = colors(groups)
    for ax, (panel, rows) in zip(axes, panels):
        xs_all = sorted({r["x"] for r in rows})
        for g in groups:
            pts = [r for r in rows if r["group"] == g and r["mean"] is not None]
            if not pts:
                continue
            x = np.array([r["x"] for r in pts])
            m = np.array([r["mean"] for r in pts])
            lo = np.array([r["low"] if r["low"] is not None else math.nan for r in pts])
            hi = np.array([r["high"] if r["high"] is not None else math.nan for r in pts])
            color = palette.get(g, "#333")
            if len(pts) == 1 and len(xs_all) > 1:
                span = [xs_all[0], xs_all[-1]]
                ax.plot(span, [m[0]] * 2, ls="--", color=color, lw=1.5, label=f"{g} (at {x[0]:g})")
                if not math.isnan(lo[0]):
                    ax.fill_between(span, [lo[0]] * 2, [hi[0]] * 2, color=color, alpha=0.10, lw=0)
                continue
            ax.plot(x, m, marker=None if dense else "o", color=color, lw=1.5 if dense else 2, label=g)
            ok = ~(np.isnan(lo) | np.isnan(hi))
            if ok.any():
                ax.fill_between(x[ok], lo[ok], hi[ok], color=color, alpha=0.18, lw=0)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel(x_label)
        ax.grid(alpha=0.3)
        if xs_all and not dense:
            ax.set_xticks(xs_all)
        if y_range:  # a little room so points on 0 or 1 stay visible
            pad = 0.03 * (y_range[1] - y_range[0])
            ax.set_ylim(y_range[0] - pad, y_range[1] + pad)
    for ax in axes[::cols]:
        ax.set_ylabel(y_label)
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        # long arm names ("shapo mask=subspace:top ascent=fresh") beside one panel would cover the title
        wide = len(axes) == 1 and max(map(len, labels)) > 24
        fig.legend(handles, labels, loc="outside lower center" if wide else "outside right upper", fontsize=9,
                   frameon=False, ncols=2 if wide else 1)
    fig.suptitle(title, fontsize=11)
    return _png(fig)


def heatmap(values: np.ndarray, rows: list[str], cols: list[str], title: str, label: str = "safety") -> bytes:
    """Safety values (rows x cols, NaN = no data) on the red-amber-green scale, each annotated."""
    from matplotlib.colors import LinearSegmentedColormap

    cmap = LinearSegmentedColormap.from_list("safety", ["#dc2626", "#f59e0b", "#16a34a"]).with_extremes(bad="#e5e7eb")
    fig = _figure(min(2.2 + 0.75 * len(cols), 14), 1.2 + 0.42 * len(rows))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(cols)), [c.replace("_", " ") for c in cols], rotation=35, ha="right", fontsize=9)
    ax.set_yticks(range(len(rows)), rows, fontsize=9)
    for (i, j), v in np.ndenumerate(values):
        if not math.isnan(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="#111" if 0.25 < v < 0.85 else "#fff")
    fig.colorbar(im, ax=ax, label=label, shrink=0.8)
    ax.set_title(title, fontsize=11)
    return _png(fig)


def accuracy_bars(labels: list[str], clean: list[float | None], noisy: list[float | None], title: str) -> bytes:
    """Per cell, two horizontal bars: reward accuracy on clean held-out pairs and on the
    training pairs with their noisy labels (a model that fits the noise scores high on the
    second and lower on the first)."""
    fig = _figure(8.5, 1.0 + 0.38 * len(labels))
    ax = fig.add_subplot()
    y = np.arange(len(labels))
    num = lambda vs: np.array([math.nan if v is None else v for v in vs], dtype=float)  # noqa: E731
    ax.barh(y - 0.2, num(clean), height=0.38, color="#2563eb", label="clean held-out labels")
    ax.barh(y + 0.2, num(noisy), height=0.38, color="#f59e0b", label="noisy training labels")
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.axvline(0.5, color="#999", lw=1, ls=":")
    ax.set_xlabel("reward accuracy (share of pairs with chosen reward > rejected)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=11)
    return _png(fig)


# -------------------------------------------------------------------- the report's figures from a table

def _groups(frame: pd.DataFrame) -> list[str]:
    return [str(m) for m in analysis.group_order(frame["method"]) if m is not None] if "method" in frame.columns else []


def heat_tables(frame: pd.DataFrame, noise: str | None) -> list[tuple[str, str, np.ndarray, list[str], list[str]]]:
    """(name, title, values, rows, cols) per heatmap the metrics allow: attack x category per
    method when ``clear_bias/attack/A/category/C/safety`` is present, else method rows against
    attacks and against categories."""
    pat = re.compile(r"^clear_bias/attack/(?P<a>[^/]+)/category/(?P<c>[^/]+)/safety$")
    full = [(m.group("a"), m.group("c"), c) for c in frame.columns if (m := pat.match(c))]
    out = []
    if full:
        atts, cats = sorted({a for a, _, _ in full}), sorted({c for _, c, _ in full})
        for m in _groups(frame):
            rows = frame[frame["method"].astype(str) == m]
            vals = np.full((len(cats), len(atts)), np.nan)
            for a, c, col in full:
                vals[cats.index(c), atts.index(a)] = pd.to_numeric(rows[col], errors="coerce").mean()
            out.append((f"heat_{m}", f"{m}: post-attack safety, attack × category", vals, cats, atts))
        return out
    row_of = (lambda r: f"{r['method']} @ noise {r[noise]:g}") if noise else (lambda r: str(r["method"]))
    labels = frame.apply(row_of, axis=1) if len(frame) else pd.Series([], dtype=str)
    order = list(dict.fromkeys(labels))
    for kind, title in (("attack", "safety under each attack (categories pooled)"),
                        ("category", "base-prompt safety per category")):
        cols = [(m.group(1), c) for c in frame.columns if (m := re.match(rf"^clear_bias/{kind}/([^/]+)/safety$", c))]
        if not cols:
            continue
        vals = np.array([[pd.to_numeric(frame.loc[labels == r, c], errors="coerce").mean() for _, c in cols]
                         for r in order])
        out.append((f"heat_{kind}", title, vals, order, [n for n, _ in cols]))
    return out


def make_figures(frame: pd.DataFrame, labels: dict[str, str], y: str = SAFETY) -> dict[str, tuple[str, bytes]]:
    """name -> (caption, PNG) for every figure the table supports; ``labels``: cell -> display label."""
    noise, duration = analysis.sweep_axes(frame)
    groups = _groups(frame)
    out: dict[str, tuple[str, bytes]] = {}
    band = ("Bands: 95% t CI over the cells at a point (seeds; with two seeds t has one degree of freedom, "
            "t = 12.7, so bands are wide); where one cell stands alone, that cell's own bootstrap CI over prompts. "
            "Other grid keys are averaged.")
    for name, x, other in (("safety_vs_noise", noise, duration), ("safety_vs_duration", duration, noise)):
        if not x or y not in frame.columns:
            continue
        levels = sorted(frame[other].dropna().unique()) if other else [None]
        panels = [(f"{other} = {lvl:g}" if other else "all cells",
                   analysis.curve(frame[frame[other] == lvl] if other else frame, x, y)) for lvl in levels]
        word = "noise rate" if x == noise else analysis.DURATIONS[x]
        png = line_panels(panels, f"{word} ({x})", y, f"{y} vs {word}", groups)
        dashed = "The un-aligned model (none) ignores label noise and is drawn dashed. " if x == noise else ""
        out[name] = (f"{y} against {word}, one line per method, one panel per {other or 'sweep'}. " + dashed + band,
                     png)
    for name, title, vals, rows, cols in heat_tables(frame, noise):
        out[name] = (title + " (mean over the cells in each row; grey: no data).",
                     heatmap(vals, rows, cols, title))
    if CLEAN_ACC in frame.columns or NOISY_ACC in frame.columns:
        trained = frame[frame[[c for c in (CLEAN_ACC, NOISY_ACC) if c in frame.columns]].notna().any(axis=1)]
        get = lambda c: [None if c not in trained or pd.isna(v) else float(v)  # noqa: E731
                         for v in (trained[c] if c in trained else [None] * len(trained))]
        out["reward_accuracy"] = (
            "Reward accuracy per trained cell: on held-out pairs with clean labels (blue) and on the training "
            "pairs with the labels the cell trained on, noise included (amber).",
            accuracy_bars([labels[c] for c in trained["cell"]], get(CLEAN_ACC), get(NOISY_ACC),
                                  "reward accuracy: clean held-out vs noisy training labels"))
    if MARGIN in frame.columns and noise:
        out["reward_margin"] = ("Held-out reward margin (chosen − rejected implicit reward) against noise. " + band,
                                line_panels([("all cells", analysis.curve(frame, noise, MARGIN))],
                                                    f"noise rate ({noise})", "reward margin", "reward margin vs noise",
                                                    groups, y_range=None))
    return out
