"""The self-contained report of ``robalign bench harmful`` (``RUN/report.html``): inline CSS, no
scripts, no external files, every text escaped (answers are attacker-influenced)."""

from __future__ import annotations

import html
import json
from typing import Any

import pandas as pd

# ---- report.html: self-contained (inline CSS, no scripts, no external files); every text escaped ----

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#f3f3f3}.note{background:#fff6d6;border-left:4px solid #e0a800;padding:.4em .8em;
margin:.3em 0}.bar{position:relative;width:320px;height:14px;background:#eee}.fill{position:absolute;height:14px;
background:#c0392b}.fill.ok{background:#2e86c1}.ci{position:absolute;top:6px;height:2px;background:#000}
.unsafe,.R,.P{color:#a00;font-weight:600}.safe,.NR,.C{color:#060}.x,.FAILED,.UNPARSED,.JUDGE_REFUSED{color:#888;
font-style:italic}
pre{white-space:pre-wrap;max-width:900px;background:#fafafa;padding:.4em;border:1px solid #eee}"""


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _rate_cells(r: dict[str, Any]) -> str:
    ci = "–" if r["ci"] is None else f"[{_pct(r['ci'][0])}, {_pct(r['ci'][1])}]"
    return f"<td>{r['k']} / {r['n']}</td><td>{_pct(r['rate'])}</td><td>{ci}</td>"


def _excluded(counts: dict[str, int]) -> str:
    return html.escape(", ".join(f"{k} {v}" for k, v in counts.items() if v) or "none")


def _bar(r: dict[str, Any], ok: bool) -> str:
    if r["rate"] is None:
        return '<span class="x">nothing judged</span>'
    low, high = r["ci"]
    return (f'<div class="bar"><div class="fill{" ok" if ok else ""}" style="width:{100 * r["rate"]:.1f}%"></div>'
            f'<div class="ci" style="left:{100 * low:.1f}%;width:{100 * (high - low):.1f}%"></div></div>')


def _cost_table(costs: dict[str, Any]) -> str:
    """Estimate (before sending) beside actual (what this invocation sent) per phase."""
    est, act = costs["estimate"], costs["actual"]
    out = ["<h2>Cost: estimate / actual</h2><p>Both for this invocation: the estimate was made before it sent "
           "anything, with cached answers free; prompt tokens at 4 characters a token, answers at their token limit "
           "(an upper bound), and judge calls on answers not yet made counted as if every answer were judged. "
           "Actual tokens are what the API reported.</p><table><tr><th>phase</th><th>by</th><th>calls</th>"
           "<th>cached</th><th>tokens in</th><th>tokens out</th><th>USD</th></tr>"]
    for phase, e in est["phases"].items():
        a = act["phases"].get(phase, {})
        cells = "".join(f"<td>{e[k]:{f}} / {a.get(k, 0):{f}}</td>" for k, f in (
            ("calls", "d"), ("cached", "d"), ("prompt_tokens", "d"), ("completion_tokens", "d"), ("usd", ".4f")))
        bound = " (upper bound)" if e.get("upper_bound") else ""
        out.append(f"<tr><td>{html.escape(phase + bound)}</td><td>{html.escape(str(e.get('by', '')))}</td>{cells}</tr>")
    out.append(f"<tr><th colspan=6>total (estimate / actual)</th><th>{est['total']['usd']:.4f} / {act['usd']:.4f}"
               "</th></tr></table>")
    return "".join(out)


def render_report(summary: dict[str, Any], rows: pd.DataFrame) -> str:
    e = html.escape
    d, j = summary["dataset"], summary["judge"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>bench harmful: {e(d['name'])}</title>"
             f"<style>{_CSS}</style></head><body><h1>Harmful prompts: {e(d['name'])}</h1>",
             f"<p>model <b>{e(summary['model'])}</b>; safety judge <b>{e(j['safety'])}</b>; refusal judge "
             f"<b>{e(j['refusal'])}</b>; {d['prompts']} prompts ({e(json.dumps(d['labels']))}); "
             f"{summary['generation_failed']} failed generations</p>"]
    parts += [f"<div class='note'>{e(n)}</div>" for n in summary["notes"]]
    table = ["<h2>Rates (95 % Wilson intervals)</h2><table><tr><th>measure</th><th>k / n</th><th>rate</th><th>95 % CI</th>"
             "<th>left out of n</th></tr>"]
    if "harmful" in summary:
        h = summary["harmful"]
        table.append(f"<tr><td>attack success rate (unsafe answers)</td>{_rate_cells(h['asr'])}"
                     f"<td>{_excluded(h['excluded']['safety'])}</td></tr>")
        table.append(f"<tr><td>refusal rate</td>{_rate_cells(h['refusal_rate'])}"
                     f"<td>{_excluded(h['excluded']['refusal'])}</td></tr>")
        if j["three_way"]:
            table.append(f"<tr><td>partial refusal rate</td>{_rate_cells(h['partial_refusal_rate'])}<td></td></tr>")
        n = h["refused_and_unsafe"]
        table.append(f"<tr><td>refused (fully or partly) and unsafe</td><td colspan=4>{n} answer{'s' * (n != 1)}: "
                     "counted as harmful</td></tr>")
    if "over_refusal" in summary:
        o = summary["over_refusal"]
        table.append(f"<tr><td>over-refusal on safe prompts</td>{_rate_cells(o['over_refusal'])}"
                     f"<td>{_excluded(o['excluded']['refusal'])}</td></tr>")
        if j["three_way"]:
            for key in ("full_refusal", "partial_refusal"):
                table.append(f"<tr><td>{key.replace('_', ' ')}</td>{_rate_cells(o[key])}<td></td></tr>")
    parts.append("".join(table) + "</table>")
    if "harmful" in summary:  # refusal and harmfulness are judged apart: how they combine
        cross = summary["harmful"]["refusal_by_safety"]
        parts.append("<h2>Refusal against safety (answers to unsafe prompts)</h2><table><tr><th>refusal judge</th>"
                     "<th>safe</th><th>unsafe</th></tr>" + "".join(
                         f"<tr><td>{e(kind)}</td><td>{c['safe']}</td><td>{c['unsafe']}</td></tr>"
                         for kind, c in cross.items() if j["three_way"] or kind != "partial") + "</table>")
    if "costs" in summary:
        parts.append(_cost_table(summary["costs"]))
    for section, key, title, ok in (("harmful", "asr", "Attack success rate by category", False),
                                    ("over_refusal", "over_refusal", "Over-refusal by category", True)):
        if section in summary:
            bars = [f"<h2>{title}</h2><table><tr><th>category</th><th>k / n</th><th>rate</th><th>95 % CI</th>"
                    "<th></th></tr>"]
            for category, part in summary[section]["by_category"].items():
                bars.append(f"<tr><td>{e(category)}</td>{_rate_cells(part[key])}<td>{_bar(part[key], ok)}</td></tr>")
            parts.append("".join(bars) + "</table>")
    parts.append(f"<h2>Every answer ({len(rows)})</h2><table><tr><th>id</th><th>category</th><th>prompt label</th>"
                 "<th>refusal</th><th>safety</th><th>prompt, answer, judges</th></tr>")
    for r in rows.itertuples(index=False):
        detail = (f"<b>prompt</b><pre>{e(r.prompt)}</pre><b>answer</b> ({e(r.status)}{', ' + e(r.reason) if r.reason else ''})"
                  f"<pre>{e(r.response)}</pre><b>refusal judge</b> {e(r.refusal_template)}<pre>{e(r.refusal_raw)}</pre>"
                  f"<b>safety judge</b> {e(r.safety_template)}<pre>{e(r.safety_raw)}</pre>")
        parts.append(f"<tr><td>{e(r.id)}</td><td>{e(r.category)}</td><td>{e(r.label)}</td>"
                     f"<td class='{e(r.refusal)}'>{e(r.refusal)}</td><td class='{e(r.safety) or 'x'}'>"
                     f"{e(r.safety) or 'not judged'}</td>"
                     f"<td><details><summary>{e(r.request[:80])}</summary>{detail}</details></td></tr>")
    return "\n".join(parts) + "</table></body></html>\n"
