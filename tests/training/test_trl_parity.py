"""Parity with TRL's DPO losses (``sigmoid`` = dpo, ``ipo``, ``robust`` = rdpo) to 1e-6.

TRL computes its loss inside ``DPOTrainer.compute_loss`` (``_compute_loss`` in TRL 1.16): the model
is called with ``fused_lm_head=True`` and returns per-token log-probs in ``.log_probs``, which TRL
sums per sequence, pairs with the batch's precomputed reference log-probs and feeds to its loss.
We run that real code on a real ``DPOTrainer`` (tiny offline Llama, float64) in two ways:

1. scripted: the model passed to ``compute_loss`` is a stand-in that returns per-token log-probs
   we wrote, so both implementations see bit-identical inputs and only the formulas differ;
2. end to end: the trainer's own model, collator and precomputed reference log-probs, with the
   policy's weights nudged away from the reference. TRL's fused head works in float32, so the
   per-sequence log-probs are checked against a plain float64 forward to float32 precision and
   the losses are compared on TRL's own log-probs.

TRL is not a reference for cdpo: it ignores ``label_smoothing`` in its sigmoid loss (pinned below).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from robalign.training.losses import aggregate, combined_pair_losses  # noqa: E402

# TRL loss_type -> robalign loss name. TRL's ipo averages log-ratios per token; its robust reads ε
# from label_smoothing.
TRL_TO_OURS = {"sigmoid": "dpo", "ipo": "ipo", "robust": "rdpo"}

PAIRS = [
    {"prompt": "Is the sky blue?", "chosen": " Yes, on a clear day.", "rejected": " No."},
    {"prompt": "Name a prime.", "chosen": " Seven.", "rejected": " Nine is prime, I think, or maybe not."},
    {"prompt": "Say hello.", "chosen": " Hello there, friend!", "rejected": " Go away."},
    {"prompt": "Two plus two?", "chosen": " Four.", "rejected": " Five, obviously, because it is."},
]


@pytest.fixture(scope="module")
def make_trainer(nano_llama, tmp_path_factory):
    """Factory of real DPOTrainers on the nano Llama in float64 with precomputed reference log-probs."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(nano_llama)
    out = tmp_path_factory.mktemp("trl")

    def make(
        loss_type: list[str], beta: float, label_smoothing: float = 0.0, loss_weights=None
    ) -> DPOTrainer:
        model = AutoModelForCausalLM.from_pretrained(nano_llama, dtype=torch.float64)
        args = DPOConfig(
            output_dir=str(out),
            loss_type=loss_type,
            loss_weights=loss_weights,
            beta=beta,
            label_smoothing=label_smoothing,
            precompute_ref_log_probs=True,  # reference log-probs come from the batch, as ours do
            per_device_train_batch_size=len(PAIRS),
            use_cpu=True,
            bf16=False,  # TRL defaults to bf16; parity to 1e-6 needs full precision
            report_to=[],
            disable_tqdm=True,
        )
        return DPOTrainer(
            model=model, args=args, train_dataset=Dataset.from_list(PAIRS), processing_class=tokenizer
        )

    return make


def ours(weights: dict[str, float], logps, ref_chosen, ref_rejected, lengths, beta, **hyper) -> torch.Tensor:
    """Our mean batch loss. logps, lengths: (2B,) chosen rows then rejected rows; ref_*: (B,)."""
    chosen, rejected = logps.chunk(2)
    chosen_lengths, rejected_lengths = lengths.chunk(2)
    per_pair = combined_pair_losses(
        weights,
        policy_chosen_logps=chosen,
        policy_rejected_logps=rejected,
        reference_chosen_logps=ref_chosen,
        reference_rejected_logps=ref_rejected,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
        beta=beta,
        ipo_length_normalize=True,  # TRL's convention
        **hyper,
    )
    return aggregate(per_pair, "mean")


class ScriptedLM(torch.nn.Module):
    """Stands in for the policy in ``compute_loss``: returns the per-token log-probs it was given."""

    def __init__(self, log_probs: torch.Tensor):
        super().__init__()
        self.log_probs = log_probs  # (2B, T-1): position t scores token t+1

    def forward(self, input_ids, labels, fused_lm_head=False, **kwargs):
        assert fused_lm_head, "TRL changed how it asks for log-probs; revisit this test"
        scored = labels[:, 1:] != -100
        assert torch.equal(scored, self.log_probs != 0), "TRL scores other positions than we script"
        zeros = torch.zeros_like(self.log_probs)  # entropy / logits metrics only
        return SimpleNamespace(
            log_probs=self.log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool()
        )


def scripted_batch(n_pairs: int = 4, width: int = 14, seed: int = 0):
    """A collated-looking batch (chosen rows, then rejected rows) with varied prompt and response lengths."""
    g = torch.Generator().manual_seed(seed)
    rows = 2 * n_pairs
    prompt_len = torch.randint(1, 5, (rows,), generator=g)
    response_len = torch.randint(1, width - 5, (rows,), generator=g)
    pos = torch.arange(width)
    attention = (pos < (prompt_len + response_len)[:, None]).long()  # right padding
    completion = attention * (pos >= prompt_len[:, None]).long()
    shift = completion[:, 1:]
    # Summed log-probs of tens of nats, as for real responses; strictly negative where scored.
    log_probs = -(0.05 + 3 * torch.rand(rows, width - 1, generator=g, dtype=torch.float64)) * shift
    ref = log_probs.sum(1) + 2.0 * torch.randn(rows, generator=g, dtype=torch.float64)
    batch = {
        "input_ids": torch.randint(10, 100, (rows, width), generator=g),
        "attention_mask": attention,
        "completion_mask": completion,
        "ref_chosen_logps": ref[:n_pairs],
        "ref_rejected_logps": ref[n_pairs:],
    }
    return batch, log_probs, shift.sum(1)


CASES = [  # (TRL loss types, TRL weights, beta, label_smoothing)
    (["sigmoid"], None, 0.1, 0.0),
    (["sigmoid"], None, 0.5, 0.0),
    (["ipo"], None, 0.1, 0.0),
    (["ipo"], None, 0.5, 0.0),
    (["robust"], None, 0.1, 0.2),
    (["robust"], None, 0.5, 0.4),
    (["sigmoid", "ipo", "robust"], [1.0, 0.3, 0.5], 0.2, 0.1),
]


@pytest.mark.parametrize("loss_type, loss_weights, beta, eps", CASES)
def test_trl_loss_on_scripted_logps(make_trainer, loss_type, loss_weights, beta, eps):
    trainer = make_trainer(loss_type, beta, eps, loss_weights)
    batch, log_probs, lengths = scripted_batch()
    theirs = trainer.compute_loss(ScriptedLM(log_probs), batch)
    weights = {TRL_TO_OURS[t]: w for t, w in zip(loss_type, loss_weights or [1.0] * len(loss_type))}
    refs = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
    mine = ours(weights, log_probs.sum(1), *refs, lengths, beta, rdpo_epsilon=eps)
    assert theirs.dtype == torch.float64
    torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-6)


def test_trl_sigmoid_ignores_label_smoothing(make_trainer):
    """TRL >= 0.29 drops label smoothing from its sigmoid loss, so it equals our dpo, not our cdpo."""
    trainer = make_trainer(["sigmoid"], 0.1, label_smoothing=0.3)
    batch, log_probs, lengths = scripted_batch(seed=1)
    theirs = trainer.compute_loss(ScriptedLM(log_probs), batch)
    inputs = (log_probs.sum(1), batch["ref_chosen_logps"], batch["ref_rejected_logps"], lengths, 0.1)
    torch.testing.assert_close(ours({"dpo": 1.0}, *inputs), theirs, rtol=1e-6, atol=1e-6)
    assert (ours({"cdpo": 1.0}, *inputs, label_smoothing=0.3) - theirs).abs() > 1e-3


@pytest.mark.parametrize("loss_type, beta", [("sigmoid", 0.1), ("ipo", 0.5)])
def test_trl_end_to_end_on_tiny_model(make_trainer, loss_type, beta):
    """TRL's own model call, collator and precomputed reference log-probs.

    TRL's fused LM head computes log-probs in float32 even for a float64 model, so the check is
    in two parts: (a) its per-sequence log-probs are what we mean by "summed response-token
    log-probs" (a plain float64 forward, to float32 precision); (b) on those very log-probs,
    our loss equals TRL's to 1e-6.
    """
    trainer = make_trainer([loss_type], beta)
    model = trainer.model
    torch.manual_seed(0)
    with torch.no_grad():  # the policy drifts from the reference whose log-probs were precomputed
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = next(iter(trainer.get_train_dataloader()))
    theirs = trainer.compute_loss(model, batch).detach()

    ids, attention, completion = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    with torch.no_grad():
        labels = ids.masked_fill(completion == 0, -100)  # how TRL asks its fused head for log-probs
        trl_logps = model(
            input_ids=ids, attention_mask=attention, labels=labels, fused_lm_head=True
        ).log_probs
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
    token_logps = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    mask = completion[:, 1:]  # token t+1 is scored by the logits at position t
    logps = (token_logps * mask).sum(1)
    torch.testing.assert_close(trl_logps.sum(1).double(), logps, rtol=1e-5, atol=1e-4)  # (a)

    ref_c, ref_r = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
    assert (logps.chunk(2)[0] - ref_c).abs().min() > 1e-3  # the policy really moved
    lengths = mask.sum(1).to(trl_logps.dtype)
    mine = ours({TRL_TO_OURS[loss_type]: 1.0}, trl_logps.sum(1), ref_c, ref_r, lengths, beta)
    torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-6)  # (b)
