"""The paper's Adam probe beside the L-BFGS one, and the accuracy interval."""

from __future__ import annotations

import json

import pytest
import torch

from robalign.cli import main
from robalign.training.probe import fit_adam_probe, wilson_interval


def test_wilson_interval_by_hand():
    # 8 of 10, z = 1.96: centre 0.8 + 3.8416/20 = 0.99208, half 1.96·sqrt(0.016 + 0.009604) = 0.31363,
    # divided by 1 + 3.8416/10 = 1.38416
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.49016, abs=1e-4) and hi == pytest.approx(0.94333, abs=1e-4)
    assert wilson_interval(0, 20)[0] == pytest.approx(0.0, abs=1e-12) and wilson_interval(20, 20)[1] == pytest.approx(1.0)


def test_adam_probe_learns_a_planted_direction_and_logs_every_epoch():
    gen = torch.Generator().manual_seed(0)
    direction = torch.randn(16, generator=gen)
    x = torch.randn(400, 16, generator=gen)
    y = (x @ direction > 0).long()
    probe, history = fit_adam_probe(x[:300], y[:300], epochs=30, lr=1e-2, eval_features=x[300:], eval_labels=y[300:])
    assert [h["epoch"] for h in history] == list(range(1, 31))
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert history[-1]["eval_accuracy"] > 0.9
    cosine = torch.nn.functional.cosine_similarity(probe.vector, direction, dim=0)
    assert cosine > 0.9  # v = W[unsafe] − W[safe] points along the planted unsafe direction


def test_cli_reports_both_estimators(tmp_path, nano_llama, capsys):
    out = tmp_path / "probe"
    assert main(["probe", "--model", str(nano_llama), "--data", "synthetic:120", "--exclude-categories", "harmless",
                 "--estimator", "lbfgs,adam", "--epochs", "3", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["estimators"]) == {"lbfgs", "adam"}
    saved = json.loads((out / "probe.json").read_text())
    assert len(saved["estimators"]["adam"]["history"]) == 3 and saved["estimators"]["lbfgs"]["history"] == []
    lo, hi = saved["estimators"]["adam"]["eval_ci95"]
    assert lo <= saved["estimators"]["adam"]["eval_accuracy"] <= hi and hi - lo > 0
    assert saved["eval_accuracy"] == saved["estimators"]["lbfgs"]["eval_accuracy"]  # the first one is saved


def test_unknown_estimator_is_a_clear_error(tmp_path, nano_llama, capsys):
    assert main(["probe", "--model", str(nano_llama), "--data", "synthetic:60", "--estimator", "svm",
                 "--out", str(tmp_path / "p")]) == 2
    assert "probe estimator ['svm']: use lbfgs or adam" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
