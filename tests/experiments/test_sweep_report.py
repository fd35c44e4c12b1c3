"""The sweep report: headline numbers by hand, links and anchors per cell, per-sample verdict
changes between methods, escaping, self-containment, figures on disk equal to the embedded ones."""

from __future__ import annotations

import base64
import math
import os
import re
from html.parser import HTMLParser

import pandas as pd
import pytest

from robalign.errors import UserError
from robalign.experiments import analysis, figures, report

Y = "clear_bias/safety"
EVIL = "<script>alert('pwned')</script><img src=https://evil.example/x.png onerror=alert(1)>"
T1 = math.tan(0.475 * math.pi)  # t_{.975, 1 df}


def cell(cell_id, method, noise, y, seed=0, steps=300, **metrics) -> dict:
    return {"sweep": "w", "cell": cell_id, "run_dir": f"/data/sweep/cells/{cell_id}", "finished": "t",
            "method": method, "data.noise_rate": noise, "pretrain.steps": steps, "seed": seed, Y: y} | metrics


def hand_frame() -> pd.DataFrame:
    """none: two seeds 0.5 / 0.7. dpo: 0.80 / 0.66 / 0.60 at noise 0 / 0.2 / 0.4 (seed 0) with the
    noise-0 cell's own CI [0.75, 0.85]. shapo: 0.82 / 0.75 / 0.70."""
    return pd.DataFrame([
        cell("n0", "none", 0.0, 0.5), cell("n1", "none", 0.0, 0.7, seed=1),
        cell("d0", "dpo", 0.0, 0.80, **{f"{Y}.low": 0.75, f"{Y}.high": 0.85}), cell("d2", "dpo", 0.2, 0.66),
        cell("d4", "dpo", 0.4, 0.60), cell("s0", "shapo", 0.0, 0.82), cell("s2", "shapo", 0.2, 0.75),
        cell("s4", "shapo", 0.4, 0.70)])


def test_headline_numbers_by_hand():
    """none: mean 0.6, t CI 0.6 -+ 12.706 * 0.1 cut at [0, 1] (safety is a rate). dpo at noise 0 is one cell: its own CI; dpo - none
    matched on seed 0: 0.80 - 0.5 = +0.30, one pair. dpo vs noise: S_xy = -0.04, S_xx = 0.08 ->
    slope -0.5, -0.2 over 0..0.4; residuals (0.0133, -0.0267, 0.0133), SSE 0.0010667 (1 df),
    se = sqrt(SSE / 0.08), CI over the range 0.4 * (-0.5 -+ 12.706 se)."""
    lines = report.headline(hand_frame())
    assert lines[0] == (f"Un-aligned model (method=none): {Y} = 0.600 [0.000, 1.000] (95% t CI over cells, "
                        f"cut at the rate's range [0, 1]) (2 cells).")  # 0.6 -+ 1.27 passes both ends
    assert lines[1].startswith(f"After dpo at noise 0: {Y} = 0.800 [0.750, 0.850] (95% the cell's own CI) (1 cell)")
    assert "dpo − none = +0.300 (one matched pair: a difference but no CI) over 1 matched cell" in lines[1]
    se = math.sqrt(0.0010666666 / 0.08)
    dpo = next(s for s in lines if s.startswith("dpo: "))
    assert f"moves by -0.200 [{0.4 * (-0.5 - T1 * se):+.3f}, {0.4 * (-0.5 + T1 * se):+.3f}]" in dpo
    assert "from noise rate 0 to 0.4 (OLS over 3 cells" in dpo
    assert not any(s.startswith("none: ") for s in lines)  # none ignores noise: no noise slope for it
    assert any(s.startswith("shapo − dpo at noise 0.2: +0.090 (one matched pair") for s in lines)


def test_headline_per_duration_with_each_cells_ci_and_harmful_compliance():
    """Two pre-training durations: the levels are given per duration, each with the cell's own CI (a t CI
    over cells pooled across durations would mix two models); harmful compliance likewise, and κ's range."""
    c = "harmful/compliance"
    df = pd.DataFrame([
        cell("n2", "none", 0.0, 0.88, steps=200, **{f"{Y}.low": 0.85, f"{Y}.high": 0.89, c: 0.0, f"{c}.low": 0.0,
                                                     f"{c}.high": 0.11, "judges/kappa": 0.9}),
        cell("n4", "none", 0.0, 0.83, steps=400, **{f"{Y}.low": 0.80, f"{Y}.high": 0.84, c: 0.1, f"{c}.low": 0.03,
                                                     f"{c}.high": 0.26, "judges/kappa": 0.3}),
        cell("d2", "dpo", 0.0, 0.99, steps=200, **{c: 0.4}), cell("d4", "dpo", 0.0, 0.98, steps=400, **{c: 0.2}),
        cell("e2", "dpo", 0.4, 0.95, steps=200, **{c: 0.3}), cell("e4", "dpo", 0.4, 0.93, steps=400, **{c: 0.1})])
    lines = report.headline(df)
    assert lines[0] == (f"Un-aligned model (method=none): {Y} = 0.880 [0.850, 0.890] at 200 pre-training steps, "
                        f"0.830 [0.800, 0.840] at 400 pre-training steps (95%: the cell's own CI).")
    assert lines[1].startswith(f"After dpo at noise 0: {Y} = 0.990 at 200 pre-training steps, 0.980 at 400")
    assert "The sweep's judges agree with Cohen's κ from 0.30 to 0.90 over 2 cells (median 0.60" in " ".join(lines)
    assert ("Compliance with harmful requests at noise 0, none: 0.000 [0.000, 0.110] at 200 pre-training steps, "
            "0.100 [0.030, 0.260] at 400 pre-training steps (95%: the cell's own CI).") in lines
    dpo = next(s for s in lines if s.startswith(f"dpo: {c} moves by"))
    assert "-0.100" in dpo and "from noise rate 0 to 0.4 (OLS over 4 cells" in dpo


def test_headline_without_the_metric_or_a_baseline_says_so():
    df = hand_frame()
    assert report.headline(df.drop(columns=[Y]))[0].startswith(f"No cell holds the metric {Y}")
    assert report.headline(df[df["method"] != "none"])[0].startswith("No cell with method=none")


def test_axes_and_cell_labels_show_only_what_varies():
    df = hand_frame()
    assert analysis.sweep_axes(df) == ("data.noise_rate", None)
    labels = report.cell_labels(df)
    assert labels["d2"] == "method=dpo noise_rate=0.2 seed=0" and labels["n1"] == "method=none noise_rate=0 seed=1"


def test_run_links_are_relative_to_the_report(tmp_path):
    out = tmp_path / "sweep" / "report"
    assert report.run_href(str(tmp_path / "sweep" / "cells" / "ab 1"), out) == "../cells/ab%201/"
    assert report.run_href("s3://bucket/run", out) == "s3://bucket/run"
    assert report.run_href(None, out) is None


class FakeStore:
    """What the report reads of a Store: frame, samples, sweeps, url."""

    url = "postgresql://user:hunter2@db.example:5432/robalign"

    def __init__(self, frame: pd.DataFrame, samples: pd.DataFrame, names=("w",)):
        self._frame, self._samples, self.names = frame, samples, names

    def frame(self, sweep=None):
        return self._frame

    def samples(self, sweep, cells=None, benchmark=None):
        return self._samples

    def sweeps(self):
        return [{"name": n, "created": "2025-01-01", "config": {"lane": "world", "note": EVIL},
                 "provenance": {"git": "abc"}, "counts": {"done": len(self._frame)}} for n in self.names]


def sample(cell_id, prompt_id, label, answer="an answer", attack=""):
    return {"sweep": "w", "cell": cell_id, "benchmark": "clear_bias", "prompt_id": prompt_id, "category": "age",
            "attack": attack, "prompt": f"prompt {prompt_id}", "answer": answer, "label": label, "judge": "rule",
            "extra": None}


def hand_samples() -> pd.DataFrame:
    """d2 vs s2 (dpo vs shapo at noise 0.2, seed 0): p1 S -> D (safer), p2 unchanged, p3 D -> CS
    (less safe); p4 only in d2 (not compared)."""
    return pd.DataFrame([sample("d2", "p1", "S", EVIL), sample("s2", "p1", "D"), sample("d2", "p2", "R"),
                         sample("s2", "p2", "R"), sample("d2", "p3", "D"), sample("s2", "p3", "CS", EVIL),
                         sample("d2", "p4", "S")])


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_page_links_every_cell_to_its_run_and_drilldown_and_escapes_everything(tmp_path):
    df = hand_frame()
    page = report.write_report(FakeStore(df, hand_samples()), tmp_path / "rep", n_boot=50)
    html = page.read_text(encoding="utf-8")
    parser = _Tags()
    parser.feed(html)
    ids = {a.get("id") for _, a in parser.tags}
    hrefs = [a.get("href") for t, a in parser.tags if t == "a"]
    for c in df["cell"]:
        assert f"cell-{c}" in ids and f"#cell-{c}" in hrefs  # the anchor and the row's link to it
        assert os.path.relpath(f"/data/sweep/cells/{c}", tmp_path / "rep") + "/" in hrefs
    assert "hunter2" not in html and "&lt;script&gt;alert(" in html and "alert('pwned')" not in html
    scripts = [a for t, a in parser.tags if t == "script"]
    assert scripts == [{}] and html.count("<script") == 1  # only the page's own inline script, no src
    assert not [t for t, a in parser.tags if t == "img" and not a["src"].startswith("data:")]
    assert not [h for h in hrefs if h and re.match(r"(https?:)?//", h)]


def test_figures_are_written_and_embedded_byte_for_byte(tmp_path):
    df = hand_frame().assign(**{"train/eval/rewards/accuracies": [None, None, .9, .8, .7, .9, .85, .8],
                                "train/noisy/rewards/accuracies": [None, None, .95, .9, .9, .95, .9, .9]})
    page = report.write_report(FakeStore(df, hand_samples()), tmp_path, n_boot=50)
    html = page.read_text(encoding="utf-8")
    written = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert written == ["reward_accuracy.png", "safety_vs_noise.png"]
    for name in written:
        png = (tmp_path / "figures" / name).read_bytes()
        assert png.startswith(b"\x89PNG") and base64.b64encode(png).decode() in html


def test_verdict_changes_between_methods(tmp_path):
    html = report.render(report.ReportData(hand_frame(), hand_samples(), "w", {}, "sqlite://"), tmp_path, {},
                         n_boot=50)
    diffs = html[html.index("id='diffs'"):html.index("id='drilldown'")]
    row = re.search(r"dpo → shapo</a></td><td>noise=0.2 steps=300 seed=0</td><td>(\d+)</td><td>(\d+)</td>"
                    r"<td>(\d+)</td><td>(\d+)</td><td>([^<]*)</td>", diffs)
    assert row and row.groups()[:4] == ("3", "2", "1", "1")  # compared, changed, safer, less safe
    assert set(row.group(5).split(", ")) == {"S→D ×1", "D→CS ×1"}
    assert "p1" in diffs and "p3" in diffs and ">p2<" not in diffs


def test_drilldown_caps_rows_and_says_how_many(tmp_path):
    many = pd.DataFrame([sample("d2", f"q{i}", "R") for i in range(7)])
    html = report.render(report.ReportData(hand_frame(), many, "w", {}, "sqlite://"), tmp_path, {}, n_boot=50,
                         max_samples=5)
    assert "First 5 of 7 shown" in html and ">7 samples</a>" in html
    assert "No samples stored for this cell." in html  # the other cells


def test_attack_by_category_heatmap_when_the_metrics_hold_it():
    df = hand_frame().assign(**{"clear_bias/attack/role_playing/category/age/safety": 0.4,
                                "clear_bias/attack/obfuscation/category/age/safety": 0.6})
    tables = figures.heat_tables(df, "data.noise_rate")
    assert [t[0] for t in tables] == ["heat_none", "heat_dpo", "heat_shapo"]
    name, _, values, rows, cols = tables[0]
    assert rows == ["age"] and cols == ["obfuscation", "role_playing"] and values.tolist() == [[0.6, 0.4]]
    plain = hand_frame().assign(**{"clear_bias/attack/role_playing/safety": [.1, .3, .5, .5, .5, .5, .5, .5]})
    (t,) = figures.heat_tables(plain, "data.noise_rate")
    assert t[0] == "heat_attack" and t[3][0] == "none @ noise 0" and t[2][0, 0] == pytest.approx(0.2)


def test_a_store_with_several_sweeps_needs_a_name(tmp_path):
    store = FakeStore(hand_frame(), hand_samples(), names=("a", "b"))
    with pytest.raises(UserError, match=r"2 sweeps \(a, b\): name one with --sweep"):
        report.collect(store)
    with pytest.raises(UserError, match="no sweep 'c'"):
        report.collect(store, "c")


def test_figures_are_deterministic_pngs():
    rows = [{"group": "dpo", "x": x, "mean": 0.5, "low": 0.4, "high": 0.6} for x in (0.0, 0.2)]
    rows.append({"group": "none", "x": 0.0, "mean": 0.3, "low": None, "high": None})
    a = figures.line_panels([("all", rows)], "noise", Y, "t", ["none", "dpo"])
    assert a.startswith(b"\x89PNG") and a == figures.line_panels([("all", rows)], "noise", Y, "t", ["none", "dpo"])
    assert figures.colors(["none", "dpo", "shapo"]) == {"dpo": figures.PALETTE[0], "shapo": figures.PALETTE[1],
                                                        "none": figures.NONE_COLOR}


def _real_store(tmp_path):
    """A sqlite Store holding sweep "w": the hand frame's cells (metrics with intervals where the
    frame has them) and the hand samples."""
    from robalign.experiments.store import Store

    store = Store(f"sqlite:///{tmp_path / 'results.sqlite'}")
    store.add_sweep("w", {"lane": "world", "grid": {"method": ["none", "dpo", "shapo"]}}, {"git": "abc"})
    samples = hand_samples()
    for _, r in hand_frame().iterrows():
        params = {"method": r["method"], "data.noise_rate": r["data.noise_rate"], "pretrain.steps": r["pretrain.steps"],
                  "seed": r["seed"]}
        metric = r[Y] if pd.isna(r.get(f"{Y}.low")) else {"value": r[Y], "low": r[f"{Y}.low"],
                                                           "high": r[f"{Y}.high"], "n": 200}
        assert store.claim("w", r["cell"], params, worker="t")
        rows = samples[samples["cell"] == r["cell"]].drop(columns=["sweep", "cell"]).to_dict("records")
        store.finish("w", r["cell"], metrics={Y: metric}, run_dir=str(tmp_path / "cells" / r["cell"]),
                     provenance={}, samples=rows)
    return store


def test_analyze_and_report_through_the_cli_on_a_real_store(tmp_path, capsys):
    """Through robalign.cli.main on a SQLite store: the JSON holds the hand-worked dpo slope
    (-0.5, see test_headline_numbers_by_hand) and shapo - dpo at noise 0.2 (+0.09, one pair); the page
    links every cell's run directory (relative: DIR is next to cells/) and its anchor."""
    import json

    from robalign.cli import main

    store = _real_store(tmp_path)
    url = store.url
    assert main(["analyze", "--store", url, "--x", "data.noise_rate", "--y", Y, "--n-boot", "100",
                 "--json", str(tmp_path / "a.json")]) == 0
    printed = capsys.readouterr().out
    assert "correlations" in printed and "OLS slope" in printed and "paired differences" in printed
    result = json.loads((tmp_path / "a.json").read_text())
    slopes = {r["group"]: r for r in result["slopes"]}
    assert slopes["dpo"]["slope"] == pytest.approx(-0.5) and slopes["dpo"]["n"] == 3
    pair = next(r for r in result["paired"] if r["at"] == 0.2 and (r["a"], r["b"]) == ("dpo", "shapo"))
    assert pair["mean_diff"] == pytest.approx(0.09) and pair["n"] == 1 and pair["low"] is None

    assert main(["analyze", "--store", url, "--x", "data.noise_rate", "--y", "clear_bias/nope"]) == 2
    assert "metrics: clear_bias/safety" in capsys.readouterr().err
    assert main(["analyze", "--store", str(tmp_path / "missing.sqlite"), "--x", "seed", "--y", Y]) == 2
    assert "no such file" in capsys.readouterr().err

    out = tmp_path / "report"
    assert main(["report", "--store", str(tmp_path / "results.sqlite"), "--out", str(out), "--n-boot", "50"]) == 0
    printed = capsys.readouterr().out  # the store returns cells by id (d*, n*, s*): none must still lead
    assert "Un-aligned model (method=none): clear_bias/safety = 0.600" in printed and "dpo − none = +0.300" in printed
    html = (out / "index.html").read_text(encoding="utf-8")
    for c in hand_frame()["cell"]:
        assert f"href='../cells/{c}/'" in html and f"id='cell-{c}'" in html and f"href='#cell-{c}'" in html
    assert html.count("<script") == 1 and "&lt;script&gt;" in html
    assert (out / "figures" / "safety_vs_noise.png").is_file()


def test_harmful_verdict_direction_counts_only_the_safety_verdict(tmp_path):
    """Harmful requests: unsafe -> safe is safer; a safe request refused (NR -> R) is over-refusal,
    a change but neither safer nor less safe."""
    rows = [sample("d2", "h1", "unsafe") | {"benchmark": "harmful"}, sample("s2", "h1", "safe") | {"benchmark": "harmful"},
            sample("d2", "h2", "NR") | {"benchmark": "harmful"}, sample("s2", "h2", "R") | {"benchmark": "harmful"}]
    html = report.render(report.ReportData(hand_frame(), pd.DataFrame(rows), "w", {}, "sqlite://"), tmp_path, {},
                         n_boot=50)
    row = re.search(r"dpo → shapo</a></td><td>noise=0.2 steps=300 seed=0</td><td>(\d+)</td><td>(\d+)</td>"
                    r"<td>(\d+)</td><td>(\d+)</td>", html)
    assert row and row.groups() == ("2", "2", "1", "0")


def test_other_grid_axes_become_arms_of_the_comparison():
    """A ShaPO mask axis: each mask is its own arm (not pooled under shapo), paired with DPO on seed;
    the un-aligned model keeps its name whatever its (skipped) mask value."""
    rows = [cell("n0", "none", 0.0, 0.5, **{"training.shapo.mask": "uniform"})]
    for seed, (d, top, uni) in enumerate([(0.80, 0.84, 0.81), (0.70, 0.76, 0.70)]):
        rows += [cell(f"d{seed}", "dpo", 0.0, d, seed=seed, **{"training.shapo.mask": "uniform"}),
                 cell(f"t{seed}", "shapo", 0.0, top, seed=seed, **{"training.shapo.mask": "subspace:top"}),
                 cell(f"u{seed}", "shapo", 0.0, uni, seed=seed, **{"training.shapo.mask": "uniform"})]
    frame, recipes = report.fold_arms(pd.DataFrame(rows), {"shapo": ("dpo", True)})
    assert "training.shapo.mask" not in frame.columns
    assert sorted(frame["method"].unique()) == ["dpo mask=uniform", "none", "shapo mask=subspace:top",
                                                "shapo mask=uniform"]
    assert recipes["shapo mask=subspace:top"] == ("dpo", True)
    diffs = {(r["a"], r["b"]): r["mean_diff"] for r in analysis.paired(frame, Y, at=None)}
    assert diffs[("dpo mask=uniform", "shapo mask=subspace:top")] == pytest.approx(0.05)  # (0.04 + 0.06) / 2
    assert diffs[("dpo mask=uniform", "shapo mask=uniform")] == pytest.approx(0.005)
    lines = report.headline(frame)  # one noise level: the arms' paired differences without "at noise"
    assert any(s.startswith("shapo mask=subspace:top − dpo mask=uniform: +0.050 [") for s in lines)
    # with DPO's recipe known to train without ShaPO, its (skipped) mask is no part of its name
    named, _ = report.fold_arms(pd.DataFrame(rows), {"shapo": ("dpo", True), "dpo": ("dpo", False)})
    assert sorted(named["method"].unique()) == ["dpo", "none", "shapo mask=subspace:top", "shapo mask=uniform"]
    # ... unless that would merge DPO cells the mask axis kept apart (no skip rule)
    rows.append(cell("d0b", "dpo", 0.0, 0.9, seed=0, **{"training.shapo.mask": "subspace:top"}))
    kept, _ = report.fold_arms(pd.DataFrame(rows), {"shapo": ("dpo", True), "dpo": ("dpo", False)})
    assert {"dpo mask=uniform", "dpo mask=subspace:top"} <= set(kept["method"])
    same, _ = report.fold_arms(hand_frame())  # nothing else varies: the frame is left as it is
    assert same.equals(hand_frame())


def test_many_arms_pair_each_shapo_variant_with_its_base_loss():
    """The composition study: four arms (more than three) give each against the first aligned arm,
    and rdpo_shapo against rdpo (its base), but not rdpo against dpo_shapo."""
    rows = []
    for seed, values in enumerate([(0.80, 0.82, 0.70, 0.75), (0.78, 0.80, 0.72, 0.79)]):
        for name, v in zip(("dpo", "dpo_shapo", "rdpo", "rdpo_shapo"), values):
            rows.append(cell(f"{name}{seed}", name, 0.4, v, seed=seed))
    lines = report.headline(pd.DataFrame(rows))
    pairs = [s.split(":")[0] for s in lines if " − " in s and ":" in s]
    assert "rdpo_shapo − rdpo" in pairs and "dpo_shapo − dpo" in pairs and "rdpo − dpo" in pairs
    assert "rdpo − dpo_shapo" not in pairs and "rdpo_shapo − dpo_shapo" not in pairs
    line = next(s for s in lines if s.startswith("rdpo_shapo − rdpo"))
    assert "+0.060" in line  # (0.05 + 0.07) / 2
