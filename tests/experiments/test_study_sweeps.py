"""The ShaPO study as sweeps: the shipped study configs (grid sizes worked out by hand, validated
offline with the network cut), the SFT stage (trained once, shared, the preference stage's start and
reference model, method ``sft`` benchmarks it), the probe + subspace stage (one probe, each mask once,
the right mask in each cell's resolved config), and the smollm2 lane's β_r axis and non-soft losses."""

from __future__ import annotations

import json
import math
import socket
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from robalign.cli import main
from robalign.config import ConfigError
from robalign.experiments import pipeline
from robalign.experiments.sweep import expand, load_sweep_config
from robalign.models.loading import model_fingerprint

TINY_WORLD = ["prompts.per_category=2", "corpus.draws_base=4", "corpus.draws_attacked=1",
              "prompts.attacks=[prefix_injection:v1, refusal_suppression:v1]", "requests.per_category=2",
              "requests.draws=4", "pairs.per_prompt=1", "judge.per_label=1"]
SFT_STEPS, FRACTION = 3, 0.05  # nano: 4 layers x 256 MLP units = 1,024 neurons -> K = round(51.2) = 51
MASKS = ["uniform", "subspace:top", "subspace:bottom", "subspace:random"]


def load(tmp: Path, config: dict, name: str = "sweep.yaml"):
    path = tmp / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return load_sweep_config(path)


def study_sweep(tmp: Path) -> dict:
    """World lane: SFT (3 steps) before DPO / ShaPO (2 steps), ShaPO over the four masks, two seeds."""
    return {
        "name": "study", "lane": "world", "out": str(tmp / "out"), "world": {"overrides": TINY_WORLD},
        "pretrain": {"size": "nano", "cooldown": 0, "threads": 1, "overrides": ["heldout_rows=0"]},
        "train": {"config": "configs/train/dpo_world.yaml",
                  "overrides": ["training.max_steps=2", "training.per_device_batch_size=4", "training.save_steps=0"]},
        "sft": {"enabled": True, "steps": SFT_STEPS},
        "subspace": {"fraction": FRACTION, "probe_pairs": 64},
        "methods": {"dpo": {}, "shapo": {"training.shapo.enabled": True}},
        "grid": {"method": ["none", "sft", "dpo", "shapo"], "pretrain.steps": [2], "data.noise_rate": [0.0, 0.5],
                 "training.shapo.mask": MASKS, "seed": [0, 1]},
        "skip": ["method=none and data.noise_rate>0", "method=sft and data.noise_rate>0",
                 "method!=shapo and training.shapo.mask!=uniform", "method!=shapo and seed>0"],
        "bench": {"clear_bias": {"judges": ["rule"], "max_new_tokens": 8},
                  "harmful": {"judge": "keyword", "max_new_tokens": 8}},
    }


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    sweep = load(tmp, study_sweep(tmp))
    messages: list[str] = []
    pipeline.prepare(sweep, messages.append)
    return sweep, messages


def cell(sweep, method: str, noise: float = 0.0, mask: str = "uniform", seed: int = 0):
    want = {"method": method, "data.noise_rate": noise, "training.shapo.mask": mask, "seed": seed}
    return next(c for c in expand(sweep) if all(c.params.get(k, v) == v for k, v in want.items()))


def run(sweep, method: str, **params):
    c = cell(sweep, method, **params)
    messages: list[str] = []
    return pipeline.run_cell(sweep, c, sweep.out_dir / "cells" / c.id, messages.append), messages


def sft_dir(sweep) -> Path:
    (only,) = [p for p in (sweep.out_dir / "sft").iterdir() if p.is_dir()]
    return only


# -- the SFT stage -------------------------------------------------------------------------------


def test_prepare_trains_one_sft_model_for_the_whole_grid(study):
    """20 cells, 18 of them trained, all at one checkpoint with sft.noisy off: one SFT key, one
    run of the sft loss alone, without noise or ShaPO, 3 steps; a second prepare does nothing."""
    sweep, messages = study
    assert len(expand(sweep)) == 20  # none, sft, dpo x 2 noise, shapo x 4 masks x 2 noise x 2 seeds
    assert sum(m.startswith("sft ") for m in messages) == 1
    out = sft_dir(sweep)
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["loss"]["losses"] == {"sft": 1.0} and config["loss"]["aggregation"] == "mean"
    assert config["data"]["noise_rate"] == 0.0 and config["training"]["shapo"]["enabled"] is False
    assert config["training"]["max_steps"] == SFT_STEPS and config["training"]["seed"] == 0
    base = sweep.out_dir.resolve() / "world" / "models" / "step_2"
    assert config["model"]["name_or_path"] == str(base)
    info = json.loads((out / "run_info.json").read_text())
    assert info["status"] == "complete" and info["total_steps"] == SFT_STEPS and info["flipped_ids"] == []
    tuned, original = load_file(str(out / "model" / "model.safetensors")), load_file(str(base / "model.safetensors"))
    assert any(not torch.equal(tuned[k], original[k]) for k in original)  # the SFT steps moved the weights
    again: list[str] = []
    pipeline.prepare(sweep, again.append)
    assert again == []


def test_preference_cells_start_from_the_sft_model_and_use_it_as_reference(study):
    """Two DPO cells (noise 0 and 0.5) share the SFT run, neither trains it again; each trains from it,
    and its reference log-probs are the SFT model's: the mean reference log-prob of the held-out
    chosen responses equals the SFT run's own final eval/logps/chosen on the same pairs, and the
    first batch's DPO loss is ln 2 (policy = reference at step 0)."""
    sweep, _ = study
    out = sft_dir(sweep)
    record = json.loads((out / "sft.json").read_text())
    for noise in (0.0, 0.5):
        result, messages = run(sweep, "dpo", noise=noise)
        assert not any(m.startswith("sft ") for m in messages)  # read back, not trained again
        assert result.provenance["sft"]["key"] == out.name
        assert result.provenance["train_config"]["model"]["name_or_path"] == str(out / "model")
        info = json.loads(Path(result.provenance["train_run"]).read_text())
        assert info["model_fingerprint"] == model_fingerprint(str(out / "model"))
        assert info["initial_dpo_loss"]["mean"] == pytest.approx(math.log(2), abs=1e-6)
        reference = load_file(info["reference_cache"]["eval"])
        assert reference["chosen"].mean().item() == pytest.approx(record["eval_metrics"]["eval/logps/chosen"],
                                                                  rel=1e-5)
        m = result.metrics
        assert m["sft/steps"] == SFT_STEPS and m["train/steps"] == 2
        assert m["sft/eval/rewards/accuracies"]["n"] == m["sft/eval/pairs"]
    assert json.loads((out / "sft.json").read_text()) == record


def test_method_sft_is_the_sft_model_benchmarked(study):
    sweep, _ = study
    result, _ = run(sweep, "sft")
    assert result.provenance["model"] == str(sft_dir(sweep) / "model")
    m = result.metrics
    assert m["sft/steps"] == SFT_STEPS and not any(k.startswith("train/") for k in m)
    assert set(m["clear_bias/safety"]) == {"value", "low", "high", "n"}  # None when 8 tokens say nothing judgeable
    assert m["harmful/compliance"]["value"] is not None
    answers = [x for x in result.samples if x["benchmark"] == "clear_bias"]
    assert len(answers) >= 40 and {x["judge"] for x in answers} == {"rule"}  # 40 base prompts, at least
    none, _ = run(sweep, "none")  # the base model, before SFT
    assert none.provenance["model"] == str(sweep.out_dir.resolve() / "world" / "models" / "step_2")
    assert not any(k.startswith("sft/") for k in none.metrics)


# -- the probe + subspace stage ------------------------------------------------------------------


def _mask(directory: Path) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """(mask.json, selected flag per neuron, score per neuron) over all layers."""
    info = json.loads((directory / "mask.json").read_text())
    tensors = load_file(str(directory / "mask.safetensors"))
    chosen = []
    for layer, d_ff in enumerate(info["d_ff"]):
        flags = torch.zeros(d_ff, dtype=torch.bool)
        flags[tensors[f"neurons.{layer}"]] = True
        chosen.append(flags)
    scores = [tensors[f"scores.{i}"] for i in range(info["layers"])] if "scores.0" in tensors else []
    return info, torch.cat(chosen), torch.cat(scores) if scores else torch.empty(0)


def test_subspace_stage_makes_one_probe_and_each_mask_once_for_the_starting_model(study):
    """One probe of the SFT model; Top-K holds the 51 highest cosines and Bottom-K the 51 lowest
    (every selected score beyond every unselected one), Random-K one mask per seed."""
    sweep, messages = study
    assert sum(m.startswith("probe ") for m in messages) == 1
    assert sum(m.startswith("subspace ") for m in messages) == 4  # top, bottom, random seed 0 and 1
    model = sft_dir(sweep) / "model"
    (root,) = (sweep.out_dir / "subspace").iterdir()
    probe = json.loads((root / "probe" / "probe.json").read_text())
    assert probe["model"] == str(model) and probe["exclude_kinds"] == ["harmless"] and probe["pairs"] == 64
    top, top_in, top_scores = _mask(root / "top-f0.05")
    bottom, bottom_in, bottom_scores = _mask(root / "bottom-f0.05")
    assert top["model_fingerprint"] == bottom["model_fingerprint"] == model_fingerprint(str(model))
    assert top["k"] == bottom["k"] == int(top_in.sum()) == int(bottom_in.sum()) == 51
    assert torch.equal(top_scores, bottom_scores)  # one probe, one score per neuron
    assert top_scores[top_in].min() >= top_scores[~top_in].max()
    assert bottom_scores[bottom_in].max() <= bottom_scores[~bottom_in].min()
    assert not (top_in & bottom_in).any()
    r0, r0_in, _ = _mask(root / "random-f0.05-s0")
    r1, r1_in, _ = _mask(root / "random-f0.05-s1")
    assert (r0["seed"], r1["seed"], r0["k"], r1["k"]) == (0, 1, 51, 51) and not torch.equal(r0_in, r1_in)


def test_each_shapo_cell_resolves_its_own_mask(study):
    sweep, _ = study
    (root,) = (sweep.out_dir / "subspace").iterdir()
    want = {"uniform": "uniform", "subspace:top": str(root / "top-f0.05"),
            "subspace:bottom": str(root / "bottom-f0.05")}
    for c in expand(sweep):
        if c.params["method"] != "shapo":
            continue
        mask = c.params["training.shapo.mask"]
        expected = want.get(mask, str(root / f"random-f0.05-s{c.params['seed']}"))
        start = str(sft_dir(sweep) / "model")
        config = pipeline.align_config(sweep, c, start, sweep.out_dir / "world", sweep.out_dir / "cells" / c.id,
                                       sweep.out_dir / "cache")
        assert config.training.shapo.mask == expected, c.label
        assert config.model.name_or_path == start


def test_a_shapo_cell_trains_with_the_mask_it_asked_for(study):
    sweep, _ = study
    result, _ = run(sweep, "shapo", noise=0.5, mask="subspace:bottom", seed=1)
    (root,) = (sweep.out_dir / "subspace").iterdir()
    assert result.provenance["train_config"]["training"]["shapo"]["mask"] == str(root / "bottom-f0.05")
    info = json.loads(Path(result.provenance["train_run"]).read_text())
    assert info["shapo_mask"]["select"] == "bottom" and info["shapo_mask"]["k"] == 51
    assert info["shapo_mask"]["source"] == str(root / "bottom-f0.05")
    assert info["shapo_mask"]["mask_params"] == 51 * 96  # each neuron: a down-projection column of d_model = 96
    assert result.metrics["train/steps"] == 2 and "clear_bias/safety" in result.metrics


def test_probe_curves_added_to_a_stored_sweep_keep_its_masks_and_reach_its_done_cells(study, tmp_path):
    """``subspace.curves: [adam]`` after the fact: the probe gains adam's epochs (Figure 6) on the same
    features, its vector and every mask stay byte for byte, the store takes the new config without
    --restart, and a done ShaPO cell on the top mask gets probe/adam/* curves (once)."""
    import dataclasses

    from robalign.errors import UserError
    from robalign.experiments.curves import read_curves, refresh_probe_curves
    from robalign.experiments.store import Store
    from robalign.experiments.sweep import EXTENDABLE

    sweep, _ = study
    (root,) = (sweep.out_dir / "subspace").iterdir()
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != "probe.json"}
    lbfgs_before = json.loads((root / "probe" / "probe.json").read_text())["estimators"]["lbfgs"]
    store = Store(f"sqlite:///{tmp_path / 'results.sqlite'}")
    store.add_sweep(sweep.name, sweep.to_dict(), {}, extendable=EXTENDABLE)
    top = cell(sweep, "shapo", mask="subspace:top")
    provenance = {"train_config": {"training": {"shapo": {"enabled": True, "mask": str(root / "top-f0.05")}}}}
    assert store.claim(sweep.name, top.id, top.params, "w")
    store.finish(sweep.name, top.id, metrics={"x": 1.0}, run_dir=str(tmp_path), provenance=provenance)
    assert refresh_probe_curves(store, sweep.name) == {}  # L-BFGS has no epochs: nothing to draw

    extended = dataclasses.replace(sweep, subspace=dataclasses.replace(sweep.subspace, curves=["adam"]))
    messages: list[str] = []
    pipeline.prepare(extended, messages.append)
    assert [m.split(": ")[1].split(" (")[0] for m in messages if m.startswith("probe ")] == ["added adam"]
    assert not any(m.startswith(("subspace ", "sft ")) for m in messages)  # no mask, no model made again
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != "probe.json"} == before
    probe = json.loads((root / "probe" / "probe.json").read_text())
    assert probe["estimators"]["lbfgs"] == lbfgs_before and probe["curves"] == ["adam"]
    history = probe["estimators"]["adam"]["history"]
    assert [h["epoch"] for h in history] == list(range(1, 21))
    assert history[-1]["train_loss"] < history[0]["train_loss"]  # Adam lowers its own loss

    store.add_sweep(sweep.name, extended.to_dict(), {}, extendable=EXTENDABLE)  # kept, not refused
    written = refresh_probe_curves(store, sweep.name)
    assert set(written) == {top.id} and written[top.id] == 4 * 20
    curves = read_curves(store, sweep.name, ["probe/"])
    assert sorted(curves["name"].unique()) == [f"probe/adam/{k}" for k in
                                               ("eval_accuracy", "eval_loss", "train_accuracy", "train_loss")]
    assert curves[curves["name"] == "probe/adam/train_loss"]["value"].tolist() == \
        pytest.approx([h["train_loss"] for h in history])
    assert refresh_probe_curves(store, sweep.name) == {}  # already there
    pipeline.prepare(extended, messages.append)
    assert sum(m.startswith("probe ") for m in messages) == 1  # the second prepare fits nothing

    other = dataclasses.replace(sweep, subspace=dataclasses.replace(sweep.subspace, estimator="adam"))
    with pytest.raises(UserError, match="differs at: subspace.curves, subspace.estimator"):
        store.add_sweep(sweep.name, other.to_dict(), {}, extendable=EXTENDABLE)  # another mask: --restart


# -- the smollm2 lane: β_r as an axis, losses that ignore q ---------------------------------------


def smollm2_study(tmp: Path) -> dict:
    return {
        "name": "smol-study", "lane": "smollm2", "out": str(tmp / "out"), "world": {"overrides": TINY_WORLD},
        "train": {"config": "configs/train/soft_smollm2_world.yaml",
                  "overrides": ["training.max_steps=5", "training.per_device_batch_size=2",
                                "training.gradient_accumulation_steps=1"]},
        "sft": {"enabled": True, "steps": 2},
        "methods": {"soft": {"data.noise_mode": "soft_flip"}, "dpo": {"loss.losses": {"dpo": 1.0}}},
        "grid": {"method": ["soft", "dpo"], "soft_labels.beta_r": [1, 10], "data.noise_rate": [0.5]},
        "bench": {"clear_bias": {"judges": ["rule"]}},
    }


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_smollm2_lane_beta_r_axis_and_losses_that_read_pairs(tmp_path):
    """β_r = 10 gets files of its own from the same reward model's margins: q = σ(10·Δr/std(Δr)). DPO
    cells (flip noise) train on the clean file of their β_r; the SFT stage needs the clean files even
    though no preference cell does, and its key ignores q, so both β_r share one SFT model."""
    from robalign.experiments.pipeline_real import cell_beta_r, ensure_soft_labels, soft_label_needs
    from robalign.experiments.pipeline_sft import sft_config, sft_key
    from robalign.experiments.pipeline_world import ensure_world

    sweep = load(tmp_path, smollm2_study(tmp_path))
    labels = [c.label for c in expand(sweep)]
    assert labels[0] == "method=soft beta_r=1.0 noise_rate=0.5 seed=0" and len(labels) == 4
    world = ensure_world(sweep, lambda _: None)  # prepare's stages up to the soft labels (no SmolLM2 needed)
    ensure_soft_labels(sweep, world, soft_label_needs(sweep, world, expand(sweep)), lambda _: None)
    root = sweep.out_dir / "soft_labels"
    assert sorted(p.name for p in root.glob("*.jsonl")) == [
        "eval-b10.jsonl", "eval.jsonl", "train-clean-b10.jsonl", "train-clean.jsonl",
        "train-soft_flip-r0.5-s0-b10.jsonl", "train-soft_flip-r0.5-s0.jsonl"]
    clean, sharp = rows(root / "train-clean.jsonl"), rows(root / "train-clean-b10.jsonl")
    std = statistics.stdev(r["reward_margin"] for r in clean)
    for a, b in zip(clean, sharp):
        assert (a["id"], a["reward_margin"]) == (b["id"], b["reward_margin"])  # same pairs, same reward model
        assert a["soft_label"] == pytest.approx(1 / (1 + math.exp(-a["reward_margin"] / std)), abs=1e-9)
        assert b["soft_label"] == pytest.approx(1 / (1 + math.exp(-10 * a["reward_margin"] / std)), abs=1e-9)
    flipped = rows(root / "train-soft_flip-r0.5-s0-b10.jsonl")
    assert sum(r["noised"] for r in flipped) == round(0.5 * len(flipped))
    for f, s in zip(flipped, sharp):
        assert f["soft_label"] == pytest.approx(1 - s["soft_label"] if f["noised"] else s["soft_label"], abs=1e-12)

    keys = set()
    for c in expand(sweep):
        beta_r = cell_beta_r(sweep, c)
        config = pipeline.align_config(sweep, c, "smollm2-135m-instruct", sweep.out_dir / "world",
                                       sweep.out_dir / "cells" / c.id, sweep.out_dir / "cache")
        b = "" if beta_r == 1 else "-b10"
        expected = f"train-clean{b}.jsonl" if c.params["method"] == "dpo" else f"train-soft_flip-r0.5-s0{b}.jsonl"
        assert Path(config.data.train).name == expected and Path(config.data.eval).name == f"eval{b}.jsonl"
        keys.add(sft_key(sft_config(sweep, c, "smollm2-135m-instruct", sweep.out_dir / "world")))
    assert len(keys) == 1


# -- the shipped study configs -------------------------------------------------------------------

# cells by hand: methods = 12 preference methods x 3 noise + none + sft (CPU: 1 seed; GPU: 3 seeds,
# none and sft once); geometry on a CPU = (dpo + shapo x 3 masks) x 2 seeds + Top-K previous x 1 seed,
# on a GPU = shapo x 4 masks x 2 ascents x noise x seeds + dpo x noise x seeds; composition on a CPU =
# 4 methods x 2 seeds, on a GPU = 8 methods x 2 noise x seeds; beta_r = 2 methods x 3 beta_r x 3 noise x seeds + none
STUDIES = {"shapo_methods": 12 * 3 + 2, "shapo_geometry": 4 * 2 + 1, "shapo_composition": 4 * 2,
           "shapo_beta_r": 2 * 3 * 3 + 1}
GPU = {"shapo_methods": 12 * 3 * 3 + 2, "shapo_geometry": 4 * 2 * 3 * 3 + 3 * 3, "shapo_composition": 8 * 2 * 3,
       "shapo_beta_r": 2 * 3 * 3 * 3 + 1}
BACKBONES = {"pythia28b": "EleutherAI/pythia-2.8b", "llama32_3b": "meta-llama/Llama-3.2-3B"}
SHIPPED = {name: n for name, n in STUDIES.items()} | {f"{name}_{b}": n for name, n in GPU.items() for b in BACKBONES}


@pytest.fixture
def offline(monkeypatch):
    """No network: any connection attempt fails the test; the hub libraries are told they are offline."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access during validation: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_study_sweeps_load_expand_and_validate_offline(name, offline, capsys):
    sweep = load_sweep_config(name)
    assert len(expand(sweep)) == SHIPPED[name]
    assert sweep.sft.enabled and sweep.lane == "smollm2"
    assert main(["validate", name]) == 0
    assert "1 valid, 0 invalid" in capsys.readouterr().out
    backbone = next((hub for tag, hub in BACKBONES.items() if name.endswith(tag)), None)
    if backbone is not None:  # the paper's hub model, which validation never needed on disk
        assert pipeline.base_model_name(sweep, expand(sweep)[0]) == backbone and not Path(backbone).exists()
        assert sweep.executor.gpus_per_cell == 1


def test_every_shapo_method_uses_the_probe_subspace_and_soft_methods_noise_q():
    sweep = load_sweep_config("shapo_methods")
    for c in expand(sweep):
        config = pipeline.cell_config(sweep, c)
        method = c.params["method"]
        assert config.training.shapo.enabled == method.endswith("_shapo"), method
        if config.training.shapo.enabled:
            assert config.training.shapo.mask == "subspace:top" and config.training.shapo.interval == 5
        if method.startswith("soft"):
            assert config.loss.losses == {"soft": 1.0} and config.data.noise_mode == "soft_flip"
        elif method not in ("none", "sft"):
            assert "soft" not in config.loss.losses and config.data.noise_mode == "flip"


def test_stored_config_of_an_older_sweep_is_unchanged():
    """Sections added for the study are left out of to_dict at their defaults, so a sweep stored
    before them compares equal on a re-run; a sweep that sets them keeps them."""
    assert not {"sft", "subspace", "soft_labels"} & set(load_sweep_config("demo").to_dict())
    assert {"sft", "subspace"} <= set(load_sweep_config("shapo_methods").to_dict())


@pytest.mark.parametrize("change, message", [
    ({"grid": {"method": ["sft"]}, "sft": {"enabled": False}}, r"unknown method 'sft'.*\(sft: \{enabled: true\}\)"),
    ({"methods": {"dpo": {}, "sft": {}}}, "methods.sft: 'sft' is reserved"),
    ({"sft": {"enabled": True, "steps": 0}}, "sft.steps: must be >= 1"),
    ({"sft": {"enabled": True, "overrides": ["training.learnin_rate=1"]}}, "sft.overrides:.*learnin_rate"),
    ({"grid": {"method": ["dpo"], "training.shapo.mask": ["subspace:middle"]},
      "methods": {"dpo": {"training.shapo.enabled": True}}}, "subspace:middle: the sweep's subspace stage makes"),
    ({"grid": {"method": ["dpo"], "soft_labels.beta_r": [1.0]}}, "soft_labels.beta_r is smollm2-lane only"),
    ({"subspace": {"fraction": 0}}, r"subspace.fraction: must lie in \(0, 1\]"),
])
def test_study_settings_that_cannot_work_are_refused(change, message, tmp_path):
    config = study_sweep(tmp_path) | change
    if "grid" in change:
        config["skip"] = []  # the study's rules name keys these grids drop
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, config)


def test_noise_a_loss_never_reads_is_refused_on_the_smollm2_lane(tmp_path):
    config = smollm2_study(tmp_path)
    config["methods"]["dpo"]["data.noise_mode"] = "soft_flip"  # q -> 1 - q: DPO reads the pairs, not q
    with pytest.raises(ConfigError, match="method=dpo .*data.noise_mode=soft_flip acts on the soft labels q"):
        load(tmp_path, config)
    config["grid"]["soft_labels.beta_r"] = [0]
    with pytest.raises(ConfigError, match="soft_labels.beta_r: values must be finite numbers > 0"):
        load(tmp_path, config)


@pytest.mark.slow
def test_smollm2_lane_sft_then_shapo_on_the_probe_mask(tmp_path, smollm2):
    """The real lane end to end at its smallest: SmolLM2 SFT (1 step), a probe of the SFT model, its
    Top-0.1 % mask (round(0.001 x 30 layers x 1,536) = 46 neurons), one DPO + ShaPO step from the SFT
    model on that mask, then both benchmarks."""
    config = smollm2_study(tmp_path)
    config["train"]["overrides"] = ["training.max_steps=1", "training.per_device_batch_size=2",
                                    "training.gradient_accumulation_steps=1", "training.save_steps=0"]
    config["sft"] = {"enabled": True, "steps": 1}
    config["subspace"] = {"fraction": 0.001, "probe_pairs": 32, "max_length": 128}
    config["methods"] = {"dpo_shapo": {"loss.losses": {"dpo": 1.0}, "training.shapo.enabled": True,
                                       "training.shapo.mask": "subspace:top"}}
    config["grid"] = {"method": ["sft", "dpo_shapo"], "data.noise_rate": [0.0]}
    config["bench"] = {"clear_bias": {"judges": ["rule"], "max_new_tokens": 8, "attacks": ["prefix_injection:v1"]},
                       "harmful": {"judge": "keyword", "max_new_tokens": 8}}
    sweep = load(tmp_path, config)
    messages: list[str] = []
    pipeline.prepare(sweep, messages.append)
    assert [m.split()[0] for m in messages if m.split()[0] in ("sft", "probe", "subspace")] == \
        ["sft", "probe", "subspace"]
    model = sft_dir(sweep) / "model"
    (root,) = (sweep.out_dir / "subspace").iterdir()
    mask = json.loads((root / "top-f0.001" / "mask.json").read_text())
    assert (mask["k"], mask["layers"], mask["model"]) == (46, 30, str(model))
    result, _ = run(sweep, "dpo_shapo")
    assert result.provenance["train_config"]["model"]["name_or_path"] == str(model)
    info = json.loads(Path(result.provenance["train_run"]).read_text())
    assert info["shapo_mask"]["mask_params"] == 46 * 576  # a down-projection column: hidden size 576
    assert info["model_fingerprint"] == model_fingerprint(str(model))
    assert result.metrics["train/steps"] == 1 and result.metrics["sft/steps"] == 1
    sft_cell, _ = run(sweep, "sft")
    assert sft_cell.provenance["model"] == str(model) and "harmful/compliance" in sft_cell.metrics
