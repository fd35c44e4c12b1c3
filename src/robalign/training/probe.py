"""Linear safety probe on a frozen model (ShaPO step 1, DESIGN.md §2).

Texts are prompt + response; the label is 1 when the response is unsafe. Features are the
final-layer hidden states (the backbone's ``last_hidden_state``, i.e. after the final norm)
mean-pooled over non-pad tokens. A 2-class linear head is fitted on standardised features and
mapped back to raw feature space, so the probe vector v = W[unsafe] − W[safe] lives in the
model's hidden space, where the MLP down-projection columns live too.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from robalign.data.formats import render_prompt
from robalign.data.preference import PreferencePair
from robalign.errors import UserError

SAFE, UNSAFE = 0, 1


class ProbeText(NamedTuple):
    text: str  # rendered prompt + response
    unsafe: int  # 1 = unsafe response
    group: str  # the prompt: a held-out split never shares a prompt with training


class ProbeData(NamedTuple):
    examples: list[ProbeText]
    label_source: str  # where the labels came from (reported with the probe)
    conflicts: int  # texts seen with both labels (dropped)


def probe_examples(pairs: Sequence[PreferencePair], tokenizer, prompt_format: str | bool = "auto") -> ProbeData:
    """Two labelled texts per pair, duplicates removed.

    PKU-SafeRLHF pairs carry per-response flags (meta ``chosen_safe`` / ``rejected_safe``); other
    pairs fall back to the proxy chosen = safe, rejected = unsafe, which is only right when the
    preference *is* about safety (HH harmless-base, or the synthetic world's harmful requests).
    """
    flagged = sum("chosen_safe" in p.meta and "rejected_safe" in p.meta for p in pairs)
    labels: dict[str, tuple[int, str]] = {}
    conflicting: set[str] = set()
    for pair in pairs:
        rendered = render_prompt(pair.prompt, tokenizer, prompt_format)  # as training renders it
        prompt = rendered.text
        chosen_unsafe = UNSAFE if pair.meta.get("chosen_safe", True) is False else SAFE
        rejected_unsafe = SAFE if pair.meta.get("rejected_safe", False) is True else UNSAFE
        for response, label in ((pair.chosen, chosen_unsafe), (pair.rejected, rejected_unsafe)):
            text = prompt + rendered.response_prefix + response
            if text in labels and labels[text][0] != label:
                conflicting.add(text)
            labels.setdefault(text, (label, prompt))
    examples = [ProbeText(t, y, g) for t, (y, g) in labels.items() if t not in conflicting]
    source = ("per-response safety flags" if flagged == len(pairs) else
              "chosen = safe / rejected = unsafe proxy" if flagged == 0 else
              f"safety flags on {flagged} of {len(pairs)} pairs, proxy on the rest")
    return ProbeData(examples, source, len(conflicting))


def split_by_prompt(examples: Sequence[ProbeText], eval_fraction: float,
                    seed: int) -> tuple[list[ProbeText], list[ProbeText]]:
    """Hold out whole prompts (PKU repeats each prompt ~5.5 times; a per-text split would leak)."""
    groups = sorted({e.group for e in examples})
    if len(groups) < 2:
        raise UserError("the probe needs texts under at least two distinct prompts to hold some out")
    random.Random(seed).shuffle(groups)
    n_eval = min(len(groups) - 1, max(1, round(eval_fraction * len(groups))))
    held = set(groups[:n_eval])
    return [e for e in examples if e.group not in held], [e for e in examples if e.group in held]


@torch.no_grad()
def pooled_hidden_states(model, tokenizer, texts: Sequence[str], batch_size: int = 16, max_length: int = 256,
                         add_special_tokens: bool = True, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """(N, d_model) float32: final-layer hidden states averaged over each text's non-pad tokens.

    Long texts keep their *end* (the response carries the safety signal).
    """
    backbone = model.base_model  # transformers: the decoder without the LM head
    device = next(model.parameters()).device
    was_training, side = model.training, tokenizer.truncation_side
    model.eval()
    tokenizer.truncation_side = "left"
    out = []
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True,
                            max_length=max_length, add_special_tokens=add_special_tokens, return_tensors="pt")
            mask = enc["attention_mask"].to(device)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                hidden = backbone(input_ids=enc["input_ids"].to(device), attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).float()
            out.append(((hidden.float() * weights).sum(1) / weights.sum(1).clamp_min(1)).cpu())
    finally:
        model.train(was_training)
        tokenizer.truncation_side = side
    return torch.cat(out)


class LinearProbe(NamedTuple):
    weight: torch.Tensor  # (2, d) in raw feature space: logits = x @ weight.T + bias
    bias: torch.Tensor  # (2,)

    @property
    def vector(self) -> torch.Tensor:
        """v = W[unsafe] − W[safe], (d,): the direction that raises the unsafe logit."""
        return self.weight[UNSAFE] - self.weight[SAFE]

    def accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        return ((features @ self.weight.T + self.bias).argmax(-1) == labels).float().mean().item()


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, l2: float = 1e-3,
                     max_iter: int = 200) -> LinearProbe:
    """Multinomial logistic regression (2 classes) with an L2 penalty, full-batch L-BFGS.

    features: (N, d) float; labels: (N,) long in {0, 1}. Fitted on z = (x − μ)/σ for
    conditioning, then mapped back exactly: W_raw = W / σ, b_raw = b − W_raw·μ.
    """
    x = features.double()
    mu, sigma = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mu) / sigma
    w = torch.zeros(2, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, labels) + 0.5 * l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = (w.detach() / sigma)
    return LinearProbe(w_raw.float(), (b.detach() - w_raw @ mu).float())


class ProbeResult(NamedTuple):
    probe: LinearProbe
    train_accuracy: float
    eval_accuracy: float
    eval_majority: float  # accuracy of always predicting the commoner eval label (the chance level)
    n_train: int
    n_eval: int


def train_probe(model, tokenizer, data: ProbeData, eval_fraction: float = 0.2, seed: int = 0,
                batch_size: int = 16, max_length: int = 256, l2: float = 1e-3, add_special_tokens: bool = True,
                autocast_dtype: torch.dtype | None = None) -> ProbeResult:
    train, held = split_by_prompt(data.examples, eval_fraction, seed)
    if len({e.unsafe for e in train}) < 2:
        raise UserError("the probe's training texts are all one class; it needs safe and unsafe responses "
                        "(PKU safety flags, or chosen = safe / rejected = unsafe pairs)")
    kw = dict(batch_size=batch_size, max_length=max_length, add_special_tokens=add_special_tokens,
              autocast_dtype=autocast_dtype)
    x_train = pooled_hidden_states(model, tokenizer, [e.text for e in train], **kw)
    x_eval = pooled_hidden_states(model, tokenizer, [e.text for e in held], **kw)
    y_train = torch.tensor([e.unsafe for e in train])
    y_eval = torch.tensor([e.unsafe for e in held])
    probe = fit_linear_probe(x_train, y_train, l2)
    majority = max(y_eval.float().mean().item(), 1 - y_eval.float().mean().item())
    return ProbeResult(probe, probe.accuracy(x_train, y_train), probe.accuracy(x_eval, y_eval), majority,
                       len(train), len(held))


def save_probe(out_dir: str | Path, result: ProbeResult, metadata: dict) -> Path:
    """``probe.safetensors`` (vector, weight, bias) and ``probe.json`` (accuracies + metadata)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    p = result.probe
    save_file({"vector": p.vector.contiguous(), "weight": p.weight.contiguous(), "bias": p.bias.contiguous()},
              str(out / "probe.safetensors"))
    info = {"train_accuracy": result.train_accuracy, "eval_accuracy": result.eval_accuracy,
            "eval_majority_baseline": result.eval_majority, "n_train_texts": result.n_train,
            "n_eval_texts": result.n_eval, "hidden_size": int(p.vector.numel()), **metadata}
    (out / "probe.json").write_text(json.dumps(info, indent=2))
    return out


def load_probe(path: str | Path) -> tuple[torch.Tensor, dict]:
    """(v, probe.json contents) from a directory written by ``save_probe`` (or its .safetensors file)."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    tensors = directory / "probe.safetensors"
    if not tensors.is_file():
        raise UserError(f"{path}: no probe.safetensors there; make one with `robalign probe --out {path}`")
    info_file = directory / "probe.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    return load_file(str(tensors))["vector"], info
