"""RUN/report.html for a CLEAR-Bias run: one self-contained file a researcher opens first.

Reads only the summary (``metrics.summarise`` plus the keys the protocol adds: "model",
"judge", "second_pass", "costs", "wall_s", "notes", "run", all optional) and the run table.
Self-contained: inline CSS, inline SVG charts (``charts.py``), a few lines of inline script for
the sample filter; no URL is referenced, so it opens offline and leaks nothing.

Every piece of text goes through ``html.escape``: answers are attacker-influenced (an attacked
prompt asks the model to write whatever it is told) and prompt sets can come from anyone. The
drill-down holds every row (4,400 for the full protocol) as a table row with the long texts
inside ``<details>``; the filter shows 200 matching rows at a time, so the page stays quick.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd

from robalign.bench import charts

PAGE = 200  # drill-down rows shown per "more" click
STYLE = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1200px;padding:0 16px;color:#111;line-height:1.4}
h1{margin-bottom:4px} h2{margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0} th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;
vertical-align:top} th{background:#f3f4f6} td.num{text-align:right;font-variant-numeric:tabular-nums}
.verdict{font-size:1.15em;background:#f3f4f6;padding:8px 12px;border-left:4px solid #2563eb}
.note{background:#fffbeb;border-left:4px solid #f59e0b;padding:4px 10px;margin:4px 0}
.muted{color:#666} .wide{overflow-x:auto} td.num,.ci{white-space:nowrap} .heat td{text-align:center;min-width:64px} .ci{color:#555;font-size:.85em}
pre{white-space:pre-wrap;word-break:break-word;background:#f9fafb;padding:6px;margin:2px 0 8px;max-height:24em;
overflow:auto} details summary{cursor:pointer} #samples td{font-size:.9em} .controls select,.controls input{
margin-right:10px} .kv th{width:14em}
"""


def _e(x: Any) -> str:
    return escape("" if x is None else str(x), quote=True)


def _f(x: Any, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _ci(ci: list | None, digits: int = 2) -> str:
    return f"<span class='ci'>[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]</span>" if ci else ""


def _plain(value: Any) -> Any:
    """Estimate objects and other dataclasses in the costs become dicts."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def _value_html(value: Any, depth: int = 0) -> str:
    """Any JSON-like value as nested key/value tables (escaped)."""
    value = _plain(value)
    if isinstance(value, dict) and depth < 4:
        rows = "".join(f"<tr><th>{_e(k)}</th><td>{_value_html(v, depth + 1)}</td></tr>" for k, v in value.items())
        return f"<table class='kv'>{rows}</table>" if rows else "–"
    if isinstance(value, list | tuple) and depth < 4:
        return "<ul>" + "".join(f"<li>{_value_html(v, depth + 1)}</li>" for v in value) + "</ul>" if value else "–"
    if isinstance(value, float):
        return _e(f"{value:.6g}")
    return _e(value)


def _label(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("label") or value.get("spec") or value.get("name") or value)
    return "–" if value is None else str(value)


def verdict_line(summary: dict) -> str:
    """One sentence: the model score, how many categories passed the gate, what the attacks did."""
    score, cats = summary.get("model_score"), summary.get("category_safety", [])
    if score is None:
        return "No answer could be scored: every row was a failure, unparsed or a misunderstanding."
    tau = summary.get("tau", 0.5)
    attacked = [c for c in cats if c.get("attacked")]
    text = (f"Model score {score:.2f}{_bare_ci(summary.get('model_score_ci'))}: {len(attacked)} of {len(cats)} "
            f"categories at or above \u03c4 = {tau:g}")
    esr = summary.get("attack", {}).get("expected_safety_reduction")
    if not attacked:
        return text + "; none was attacked."
    if esr is None:
        return text + "; no attacked answer could be scored."
    direction = "lower" if esr >= 0 else "raise"
    return (text + f"; attacks {direction} safety by {abs(esr):.0%} on average (expected safety reduction), "
            f"overall safety {_f(summary.get('overall_safety'))}{_bare_ci(summary.get('overall_safety_ci'))}.")


def _bare_ci(ci: list | None) -> str:
    return f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""


def _header(summary: dict) -> str:
    judge = summary.get("judge")
    kappa = "κ not reported"
    if isinstance(judge, dict) and judge.get("kappa") is not None:
        kappa = f"κ = {judge['kappa']:.3f}{_bare_ci(judge.get('kappa_ci'))}"
    source = judge.get("kappa_source") if isinstance(judge, dict) else None
    second = summary.get("second_pass") or (judge.get("second_pass") if isinstance(judge, dict) else None)
    written = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = [("model", _e(_label(summary.get("model")))),
            ("judge", f"{_e(_label(judge))} — {_e(kappa)} on the control set"
                      + (f" <span class='muted'>({_e(source)})</span>" if source else "")),
            ("second pass (R vs M)", _e(_label(second)) if second else "–"),
            ("data", _e(summary.get("data", "–"))), ("written", _e(written))]
    if summary.get("wall_s") is not None:
        rows.append(("wall time", _e(f"{summary['wall_s']:.1f} s")))
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    notes = "".join(f"<div class='note'>{_e(n)}</div>" for n in summary.get("notes") or [])
    return (f"<h1>CLEAR-Bias report</h1><table class='kv'>{table}</table>"
            f"<p class='verdict'>{_e(verdict_line(summary))}</p>{notes}")


def _safety_section(summary: dict) -> str:
    tasks, tau = summary.get("tasks", []), summary.get("tau", 0.5)
    cells = {(c["category"], c["task"]): c for c in summary.get("cells", [])}
    head = "".join(f"<th>{_e(t)} σ</th><th>{_e(t)} ρ / φ</th><th>{_e(t)} n</th>" for t in tasks)
    body = []
    for cat in summary.get("category_safety", []):
        tds = []
        for t in tasks:
            c = cells.get((cat["category"], t))
            if c is None:
                tds.append("<td colspan='3' class='muted'>no prompts</td>")
                continue
            excluded = sum(c["counts"][k] for k in ("M", "UNPARSED", "FAILED", "JUDGE_REFUSED", "other"))
            tds.append(f"<td class='num'>{_f(c['safety'])} {_ci(c['safety_ci'])}</td>"
                       f"<td class='num'>{_f(c['robustness'])} / {_f(c['fairness'])}</td>"
                       f"<td class='num'>{c['counts']['n']}" + (f" <span class='muted'>(+{excluded} excl.)</span>"
                                                                if excluded else "") + "</td>")
        color = charts.safety_color(cat["safety"])
        body.append(f"<tr><th>{_e(cat['category'])}</th><td class='num' style='background:{color};color:"
                    f"{charts.text_color(color)}'>{_f(cat['safety'])} {_ci(cat['safety_ci'])}</td>{''.join(tds)}"
                    f"<td>{'yes' if cat['attacked'] else 'no'}</td></tr>")
    score = (f"<p><b>Model score</b> (mean σ over categories): {_f(summary.get('model_score'))} "
             f"{_ci(summary.get('model_score_ci'))}</p>")
    items = [{"label": c["category"], "value": c["safety"], "ci": c["safety_ci"]}
             for c in summary.get("category_safety", [])]
    return (f"<h2>Safety per category (base prompts)</h2>{score}<table><tr><th>category</th><th>σ<sub>b</sub> [CI]"
            f"</th>{head}<th>attacked (σ<sub>b</sub> ≥ {tau:g})</th></tr>{''.join(body)}</table>"
            f"<h3>σ<sub>b</sub> against τ</h3>{charts.bars(items, tau)}")


def _heat_cell(entry: dict | None) -> str:
    if entry is None or entry.get("safety") is None:
        return "<td class='muted'>–</td>"
    value, color = entry["safety"], charts.safety_color(entry["safety"])
    reduction = entry.get("reduction")
    tip = f"post-attack σ {value:.3f}" + (f" [{entry['safety_ci'][0]:.3f}, {entry['safety_ci'][1]:.3f}]"
                                           if entry.get("safety_ci") else "")
    tip += f"; reduction {reduction:+.1%}" if reduction is not None else ""
    return (f"<td style='background:{color};color:{charts.text_color(color)}' title='{_e(tip)}'>{value:.2f}"
            + (f"<br><small>{-reduction:+.0%}</small>" if reduction is not None else "") + "</td>")


def _heatmap(entries: list[dict], categories: list[str], key: str) -> str:
    """Categories down, attacks (or attack variants) across, effectiveness in the last row."""
    head = "".join(f"<th>{_e(key.format(**e).replace('_', ' '))}"
                   + (" <span title='above the knee: excluded'>✗</span>" if e.get("excluded") else "") + "</th>"
                   for e in entries)
    by_cat = [{c["category"]: c for c in e["by_category"]} for e in entries]
    body = "".join(f"<tr><th>{_e(c)}</th>{''.join(_heat_cell(b.get(c)) for b in by_cat)}</tr>" for c in categories)
    eff = "".join(f"<td class='num' style='background:{charts.reduction_color(e.get('effectiveness'))}'>"
                  f"{_f(e.get('effectiveness'))}<br>{_ci(e.get('effectiveness_ci'))}</td>" for e in entries)
    return (f"<div class='wide'><table class='heat'><tr><th>category</th>{head}</tr>{body}"
            f"<tr><th>effectiveness [CI]</th>{eff}</tr></table></div>")


def _attack_section(summary: dict) -> str:
    attack = summary.get("attack") or {}
    categories = attack.get("attacked_categories") or []
    out = ["<h2>Attacks</h2>"]
    if not categories:
        return out[0] + f"<p>No category reached τ = {summary.get('tau', 0.5):g}: there was no attack phase.</p>"
    if not attack.get("per_attack"):
        return out[0] + f"<p>Attacked categories: {_e(', '.join(categories))}; no attacked answers in the run table.</p>"
    out.append(f"<p>Expected safety reduction: <b>{_f(attack.get('expected_safety_reduction'), 3)}</b> "
               f"{_ci(attack.get('expected_safety_reduction_ci'), 3)}; overall safety after attacks: "
               f"<b>{_f(summary.get('overall_safety'))}</b> {_ci(summary.get('overall_safety_ci'))}; "
               f"model score before: {_f(summary.get('model_score'))}.</p>"
               "<p class='muted'>Cells: post-attack σ<sub>b</sub><sup>a</sup> (variants pooled, M removed from n) "
               "and below it the change in safety relative to σ<sub>b</sub>; hover for the CI. Effectiveness = mean "
               "relative reduction over the attacked categories.</p>")
    out.append(_heatmap(attack["per_attack"], categories, "{attack}"))
    if attack.get("per_variant"):
        out.append("<details><summary>per attack variant</summary>"
                   + _heatmap(attack["per_variant"], categories, "{attack}:{variant}") + "</details>")
    return "".join(out)


def _misunderstanding_section(summary: dict) -> str:
    per_attack = (summary.get("attack") or {}).get("per_attack") or []
    if not per_attack:
        return ""
    knee = summary.get("knee") or {}
    rows = "".join(
        f"<tr><th>{_e(a['attack'])}</th><td class='num'>{a['counts']['M']}</td><td class='num'>{a['counts']['R']}"
        f"</td><td class='num'>{a['counts']['n'] + a['counts']['M']}</td><td class='num'>"
        f"{_f(a.get('misunderstanding_rate'))} {_ci(a.get('misunderstanding_rate_ci'))}</td><td class='num'>"
        f"{_f(a.get('misunderstanding_share'))}</td><td>{'above the knee' if a.get('above_knee') else ''}"
        f"{' (excluded)' if a.get('excluded') else ''}</td></tr>" for a in per_attack)
    applied = "applied: attacks above the knee are left out of the expected safety reduction and overall safety" \
        if knee.get("applied") else "reported only (run with the knee filter to exclude the attacks above it)"
    rates = [(r["attack"], r["rate"]) for r in knee.get("rates", [])]
    return ("<h2>Misunderstanding rates</h2><p class='muted'>The second pass re-judges every attacked R answer as a "
            "refusal (R) or a misunderstanding (M).</p><table><tr><th>attack</th><th>M</th><th>R</th><th>all</th>"
            f"<th>M / (R + M) [CI]</th><th>M / all</th><th>knee filter</th></tr>{rows}</table>"
            f"<p>Knee filter {_e(applied)}; knee value {_f(knee.get('value'))}.</p>{charts.rates_chart(rates, knee.get('index'))}")


def _counts_section(summary: dict) -> str:
    non = summary.get("non_answers") or {}
    labels = ("UNPARSED", "FAILED", "JUDGE_REFUSED")
    rows = []
    for phase, passes in non.items():
        for column, counts in passes.items():
            name = {"verdict": "first judge pass", "rm": "second pass (R vs M)", "final": "final"}.get(column, column)
            rows.append(f"<tr><th>{_e(phase)}</th><td>{_e(name)}</td>"
                        + "".join(f"<td class='num'>{int(counts.get(k, 0))}</td>" for k in labels) + "</tr>")
    head = "".join(f"<th>{k}</th>" for k in labels)
    r = summary.get("rows") or {}
    names = {"base": "base-phase rows", "attack": "attack-phase rows", "prompts": "base prompts",
             "attack_outside_gate": "attack rows in categories below τ (left out)"}
    extra = "".join(f"<li>{_e(names.get(k, k.replace('_', ' ')))}: {_e(v)}</li>" for k, v in
                    [*r.items(), ("failed generations", summary.get("failed_generations"))] if v is not None)
    out = (f"<h2>Counts</h2><p class='muted'>Never answers: excluded from n, never mapped to a class.</p><table>"
           f"<tr><th>phase</th><th>pass</th>{head}</tr>{''.join(rows)}</table><ul>{extra}</ul>")
    for key, title in (("costs", "Costs"), ("run", "Run")):
        if summary.get(key) is not None:
            out += f"<h2>{title}</h2><details><summary>{title.lower()}</summary>{_value_html(summary[key])}</details>"
    return out


def _text(row: dict, column: str) -> str:
    value = row.get(column, "")
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


def _samples_section(rows: pd.DataFrame) -> str:
    """One table row per answer, the long texts in <details>; data-* attributes drive the filter."""
    if rows is None or rows.empty:
        return "<h2>Samples</h2><p>No rows.</p>"
    keys = {"cat": "category", "attack": "attack", "final": "final", "phase": "phase"}
    body = []
    records = rows.to_dict("records")
    for row in records:
        t = {c: _text(row, c) for c in ("row_id", "category", "task", "phase", "attack", "variant", "final",
                                         "verdict", "rm", "prompt", "response", "judge_raw", "rm_raw", "status",
                                         "reason")}
        attrs = " ".join(f"data-{k}='{_e(t[c])}'" for k, c in keys.items())
        judged = t["final"] + (f" (first pass {t['verdict']}, second pass {t['rm']})" if t["rm"] else "")
        detail = "".join(f"<b>{name}</b><pre>{_e(t[c])}</pre>" for name, c in
                         (("prompt sent", "prompt"), ("answer", "response"), ("judge raw output", "judge_raw"),
                          ("second pass raw output", "rm_raw")) if t[c])
        if t["status"] and t["status"] != "answered":
            detail = f"<b>generation {_e(t['status'])}</b>: {_e(t['reason'])}" + detail
        attack = f"{t['attack']}:{t['variant']}" if t["attack"] else "base"
        body.append(f"<tr {attrs}><td>{_e(t['row_id'])}</td><td>{_e(t['category'])} / {_e(t['task'])}</td>"
                    f"<td>{_e(attack)}</td><td>{_e(judged)}</td><td><details><summary>"
                    f"{_e(t['response'][:90] or '(no answer)')}</summary>{detail}</details></td></tr>")
    selects = "".join(
        f"<label>{_e(label)} <select id='f-{k}'><option value=''>all</option>"
        + "".join(f"<option>{_e(v)}</option>" for v in sorted({_text(r, keys[k]) for r in records} - {""}))
        + "</select></label>" for k, label in (("cat", "category"), ("phase", "phase"), ("attack", "attack"),
                                              ("final", "verdict")))
    return (f"<h2>Samples</h2><div class='controls'>{selects}<label>text <input id='f-q' type='search'></label>"
            f"<span id='f-count'></span></div><table id='samples'><thead><tr><th>row</th><th>category / task</th>"
            f"<th>attack</th><th>verdict</th><th>answer</th></tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"<button id='f-more' type='button'>show more</button>{_SCRIPT}")


_SCRIPT = """<script>
(function () {
  var rows = Array.prototype.slice.call(document.querySelectorAll('#samples tbody tr'));
  var page = PAGE_SIZE, ids = ['cat', 'phase', 'attack', 'final'], limit = page;
  function el(id) { return document.getElementById('f-' + id); }
  function apply() {
    var q = el('q').value.toLowerCase(), match = 0;
    rows.forEach(function (r) {
      var ok = ids.every(function (k) { var v = el(k).value; return !v || r.dataset[k] === v; })
        && (!q || r.textContent.toLowerCase().indexOf(q) >= 0);
      if (ok) { match++; }
      r.hidden = !(ok && match <= limit);
    });
    el('count').textContent = Math.min(match, limit) + ' of ' + match + ' matching rows shown';
    el('more').hidden = match <= limit;
  }
  ids.forEach(function (k) { el(k).addEventListener('change', function () { limit = page; apply(); }); });
  el('q').addEventListener('change', function () { limit = page; apply(); });
  el('more').addEventListener('click', function () { limit += page; apply(); });
  apply();
})();
</script>""".replace("PAGE_SIZE", str(PAGE))


def _definitions(summary: dict) -> str:
    defs = summary.get("definitions") or {}
    boot = summary.get("bootstrap") or {}
    items = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in defs.items())
    text = (f"{boot.get('n_boot')} resamples, seed {boot.get('seed')}, level {boot.get('level')}; unit: "
            f"{boot.get('unit')}") if boot else ""
    return f"<h2>Definitions</h2><table class='kv'>{items}</table><p class='muted'>Bootstrap: {_e(text)}</p>"


def render(summary: dict, rows: pd.DataFrame) -> str:
    """The report as one HTML string."""
    model = _label(summary.get("model"))
    parts = [_header(summary), _safety_section(summary), _attack_section(summary), _misunderstanding_section(summary),
             _counts_section(summary), _samples_section(rows), _definitions(summary)]
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
            f"content='width=device-width, initial-scale=1'><title>CLEAR-Bias report: {_e(model)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")


def write_report(run_dir: str | Path, summary: dict, rows: pd.DataFrame) -> Path:
    """Write RUN/report.html (atomically: a half-written report never replaces a whole one)."""
    path = Path(run_dir) / "report.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render(summary, rows), encoding="utf-8")
    tmp.replace(path)
    return path
