"""ShaPO inside the trainer, end to end: probe -> subspace -> train with every loss at k = 1 and 5."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from robalign.cli import main
from robalign.config import ConfigError, TrainConfig, load_config, validate_train_config
from robalign.errors import UserError
from robalign.training.trainer import train


@pytest.fixture(scope="module")
def top_mask(tmp_path_factory, nano_llama):
    """The whole ShaPO preparation through the CLI: a probe, then the Top-2 % neuron mask."""
    root = tmp_path_factory.mktemp("shapo")
    assert main(["probe", "--model", str(nano_llama), "--data", "synthetic:200", "--exclude-categories",
                 "harmless", "--out", str(root / "probe")]) == 0
    assert main(["subspace", "--model", str(nano_llama), "--probe", str(root / "probe"), "--fraction", "0.02",
                 "--select", "top", "--out", str(root / "mask")]) == 0
    return root / "mask"


def config(tmp_path, model_dir, *overrides, name="run"):
    cfg = load_config(TrainConfig, None, [
        f"output_dir={tmp_path / name}", f"model.name_or_path={model_dir}", "data.train=synthetic:64",
        "data.max_length=80", "data.max_prompt_length=48", "training.per_device_batch_size=4",
        "training.learning_rate=1e-3", "training.save_model=false", "training.shapo.enabled=true",
        "training.shapo.rho=0.05", *overrides])
    validate_train_config(cfg)
    return cfg


def metric_lines(result):
    return [json.loads(x) for x in (result.output_dir / "metrics.jsonl").read_text().splitlines()]


LOSSES = {"dpo": ["loss.losses={dpo: 1.0}"], "ipo": ["loss.losses={ipo: 1.0}"],
          "cdpo": ["loss.losses={cdpo: 1.0}", "loss.label_smoothing=0.1"],
          "rdpo": ["loss.losses={rdpo: 1.0}", "loss.rdpo_epsilon=0.2"], "soft": ["loss.losses={soft: 1.0}"],
          "drdpo": ["loss.aggregation=drdpo", "training.gradient_accumulation_steps=2"]}


@pytest.mark.parametrize("interval, steps, shapo_steps", [(1, 2, [1, 2]), (5, 6, [1, 6])], ids=["k1", "k5"])
@pytest.mark.parametrize("loss", list(LOSSES))
def test_every_loss_trains_with_shapo(tmp_path, nano_llama, top_mask, loss, interval, steps, shapo_steps):
    result = train(config(tmp_path, nano_llama, f"training.shapo.mask={top_mask}",
                          f"training.shapo.interval={interval}", f"training.max_steps={steps}", *LOSSES[loss]))
    rows = [r for r in metric_lines(result) if "grad_norm" in r]
    assert [r["step"] for r in rows if "shapo/loss_gain" in r] == shapo_steps
    for r in rows:
        assert all(torch.isfinite(torch.tensor(v)) for v in r.values()), r
        if "shapo/loss_gain" in r:
            # ε ascends along the masked gradient: L(θ+ε) − L(θ) ≈ ρ‖M⊙g‖ > 0 to first order
            assert r["shapo/eps_norm"] == pytest.approx(0.05, rel=1e-3) and r["shapo/loss_gain"] > 0
            assert r["shapo/mask_params"] == 20 * 96  # K = round(0.02 * 4 * 256) neurons x d_model
    info = json.loads((result.output_dir / "run_info.json").read_text())
    assert info["shapo_mask"]["select"] == "top" and info["shapo_mask"]["k"] == 20


def test_rho_zero_run_equals_plain_dpo_run(tmp_path, nano_llama, top_mask):
    plain = train(config(tmp_path, nano_llama, "training.shapo.enabled=false", "training.max_steps=3", name="a"))
    zero = train(config(tmp_path, nano_llama, f"training.shapo.mask={top_mask}", "training.shapo.rho=0",
                        "training.max_steps=3", name="b"))
    strip = [{k: v for k, v in r.items() if not k.startswith("shapo/")} for r in metric_lines(zero)]
    assert strip == metric_lines(plain)  # every loss, reward and grad norm identical


def test_shapo_changes_the_trajectory_and_trains(tmp_path, nano_llama, top_mask):
    """Same data and seed, 3 steps each: plain DPO, ShaPO on the Top-K neuron mask, full SAM.
    Step 1's loss is measured at the same θ in all three runs, so it is identical; the ShaPO
    runs then step with g′ = ∇L(θ+ε) instead of g, so their later losses and every trained tensor
    differ from plain DPO's, and in every run every tensor moved from the start."""
    masks = {"plain": ["training.shapo.enabled=false"], "top": [f"training.shapo.mask={top_mask}"],
             "uniform": ["training.shapo.mask=uniform"]}
    runs = {name: train(config(tmp_path, nano_llama, *extra, "training.shapo.rho=0.5", "training.max_steps=3",
                               "training.save_model=true", name=name)) for name, extra in masks.items()}
    losses = {name: [r["loss"] for r in metric_lines(run) if "grad_norm" in r] for name, run in runs.items()}
    assert losses["plain"][0] == losses["top"][0] == losses["uniform"][0]
    assert all(losses[name][1] != losses["plain"][1] for name in ("top", "uniform")), losses
    start = load_file(nano_llama / "model.safetensors")
    final = {name: load_file(run.output_dir / "model" / "model.safetensors") for name, run in runs.items()}
    for name, weights in final.items():
        assert all(not torch.equal(start[k], weights[k]) for k in start), name
    for name in ("top", "uniform"):
        assert all(not torch.equal(final["plain"][k], final[name][k]) for k in start), name


def test_lora_and_bf16_runs(tmp_path, nano_llama, top_mask):
    lora = train(config(tmp_path, nano_llama, f"training.shapo.mask={top_mask}", "training.max_steps=2",
                        "lora.enabled=true", "lora.r=4", "lora.target_modules=[down_proj, q_proj]", name="lora"))
    rows = [r for r in metric_lines(lora) if "shapo/loss_gain" in r]
    assert len(rows) == 2 and rows[0]["shapo/mask_params"] == 20 * 4  # K columns of rank-4 lora_A
    # lora_B starts at 0, so ∇A = 0 and ε = 0 on the very first step; from the second step on it acts
    assert rows[0]["shapo/grad_norm_masked"] == 0 and rows[1]["shapo/loss_gain"] > 0
    bf16 = train(config(tmp_path, nano_llama, "training.shapo.mask=uniform", "training.max_steps=2",
                        "training.precision=bf16", name="bf16"))
    rows = [r for r in metric_lines(bf16) if "shapo/loss_gain" in r]
    assert rows[0]["shapo/loss_gain"] > 0 and rows[0]["shapo/eps_autocast_moved"] > 0
    with pytest.raises(UserError, match="lora.target_modules"):
        train(config(tmp_path, nano_llama, f"training.shapo.mask={top_mask}", "training.max_steps=1",
                     "lora.enabled=true", "lora.target_modules=[q_proj]", name="bad"))


def test_config_validation_and_shipped_configs(tmp_path, nano_llama):
    for bad, match in (("training.shapo.rho=-1", "rho"), ("training.shapo.interval=0", "interval"),
                       ("training.shapo.rhoo=1", "Did you mean 'rho'")):
        with pytest.raises(ConfigError, match=match):
            config(tmp_path, nano_llama, bad)
    with pytest.raises(UserError, match="not a subspace mask"):
        train(config(tmp_path, nano_llama, f"training.shapo.mask={tmp_path}", "training.max_steps=1"))
    shipped = sorted(Path(__file__).resolve().parents[2].glob("configs/train/shapo_*.yaml"))
    assert len(shipped) >= 3
    assert main(["validate", *map(str, shipped)]) == 0


def test_resume_replays_shapo_steps_exactly(tmp_path, nano_llama, top_mask):
    """Resuming from the step-3 checkpoint of a k = 2 run reproduces steps 4-6 (ShaPO at 5)."""

    straight = train(config(tmp_path, nano_llama, f"training.shapo.mask={top_mask}", "training.shapo.interval=2",
                            "training.max_steps=6", "training.save_steps=3", "training.save_total_limit=5",
                            "training.lr_scheduler=linear", name="straight"))
    shutil.copytree(straight.output_dir, tmp_path / "resumed")
    cfg = config(tmp_path, nano_llama, f"training.shapo.mask={top_mask}", "training.shapo.interval=2",
                 "training.max_steps=6", "training.save_steps=3", "training.save_total_limit=5",
                 "training.lr_scheduler=linear", name="resumed")
    resumed = train(cfg, resume=True)
    assert json.loads((resumed.output_dir / "run_info.json").read_text())["resumed_from"][-1].endswith("step-000003")
    assert len([r for r in metric_lines(resumed) if "grad_norm" in r]) == 6  # steps 4-6 replaced, not appended
    rows = {r["step"]: r for r in metric_lines(resumed) if "grad_norm" in r}
    expected = {r["step"]: r for r in metric_lines(straight) if "grad_norm" in r}
    assert sorted(rows) == list(range(1, 7)) and "shapo/loss_gain" in rows[5] and "shapo/loss_gain" not in rows[4]
    for step in (4, 5, 6):
        for key in ("loss", "grad_norm", "shapo/loss_gain"):
            if key in expected[step]:
                assert rows[step][key] == pytest.approx(expected[step][key], abs=1e-6), (step, key)
