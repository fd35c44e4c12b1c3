"""Linear safety probe on a frozen model (ShaPO step 1, DESIGN.md §2).

Texts are prompt + response; the label is 1 when the response is unsafe. Features are the
final-layer hidden states (the backbone's ``last_hidden_state``, i.e. after the final norm)
mean-pooled over non-pad tokens. A 2-class linear head is fitted on standardised features and
mapped back to raw feature space, so the probe vector v = W[unsafe] − W[safe] lives in the
model's hidden space, where the MLP down-projection columns live too.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

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
        for start in tqdm(range(0, len(texts), batch_size), desc="probe features", leave=False,
                          disable=len(texts) <= batch_size):
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


def fit_adam_probe(features: torch.Tensor, labels: torch.Tensor, epochs: int = 20, lr: float = 1e-3,
                   batch_size: int = 64, seed: int = 0, eval_features: torch.Tensor | None = None,
                   eval_labels: torch.Tensor | None = None) -> tuple[LinearProbe, list[dict[str, float]]]:
    """The ShaPO paper's estimator (its Figure 6): a linear head (d -> 2) on the *raw* features,
    cross-entropy, Adam, shuffled mini-batches, ``epochs`` passes.

    features: (N, d); labels: (N,) in {0, 1}. Returns the head and one record per epoch
    (``epoch``, ``train_loss`` mean over the epoch's batches, ``train_accuracy`` and, with
    eval data, ``eval_loss`` / ``eval_accuracy`` at the epoch's end).
    """
    gen = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(features.shape[1], 2)
    with torch.no_grad():  # seeded init, independent of the global RNG
        head.weight.normal_(0, features.shape[1] ** -0.5, generator=gen)
        head.bias.zero_()
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    x, history = features.float(), []
    for epoch in range(1, epochs + 1):
        order, losses = torch.randperm(len(x), generator=gen), []
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(head(x[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        probe = LinearProbe(head.weight.detach().clone(), head.bias.detach().clone())
        record = {"epoch": epoch, "train_loss": sum(losses) / len(losses), "train_accuracy": probe.accuracy(x, labels)}
        if eval_features is not None:
            with torch.no_grad():
                record["eval_loss"] = F.cross_entropy(head(eval_features.float()), eval_labels).item()
            record["eval_accuracy"] = probe.accuracy(eval_features.float(), eval_labels)
        history.append(record)
    return LinearProbe(head.weight.detach().clone(), head.bias.detach().clone()), history


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion: (p̂ + z²/2n ± z·sqrt(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n).

    Texts sharing a prompt are not independent, so this is a lower bound on the real width.
    """
    from statistics import NormalDist

    if n == 0:
        return (float("nan"), float("nan"))
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = successes / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return ((centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n))


class ProbeResult(NamedTuple):
    probe: LinearProbe  # the first estimator's head (its vector is the one saved)
    train_accuracy: float
    eval_accuracy: float
    eval_majority: float  # accuracy of always predicting the commoner eval label (the chance level)
    n_train: int
    n_eval: int
    estimators: dict[str, dict] = {}  # name -> {train_accuracy, eval_accuracy, eval_ci, history}


ESTIMATORS = ("lbfgs", "adam")


def train_probe(model, tokenizer, data: ProbeData, eval_fraction: float = 0.2, seed: int = 0,
                batch_size: int = 16, max_length: int = 256, l2: float = 1e-3, add_special_tokens: bool = True,
                autocast_dtype: torch.dtype | None = None, estimators: Sequence[str] = ("lbfgs",),
                epochs: int = 20, lr: float = 1e-3) -> ProbeResult:
    """Features once, then each estimator in ``estimators`` (``lbfgs``: L2-penalised logistic
    regression; ``adam``: the paper's per-epoch head); the first one is the saved probe."""
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown or not estimators:
        raise UserError(f"probe estimator {unknown or estimators}: use {' or '.join(ESTIMATORS)} (comma-separated)")
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
    fitted: dict[str, tuple[LinearProbe, list]] = {}
    for name in estimators:
        fitted[name] = ((fit_linear_probe(x_train, y_train, l2), []) if name == "lbfgs" else
                        fit_adam_probe(x_train, y_train, epochs, lr, seed=seed, eval_features=x_eval,
                                       eval_labels=y_eval))
    report = {}
    for name, (probe, history) in fitted.items():
        acc = probe.accuracy(x_eval, y_eval)
        report[name] = {"train_accuracy": probe.accuracy(x_train, y_train), "eval_accuracy": acc,
                        "eval_ci95": wilson_interval(round(acc * len(held)), len(held)), "history": history}
    first = fitted[estimators[0]][0]
    majority = max(y_eval.float().mean().item(), 1 - y_eval.float().mean().item())
    return ProbeResult(first, report[estimators[0]]["train_accuracy"], report[estimators[0]]["eval_accuracy"],
                       majority, len(train), len(held), report)


def save_probe(out_dir: str | Path, result: ProbeResult, metadata: dict) -> Path:
    """``probe.safetensors`` (vector, weight, bias) and ``probe.json`` (accuracies + metadata)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    p = result.probe
    save_file({"vector": p.vector.contiguous(), "weight": p.weight.contiguous(), "bias": p.bias.contiguous()},
              str(out / "probe.safetensors"))
    info = {"train_accuracy": result.train_accuracy, "eval_accuracy": result.eval_accuracy,
            "estimators": result.estimators, "eval_majority_baseline": result.eval_majority, "n_train_texts": result.n_train,
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
