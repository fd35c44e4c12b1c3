"""Figure 1: shares of the worst-case loss increase for Top-K, random-K and the gradient oracle."""

from __future__ import annotations

import json
import math

import pytest
import torch
from shapo_helpers import make_setup, settings, snapshot

from robalign.cli import main
from robalign.models.layers import down_projections
from robalign.training.step import accumulate_gradients, evaluate
from robalign.training.subspace import (
    first_order_share,
    neuron_gradients,
    neuron_scores,
    perturbed_loss,
    select_neurons,
    share_curves,
)


def test_first_order_share_by_hand():
    sq = torch.tensor([1.0, 4.0, 4.0])  # ‖g_j‖² per neuron; ‖g_all‖ = 3
    assert first_order_share(sq, torch.tensor([False, True, False])) == pytest.approx(2 / 3)
    assert first_order_share(sq, torch.tensor([True, True, True])) == 1.0
    assert math.isnan(first_order_share(torch.zeros(3), torch.tensor([True, False, False])))


@pytest.fixture
def analysed(nano_llama, tiny_tokenizer):
    s = make_setup(nano_llama, tiny_tokenizer, n=16)
    s.model.eval()
    batches, cfg = s.batches(8), settings()
    accumulate_gradients(s.model, batches, s.reference, cfg)
    return s, lambda: evaluate(s.model, batches, s.reference, cfg)["eval/loss"]


def test_perturbed_loss_is_first_order_and_restores(analysed):
    s, loss_fn = analysed
    grads = neuron_gradients(s.model)
    chosen = select_neurons([g.pow(2).sum(-1) for g in grads], 0.05, "random", seed=1)
    g_s = math.sqrt(sum(g[i].pow(2).sum().item() for g, i in zip(grads, chosen)))
    before, base = snapshot(s.model), loss_fn()
    gain = perturbed_loss(s.model, grads, chosen, 1e-3, loss_fn) - base
    assert gain == pytest.approx(1e-3 * g_s, rel=0.02)
    assert all(torch.equal(before[n], p) for n, p in s.model.named_parameters())
    # neuron j's gradient is column j of the (d_model, d_ff) weight gradient
    dp = down_projections(s.model)[1]
    torch.testing.assert_close(grads[1], dp.weight.grad.T.float())


def test_share_curve_invariants(analysed):
    s, loss_fn = analysed
    scores = neuron_scores(s.model, torch.randn(96, generator=torch.Generator().manual_seed(2)))
    result = share_curves(s.model, scores, [0.01, 0.05, 0.2, 1.0], loss_fn, rho=0.01, random_seeds=2)
    rows = result["rows"]
    for row in rows:
        for kind in ("top", "bottom", "random"):  # no K neurons beat the K largest gradients, to first order
            assert row[f"{kind}_first_order"] <= row["oracle_first_order"] + 1e-9
        assert row["random_first_order_min"] <= row["random_first_order"] <= row["random_first_order_max"]
        for kind in ("top", "bottom", "oracle"):  # the additive share is the square of the norm share
            assert row[f"{kind}_energy"] == pytest.approx(row[f"{kind}_first_order"] ** 2)
        lo, hi = row["random_energy_ci95"]
        assert lo <= row["random_energy"] <= hi
    for kind in ("top", "oracle"):  # nested sets: shares grow with K
        values = [r[f"{kind}_first_order"] for r in rows]
        assert values == sorted(values)
    last = rows[-1]
    assert last["k"] == 1024 and all(last[f"{k}_{m}"] == pytest.approx(1.0) for k in ("top", "random", "oracle")
                                     for m in ("first_order", "measured"))
    # measured shares track first-order ones at small ρ
    assert rows[1]["oracle_measured"] == pytest.approx(rows[1]["oracle_first_order"], rel=0.1)


def test_cli_writes_figure_and_json(tmp_path, nano_llama, capsys):
    assert main(["probe", "--model", str(nano_llama), "--data", "synthetic:120", "--exclude-categories", "harmless",
                 "--out", str(tmp_path / "probe")]) == 0
    assert main(["subspace-analysis", "--model", str(nano_llama), "--probe", str(tmp_path / "probe"), "--data",
                 "synthetic:32", "--fractions", "0.01,0.1,1.0", "--random-seeds", "2", "--out",
                 str(tmp_path / "fig")]) == 0
    record = json.loads((tmp_path / "fig" / "figure1.json").read_text())
    assert [r["k"] for r in record["rows"]] == [10, 102, 1024] and record["pairs"] == 32
    assert (tmp_path / "fig" / "figure1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "K=    10" in capsys.readouterr().out


def test_mean_ci95_by_hand():
    from robalign.training.subspace import mean_ci95

    # mean 2, sd 1, t_{0.975, 2} = 4.3027: half-width 4.3027 / sqrt(3) = 2.4841
    lo, hi = mean_ci95([1.0, 2.0, 3.0])
    assert lo == pytest.approx(-0.4841, abs=1e-4) and hi == pytest.approx(4.4841, abs=1e-4)
