"""The ShaPO study's figures in `robalign report` and the `curves` table behind them.

A small real store (SQLite, and the curves table on PostgreSQL too) built by hand: methods none,
dpo, shapo (dpo + ShaPO), cdpo, cdpo_shapo at one noise rate, two seeds each, with per-step reward
margins, soft-label margins and a probe's epochs. Every number a figure's table prints is worked
out here by hand; a store without the data shows none of the study_figures.
"""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest

from robalign.errors import UserError
from robalign.experiments import curves, report, study_figures
from robalign.experiments.store import Store

Y, ASR = "clear_bias/safety", "harmful/compliance"
T1 = math.tan(0.475 * math.pi)  # t_{.975} with 1 degree of freedom (two seeds): 12.706
STUDY_NAMES = ("reward_distribution", "probe_curves", "train_margins", "asr", "composition")


def train_config(losses: dict, shapo: bool, aggregation: str = "mean") -> dict:
    return {"loss": {"losses": losses, "aggregation": aggregation}, "training": {"shapo": {"enabled": shapo}}}


RECIPES = {"dpo": train_config({"dpo": 1.0}, False), "shapo": train_config({"dpo": 1.0}, True),
           "cdpo": train_config({"cdpo": 1.0}, False), "cdpo_shapo": train_config({"cdpo": 1.0}, True)}
# safety and ASR by method, seed 0 / seed 1
SAFETY = {"none": (0.5, 0.5), "dpo": (0.8, 0.9), "shapo": (0.85, 0.95), "cdpo": (0.6, 0.7), "cdpo_shapo": (0.7, 0.9)}
ASRS = {"none": (0.4, 0.6), "dpo": (0.2, 0.4), "shapo": (0.1, 0.3), "cdpo": (0.3, 0.3), "cdpo_shapo": (0.2, 0.2)}
MARGINS = {0: [0.1, 0.2, 0.3], 1: [0.3, 0.4, 0.5]}  # train/rewards/margins at steps 1-3 of every trained cell
DELTA = [-1.0, 0.0, 1.0, 2.0]  # the soft-label margins of the shapo cells (one file)
DELTA_B = [0.0, 2.0, 4.0]  # cdpo_shapo's: a second set
Q = [0.3, 0.5, 0.7, 0.9]
PROBE = {"train_loss": [0.7, 0.5, 0.4], "eval_loss": [0.7, 0.6, 0.55], "train_accuracy": [0.5, 0.8, 0.9],
         "eval_accuracy": [0.5, 0.7, 0.85]}


def series(values, start: int = 0) -> dict[int, float]:
    return {start + i: v for i, v in enumerate(values)}


def study_store(url: str, with_curves: bool = True, with_harmful: bool = True) -> Store:
    store = Store(url)
    store.add_sweep("study", {"lane": "smollm2", "bench": {"harmful": {"judge": "rule"}}}, {"git": "abc"})
    for method in SAFETY:
        for seed in (0, 1):
            cell = f"{method}-{seed}"
            assert store.claim("study", cell, {"method": method, "data.noise_rate": 0.2, "seed": seed}, worker="t")
            metrics = {Y: SAFETY[method][seed]}
            if with_harmful:
                metrics[ASR] = ASRS[method][seed]
                if method == "dpo":  # a second judge for dpo only
                    metrics["harmful_llm/compliance"] = {"value": 0.5, "low": 0.3, "high": 0.7, "n": 20}
            if with_curves and method != "none":
                found = {"train/rewards/margins": series(MARGINS[seed], start=1)}
                if method == "shapo":
                    found |= {"soft_labels/reward_margin": series(DELTA), "soft_labels/q": series(Q)}
                    found |= {f"probe/adam/{k}": series(v, start=1) for k, v in PROBE.items()}
                if method == "cdpo_shapo" and seed == 0:
                    found |= {"soft_labels/reward_margin": series(DELTA_B)}
                curves.write_curves(store, "study", cell, found)
            store.finish("study", cell, metrics=metrics, run_dir=f"/runs/{cell}",
                         provenance={"train_config": RECIPES[method]} if method in RECIPES else {})
    return store


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'results.sqlite'}"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The study store's report data (collected once for the module)."""
    path = tmp_path_factory.mktemp("study") / "results.sqlite"
    store = study_store(f"sqlite:///{path}")
    data = report.collect(store, "study")
    store.close()
    return data


def _rows(fig) -> list[list[str]]:
    caption, png, (headers, rows) = fig
    assert png.startswith(b"\x89PNG") and caption
    return rows


# -------------------------------------------------------------------- the curves table

@pytest.fixture(params=["sqlite", "postgresql"])
def any_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite'}"
    return request.getfixturevalue("postgres_database")


def test_curves_round_trip_replace_done_cells_only_and_cascade(any_url):
    store = Store(any_url)
    store.add_sweep("s", {"x": 1}, {})
    for cell in ("a", "b"):
        assert store.claim("s", cell, {"method": "dpo", "seed": 0}, worker="w")
    assert curves.write_curves(store, "s", "a", {"train/loss": {1: 0.69, 2: float("nan")}, "soft_labels/q": {0: 0.9}}) == 3
    curves.write_curves(store, "s", "b", {"train/loss": {1: 0.5}})
    assert curves.read_curves(store, "s").empty  # neither cell is done yet
    store.finish("s", "a", metrics={}, run_dir="/r/a", provenance={})
    got = curves.read_curves(store, "s")
    assert got[["cell", "name", "step"]].values.tolist() == [["a", "soft_labels/q", 0], ["a", "train/loss", 1],
                                                            ["a", "train/loss", 2]]
    assert got["value"].iloc[1] == pytest.approx(0.69) and math.isnan(got["value"].iloc[2])  # NaN stored as NULL
    assert curves.read_curves(store, "s", prefixes=["soft_labels/"])["name"].tolist() == ["soft_labels/q"]
    curves.write_curves(store, "s", "a", {"train/loss": {5: 0.1}})  # a re-run replaces the cell's curves
    assert curves.read_curves(store, "s")[["name", "step"]].values.tolist() == [["train/loss", 5]]
    with pytest.raises(UserError, match="claim\\(\\) it before writing its curves"):
        curves.write_curves(store, "s", "nope", {"train/loss": {1: 1.0}})
    store.delete_sweep("s")  # the foreign key's cascade takes the curves along
    with store.read_connection() as conn:
        import sqlalchemy as sa

        assert conn.execute(sa.text("SELECT count(*) FROM curves")).scalar() == 0
        assert conn.execute(sa.text("SELECT max(version) FROM schema_version")).scalar() == 1
    store.close()


def test_a_store_without_the_table_reads_no_curves(sqlite_url):
    store = Store(sqlite_url)
    store.add_sweep("s", {}, {})
    assert curves.read_curves(store, "s").empty
    with store.read_connection() as conn:
        import sqlalchemy as sa

        assert not sa.inspect(conn).has_table("curves")  # reading creates nothing
    store.close()


def test_cell_series_reads_the_files_a_cell_wrote(tmp_path):
    """metrics.jsonl (training lines, an eval line at the same step), the soft-label file, and the
    probe behind the ShaPO mask (mask.json -> probe.json's per-epoch history)."""
    run = tmp_path / "cell" / "train"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"step": 1, "loss": 0.69, "rewards/margins": 0.0, "epoch": 0.5},
        {"step": 2, "loss": 0.6, "rewards/margins": 0.2},
        {"step": 2, "eval/rewards/margins": 0.1, "eval/pairs": 8.0}]) + "\n")
    pairs = tmp_path / "soft.jsonl"
    pairs.write_text("".join(json.dumps({"id": i, "soft_label": q, "reward_margin": d}) + "\n"
                             for i, (q, d) in enumerate(zip(Q, DELTA))))
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "probe.json").write_text(json.dumps({"estimators": {
        "lbfgs": {"history": []}, "adam": {"history": [{"epoch": 1, "train_loss": 0.7, "eval_accuracy": 0.5},
                                                       {"epoch": 2, "train_loss": 0.5, "eval_accuracy": 0.7}]}}}))
    (tmp_path / "mask").mkdir()
    (tmp_path / "mask" / "mask.json").write_text(json.dumps({"probe": str(tmp_path / "probe")}))
    config = {"output_dir": str(run), "data": {"train": str(pairs)},
              "training": {"shapo": {"enabled": True, "mask": str(tmp_path / "mask")}}}
    got = curves.cell_series(tmp_path / "cell", {"train_config": config})
    assert got == {"train/loss": {1: 0.69, 2: 0.6}, "train/rewards/margins": {1: 0.0, 2: 0.2}, "train/epoch": {1: 0.5},
                   "train/eval/rewards/margins": {2: 0.1}, "train/eval/pairs": {2: 8.0},
                   "soft_labels/reward_margin": series(DELTA), "soft_labels/q": series(Q),
                   "probe/adam/train_loss": {1: 0.7, 2: 0.5}, "probe/adam/eval_accuracy": {1: 0.5, 2: 0.7}}
    # a world-lane cell: plain pairs (no reward_margin), no mask; method none: nothing at all
    (tmp_path / "plain.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    plain = curves.cell_series(tmp_path / "cell", {"train_config": config | {"data": {"train": str(tmp_path / "plain.jsonl")},
                                                                             "training": {"shapo": {"enabled": False}}}})
    assert set(plain) == {"train/loss", "train/rewards/margins", "train/epoch", "train/eval/rewards/margins",
                          "train/eval/pairs"}
    assert curves.cell_series(tmp_path / "none-cell", {}) == {}


def test_long_series_are_thinned_evenly_keeping_both_ends():
    assert list(curves._thin(series(range(10)), 4)) == [0, 3, 6, 9]  # round(i * 9 / 3)
    assert list(curves._thin(series(range(10), start=1), 3)) == [1, 5, 10]  # positions 0, round(4.5) = 4, 9: steps 1, 5, 10
    assert curves._thin({1: 1.0}, 4) == {1: 1.0}


def test_the_hook_writes_what_the_cell_files_hold(tmp_path, sqlite_url):
    run = tmp_path / "c" / "train"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "rewards/margins": 0.25}) + "\n")
    store = Store(sqlite_url)
    store.add_sweep("s", {}, {})
    store.claim("s", "c", {"method": "dpo"}, worker="w")
    assert curves.record_cell_curves(store, "s", "c", tmp_path / "c", {"train_config": {}}) == 1
    store.finish("s", "c", metrics={}, run_dir=str(tmp_path / "c"), provenance={})
    assert curves.read_curves(store, "s")["value"].tolist() == [0.25]
    # a sweep that ran before the hook: backfill reads every done cell's run_dir again
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "rewards/margins": 0.5}) + "\n")
    assert curves.backfill_curves(store, "s") == {"c": 1}
    assert curves.read_curves(store, "s")["value"].tolist() == [0.5]
    store.close()


# -------------------------------------------------------------------- the figures, numbers by hand

def test_recipes_name_the_loss_family_and_shapo():
    assert study_figures.recipe(train_config({"dpo": 1.0, "sft": 0.1}, True, "drdpo")) == ("drdpo", True)
    assert study_figures.recipe(train_config({"cdpo": 1.0}, False, "drdpo")) == ("drdpo(cdpo)", False)
    assert study_figures.recipe(train_config({"rdpo": 1.0}, False)) == ("rdpo", False)
    assert study_figures.recipe(train_config({"sft": 1.0}, False)) == ("sft", False)
    assert study_figures.recipe({}) is None


def test_study_store_collects_curves_and_recipes(study):
    assert study.recipes == {m: study_figures.recipe(c) for m, c in RECIPES.items()}
    assert set(study.curves["name"]) == {"train/rewards/margins", "soft_labels/reward_margin", "soft_labels/q",
                                         *(f"probe/adam/{k}" for k in PROBE)}


def test_training_margins_band_over_seeds(study):
    """At step 3: seeds 0.3 and 0.5 -> mean 0.4, sd 0.1414, t CI 0.4 -+ 12.706 * 0.1."""
    rows = _rows(study_figures.train_margins(study.frame, study.curves))
    lo, hi = 0.4 - T1 * 0.1, 0.4 + T1 * 0.1
    assert rows == [["all cells", m, "2", "3", "2", f"0.400 [{lo:.3f}, {hi:.3f}]"]
                    for m in ("cdpo", "cdpo_shapo", "dpo", "shapo")]


def test_reward_margin_distribution_by_hand(study):
    """DELTA = [-1, 0, 1, 2]: mean 0.5, sd = sqrt(5/3) (n - 1), half above 0; mean q = mean σ(β·Δr/sd).
    The two shapo cells share it; cdpo_shapo seed 0 has another set [0, 2, 4] (sd 2) and no q."""
    caption, _, (headers, rows) = study_figures.reward_distribution(study.curves, report.cell_labels(study.frame),
                                                              study.frame)
    sd = math.sqrt(5 / 3)
    q = [sum(1 / (1 + math.exp(-b * d / sd)) for d in DELTA) / 4 for b in study_figures.BETA_R]
    # both sets at noise 0.2: the one two cells share comes first, though cdpo_shapo leads the page
    assert rows[0] == ["shapo", "2", "4", "0.500", f"{sd:.3f}", "0.500", "0.600", *(f"{v:.3f}" for v in q)]
    qb = [sum(1 / (1 + math.exp(-b * d / 2)) for d in DELTA_B) / 3 for b in study_figures.BETA_R]
    assert rows[1] == ["cdpo_shapo seed=0", "1", "3", "2.000", "2.000", "0.667", "–", *(f"{v:.3f}" for v in qb)]
    assert headers[-3:] == ["mean q at β_r = 0.1", "mean q at β_r = 1", "mean q at β_r = 10"]
    assert "Figure 5" in caption and "standardised" in caption


def test_probe_curves_final_epoch(study):
    rows = _rows(study_figures.probe_curves(study.curves, report.cell_labels(study.frame), study.frame))
    assert rows == [["adam", "shapo", "2", "3", "0.400", "0.550", "0.900", "0.850"]]


def test_asr_per_method_and_judge(study):
    """dpo: 0.2 / 0.4 -> 0.3 -+ 12.706 * 0.1, clipped to [0, 1]; cdpo: 0.3 / 0.3, no spread; the llm judge's two dpo cells
    0.5 / 0.5; the harmful judge 'rule' runs as keyword."""
    caption, _, (_, rows) = study_figures.asr_bars(study.frame, report.harmful_judge(study.info))
    by = {(r[1], r[2]): r for r in rows}
    # 0.3 -+ 1.271 reaches past a rate's range: cut at [0, 1]
    assert by[("dpo", "keyword")] == ["all cells", "dpo", "keyword", "2", "0.300 [0.000, 1.000]"]
    assert by[("cdpo", "keyword")][4] == "0.300 [0.300, 0.300]"
    assert by[("dpo", "llm")][3:] == ["2", "0.500 [0.500, 0.500]"]
    assert ("none", "llm") not in by and len(rows) == 6
    assert "proxy" in caption


def test_composition_bars_and_shapo_minus_base(study):
    """cdpo safety 0.6 / 0.7, cdpo_shapo 0.7 / 0.9: differences 0.1 / 0.2 -> +0.15, se 0.05, t = 3 with
    1 df: p = 1 - 2 atan(3) / pi = 0.205; dpo 0.8 / 0.9 vs shapo 0.85 / 0.95: +0.05 both, no spread."""
    rows = _rows(study_figures.composition(study.frame, study.recipes))
    by = {(r[0], r[3]): r for r in rows}
    assert [r[3] for r in rows if r[0] == Y] == ["cdpo", "cdpo_shapo", "dpo", "shapo"]
    assert by[(Y, "cdpo")][2:7] == ["cdpo", "cdpo", "no", "2", f"0.650 [{0.65 - T1 * 0.05:.3f}, 1.000]"]  # a rate's CI stops at 1
    p = 1 - 2 * math.atan(3) / math.pi
    assert by[(Y, "cdpo_shapo")][7] == (f"+0.150 [{0.15 - T1 * 0.05:+.3f}, {0.15 + T1 * 0.05:+.3f}], 2 pairs, "
                                        f"p = {p:.2g}")
    assert by[(Y, "shapo")][7] == "+0.050 [+0.050, +0.050], 2 pairs"
    assert by[(ASR, "cdpo_shapo")][6:] == ["0.200 [0.200, 0.200]", "-0.100 [-0.100, -0.100], 2 pairs"]


def test_shapo_minus_base_is_signed_whatever_the_names_order():
    frame = pd.DataFrame([{"cell": f"{m}{s}", "method": m, "seed": s, Y: v}
                          for m, vals in (("z_base", (0.5, 0.6)), ("a_shapo", (0.7, 0.7))) for s, v in enumerate(vals)])
    # a_shapo sorts first, so analysis.paired gives base - shapo: the figure flips it
    text = study_figures._shapo_minus_base(frame, Y, "z_base", "a_shapo")
    assert text.startswith("+0.150 [") and "2 pairs" in text
    # the figure's two-line label under the bars: 0.15 -+ 12.706 * 0.05, t = 3 on 1 df
    label = study_figures._shapo_minus_base(frame, Y, "z_base", "a_shapo", short=True)
    assert label == (f"Δ +0.150, p {1 - 2 * math.atan(3) / math.pi:.2g}\n"
                     f"[{0.15 - T1 * 0.05:+.3f}, {0.15 + T1 * 0.05:+.3f}]")
    assert study_figures._shapo_minus_base(frame, Y, "z_base", "nobody", short=True) == ""


def test_the_page_has_each_study_figure_with_its_numbers(study, tmp_path):
    page = report.write(study, tmp_path / "rep", n_boot=20)
    html = page.read_text(encoding="utf-8")
    written = {p.stem for p in (tmp_path / "rep" / "figures").iterdir()}
    assert set(STUDY_NAMES) <= written
    for name in STUDY_NAMES:
        block = re.search(rf"<figure id='fig-{name}'>.*?</figure>", html, re.S).group(0)
        assert "the numbers behind this figure" in block and "data:image/png;base64," in block
    assert f"0.400 [{0.4 - T1 * 0.1:.3f}, {0.4 + T1 * 0.1:.3f}]" in html
    assert "Not drawn" not in html


def test_without_the_data_the_page_has_none_of_these_figures(tmp_path):
    store = study_store(f"sqlite:///{tmp_path / 'bare.sqlite'}", with_curves=False, with_harmful=False)
    data = report.collect(store, "study")
    store.close()
    assert data.curves.empty
    page = report.write(data, tmp_path / "rep", n_boot=20)
    html = page.read_text(encoding="utf-8")
    written = {p.stem for p in (tmp_path / "rep" / "figures").iterdir()}
    # composition needs safety only, which this store has; the other four have no data
    assert written & set(STUDY_NAMES) == {"composition"}
    for name in STUDY_NAMES[:4]:
        assert f"id='fig-{name}'" not in html
    note = re.search(r"Not drawn: ([^<]*)\.</p>", html).group(1)
    assert "no soft-label margins in the store" in note and "no probe history in the store" in note
    assert "no per-step rewards/margins in the store" in note and "no harmful/compliance metric" in note


def test_a_sweep_with_curves_but_no_soft_labels_or_probe_shows_no_figure_5_or_6(study):
    plain = study.curves[study.curves["name"] == "train/rewards/margins"]
    figs = study_figures.study_figures(study.frame, plain, {}, report.cell_labels(study.frame), "keyword")
    assert set(figs) == {"train_margins", "asr"}  # no recipes: no composition either
    only_dpo = study.frame[study.frame["method"].isin(["none", "dpo", "shapo"])]
    recipes = {m: r for m, r in study.recipes.items() if m in ("dpo", "shapo")}
    assert study_figures.composition(only_dpo, recipes) is None  # dpo +- ShaPO alone is not a data-robust composition


def test_durations_and_noise_rates_are_panels_never_pooled_into_a_ci():
    """Two pre-training durations x two noise rates, one seed: each bar is one cell, with that cell's own
    Wilson CI, never a t CI over two different models."""
    rows = [{"cell": f"{m}{d}{n}", "method": m, "pretrain.steps": d, "data.noise_rate": n, "seed": 0,
             ASR: v, f"{ASR}.low": v - 0.1, f"{ASR}.high": v + 0.1}
            for m, d, n, v in [("dpo", 200, 0.0, 0.4), ("dpo", 200, 0.2, 0.3), ("dpo", 400, 0.0, 0.2),
                               ("dpo", 400, 0.2, 0.1)]]
    frame = pd.DataFrame(rows)
    assert [t for t, _ in study_figures._facets(frame)] == [
        "200 pre-training steps, noise rate 0", "200 pre-training steps, noise rate 0.2",
        "400 pre-training steps, noise rate 0", "400 pre-training steps, noise rate 0.2"]
    caption, _, (_, table) = study_figures.asr_bars(frame, "keyword")
    assert [r[3:] for r in table] == [["1", "0.400 [0.300, 0.500]"], ["1", "0.300 [0.200, 0.400]"],
                                      ["1", "0.200 [0.100, 0.300]"], ["1", "0.100 [0.000, 0.200]"]]
    assert "one panel per noise rate × pre-training steps" in caption and "pooled" not in caption
