"""The smollm2 lane's shared stage: soft labels for the world's preference pairs.

The smollm2 lane (the real-model lane: SmolLM2-135M-Instruct by default, any hub model the train
config names, e.g. the ShaPO paper's Pythia-2.8B on a GPU) trains with the soft-label loss (``soft``:
cDPO with a per-pair ε = 1 − q) on the world's pairs; its duration axis is ``training.max_steps``.
A cell with another loss (dpo, ipo, cdpo, rdpo, Dr.DPO, an sft mix) trains on the same file's
pairs and ignores q, so its label noise must be the trainer's ``flip`` (``validate_sweep`` says so);
the SFT stage reads the clean file's chosen responses. The soft
labels come from where ShaPO's reward-level variant takes them (docs/methods.md, "Reward-level
ShaPO"): a Bradley–Terry reward model trained on the world's training pairs, and
q = σ(β_r·Δr/std(Δr)) for every pair it scores (standardised margins, so β_r means the same for
any reward scale). The reward model is a nano Llama (0.8M parameters) with the world's tokenizer
and a fresh scalar head: the world's replies differ in a few words, which it learns in one epoch
in well under a minute on a CPU, where SmolLM2 as a reward model would take most of an hour.

Noise has to reach the soft labels to act (a pair flip maps q to 1 − q and the soft loss cancels
it exactly), so each ``data.noise_mode`` is a different file:

| mode | what the cell's file holds |
|---|---|
| ``flip`` | the clean q; the trainer swaps round(rate·n) pairs, a no-op under ``soft`` (the control) |
| ``reward_labels`` | q from a reward model trained with round(rate·n) of its pairs swapped |
| ``soft_flip`` | the clean reward model's q with q → 1 − q on round(rate·n) pairs (``noisy_soft_labels``) |
| ``margin_gaussian`` | q = σ(β_r·(Δr/std + ξ)), ξ ~ N(0, noise_std²) on round(rate·n) pairs |

The noisy pairs are those a ``flip`` with the same ``data.noise_seed`` would swap. The reward
models train on a seeded sample of ``reward_pairs`` of the world's training pairs. SmolLM2 trains
on a seeded sample of the world's training pairs, as many as the longest cell reaches
(max_steps × batch), and is evaluated on a seeded sample of the held-out prompts' pairs, scored
by the clean reward model (never noised). Every file is written once into OUT/soft_labels by
``prepare``; the reward models into OUT/soft_labels/reward/. β_r (``soft_labels.beta_r``, a grid
axis) changes q but not the pairs or the reward models: a β_r other than 1 gets its own files
(``train-clean-b10.jsonl``, ``eval-b10.jsonl``) from the same reward model's margins.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple


@dataclass(frozen=True)
class SoftLabelSettings:  # β_r is the sweep's (soft_labels.beta_r, default 1: one std of margin apart gives q = 0.73)
    reward_epochs: int = 1
    reward_batch_size: int = 16
    reward_lr: float = 5e-4  # nano from scratch; docs/methods.md measured 5e-4 for one epoch
    # pairs the reward model trains on, a seeded sample: 64 steps of 16 reach ~0.9 held-out accuracy
    # on a tiny world in 5 steps, and a default world's 6,176 pairs took over 10 min on a busy 2-core box
    reward_pairs: int = 1024
    eval_pairs: int = 128  # held-out pairs SmolLM2 is evaluated on: Wilson half-width <= 0.09
    max_length: int = 448
    max_prompt_length: int = 424
    seed: int = 0  # the samples of pairs and the reward models' initialisation


SETTINGS = SoftLabelSettings()


class SoftLabelFiles(NamedTuple):
    train: Path
    eval: Path
    reward_model: Path


def root_dir(sweep) -> Path:
    return (sweep.out_dir / "soft_labels").resolve()


def _tag(value: float) -> str:
    return f"{value:g}"


def cell_beta_r(sweep, cell) -> float:
    """The cell's β_r: its grid value ``soft_labels.beta_r``, else the sweep's ``soft_labels.beta_r``."""
    return float(cell.params.get("soft_labels.beta_r", sweep.soft_labels.beta_r))


def soft_label_files(sweep, world: Path, config, beta_r: float | None = None) -> SoftLabelFiles:
    """Where the cell's training file, the eval file and its reward model are (module doc). A β_r
    other than 1 (``beta_r``, default the sweep's) gets files of its own (``-b10``)."""
    d, root = config.data, root_dir(sweep)
    beta_r = sweep.soft_labels.beta_r if beta_r is None else beta_r
    noisy = d.noise_rate > 0 and d.noise_mode != "flip"
    if d.noise_mode == "reward_labels" and noisy:
        reward = root / "reward" / f"labels-r{_tag(d.noise_rate)}-s{d.noise_seed}"
    else:
        reward = root / "reward" / "clean"
    name = "clean" if not noisy else f"{d.noise_mode}-r{_tag(d.noise_rate)}-s{d.noise_seed}"
    if noisy and d.noise_mode == "margin_gaussian":
        name += f"-sd{_tag(d.noise_std)}"
    b = "" if beta_r == 1.0 else f"-b{_tag(beta_r)}"
    return SoftLabelFiles(root / f"train-{name}{b}.jsonl", root / f"eval{b}.jsonl", reward)


def soft_label_needs(sweep, world: Path, cells) -> list[tuple[Any, float]]:
    """smollm2 lane: the (train config, β_r) of every file the cells' preference and SFT stages read."""
    from robalign.experiments.pipeline import base_model_name, cell_config
    from robalign.experiments.pipeline_sft import is_sft_cell, sft_config

    needs = []
    for cell in cells:
        beta_r = cell_beta_r(sweep, cell)
        if not is_sft_cell(sweep, cell):
            needs.append((cell_config(sweep, cell), beta_r))
        if sweep.sft.enabled:
            needs.append((sft_config(sweep, cell, base_model_name(sweep, cell), world), beta_r))
    return needs


def ensure_soft_labels(sweep, world: Path, wanted: list[tuple[Any, float]],
                       log: Callable[[str], None] = print) -> None:
    """Every reward model and soft-label file that the (train config, β_r) pairs in ``wanted``
    read: the preference cells and the SFT runs of the sweep (module doc)."""
    from robalign.data.preference import load_pairs

    if not wanted:
        return
    files = {soft_label_files(sweep, world, c, b): (c, b) for c, b in wanted}
    if all(f.train.is_file() and f.eval.is_file() for f in files):
        return
    configs = [c for c, _ in wanted]
    all_train = load_pairs(str(world / "pairs" / "train.jsonl"))
    size = max(c.training.max_steps * c.training.per_device_batch_size * c.training.gradient_accumulation_steps
               if c.training.max_steps else len(all_train) for c in configs)
    rng = random.Random(f"{SETTINGS.seed}:soft-label pairs")
    train = [all_train[i] for i in sorted(rng.sample(range(len(all_train)), min(size, len(all_train))))]
    reward_train = [all_train[i] for i in sorted(rng.sample(range(len(all_train)),
                                                            min(SETTINGS.reward_pairs, len(all_train))))]
    all_eval = load_pairs(str(world / "pairs" / "eval.jsonl"))
    eval_pairs = [all_eval[i] for i in sorted(rng.sample(range(len(all_eval)), min(SETTINGS.eval_pairs,
                                                                                      len(all_eval))))]
    for cell_files, (config, beta_r) in files.items():
        if cell_files.train.is_file() and cell_files.eval.is_file():
            continue
        d = config.data
        reward = ensure_reward_model(world, cell_files.reward_model, reward_train, eval_pairs,
                                     d.noise_rate if d.noise_mode == "reward_labels" else 0.0, d.noise_seed, log)
        clean = root_dir(sweep) / "reward" / "clean"
        write_soft_labels(cell_files, reward, clean, train, eval_pairs, d, beta_r, log)


def ensure_reward_model(world: Path, out: Path, pairs, held_out, noise_rate: float, noise_seed: int, log) -> Path:
    """A nano Bradley–Terry reward model on ``pairs`` (round(rate·n) of them swapped first),
    its ranking accuracy measured on ``held_out`` (clean labels)."""
    if (out / "robalign_reward.json").is_file():
        return out
    import shutil
    import time

    import torch

    from robalign.data.noise import flip_labels
    from robalign.data.preference import data_fingerprint
    from robalign.models.tiny import SIZES, build_tiny_model
    from robalign.provenance import run_record, write_json_atomic
    from robalign.training.pretrain import corpus_tokenizer, load_corpus
    from robalign.training.reward import INFO_FILE, load_reward_model, tokenize_for_reward, train_reward_model

    start = time.perf_counter()
    base = out.parent / "base"
    if not (base / "config.json").is_file():  # the world's words as whole tokens, as in pre-training
        tokenizer = corpus_tokenizer(load_corpus(world / "corpus" / "train.jsonl"), SIZES["nano"].vocab)
        build_tiny_model(base, "nano", "llama", seed=SETTINGS.seed, tokenizer=tokenizer)
    noisy = flip_labels(pairs, noise_rate, noise_seed)
    torch.manual_seed(SETTINGS.seed)
    reward = load_reward_model(str(base), allow_new_head=True)
    kw = dict(max_length=SETTINGS.max_length, max_prompt_length=SETTINGS.max_prompt_length, source=str(world))
    tokenized = tokenize_for_reward(noisy.pairs, reward, **kw).pairs
    held = tokenize_for_reward(held_out, reward, **kw).pairs
    result = train_reward_model(reward.model, tokenized, held, reward.tokenizer.pad_token_id, "reward",
                                SETTINGS.reward_epochs, SETTINGS.reward_batch_size, SETTINGS.reward_lr, SETTINGS.seed)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    reward.model.save_pretrained(tmp, safe_serialization=True)
    reward.tokenizer.save_pretrained(tmp)
    write_json_atomic(tmp / INFO_FILE, run_record(
        kind="reward", layout=reward.layout, base_model=str(base), data=str(world / "pairs" / "train.jsonl"),
        train_fingerprint=data_fingerprint(noisy.pairs), train_pairs=len(tokenized), steps=result.steps,
        final_train_loss=result.final_train_loss, eval_accuracy=result.eval_accuracy, eval_loss=result.eval_loss,
        eval_pairs=result.eval_pairs, epochs=SETTINGS.reward_epochs, lr=SETTINGS.reward_lr,
        noise={"mode": "reward_labels", "rate": noise_rate, "seed": noise_seed, "flipped_ids": noisy.flipped_ids}
        if noise_rate else None))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log(f"reward model {out.name}: {result.steps} steps, held-out accuracy {result.eval_accuracy:.3f} "
        f"({time.perf_counter() - start:.0f} s)")
    return out


def write_soft_labels(files: SoftLabelFiles, reward_dir: Path, clean_dir: Path, train, eval_pairs, data,
                      beta_r: float, log) -> None:
    """Score ``train`` with the cell's reward model (noise per ``data``) and ``eval_pairs`` with the
    clean one, q = σ(β_r·Δr/std(Δr)); write both files (the eval file once per β_r, shared by the cells)."""
    import torch

    from robalign.training.reward import (
        load_reward_model,
        noisy_soft_labels,
        reward_margins,
        soft_labels,
        tokenize_for_reward,
    )

    def margins(directory: Path, pairs) -> torch.Tensor:
        reward = load_reward_model(str(directory))
        tokenized = tokenize_for_reward(pairs, reward, SETTINGS.max_length, SETTINGS.max_prompt_length).pairs
        return reward_margins(reward.model, tokenized, reward.tokenizer.pad_token_id, "reward", 64)

    # each file standardised by its own reward model's margins (a noisy reward model has its own scale)
    train_margins = margins(reward_dir, train)
    mode = data.noise_mode if data.noise_mode in ("soft_flip", "margin_gaussian") and data.noise_rate else None
    labels = noisy_soft_labels(train_margins, beta_r, True, mode, data.noise_rate, data.noise_seed, data.noise_std)
    q, noised = labels.soft_labels.tolist(), set(labels.noised)
    _write_pairs(files.train, train, q, train_margins.tolist(), noised)
    if not files.eval.is_file():
        eval_margins = margins(clean_dir, eval_pairs)
        _write_pairs(files.eval, eval_pairs, soft_labels(eval_margins, beta_r, True).tolist(),
                     eval_margins.tolist(), set())
    log(f"soft labels {files.train.name}: {len(train)} pairs, mean q {sum(q) / len(q):.3f}, "
        f"{len(noised)} noised")


def _write_pairs(path: Path, pairs, q: list[float], margins: list[float], noised: set[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for i, (pair, label, margin) in enumerate(zip(pairs, q, margins)):
            f.write(json.dumps({"id": pair.id, "prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected,
                                "soft_label": label, "reward_margin": margin, "noised": i in noised},
                               ensure_ascii=False) + "\n")
    tmp.replace(path)


def soft_label_metrics(sweep, world: Path, cell) -> dict[str, Any]:
    """What the cell's soft labels were: their mean, the share that prefer the chosen response,
    and the reward model's held-out ranking accuracy (clean labels)."""
    from robalign.experiments.pipeline import cell_config
    from robalign.experiments.sweep import NONE_METHOD, SFT_METHOD

    if cell.params["method"] in (NONE_METHOD, SFT_METHOD):
        return {}
    config = cell_config(sweep, cell)
    if "soft" not in config.loss.losses:  # dpo, ipo, ... read the pairs of the clean file, not q
        return {}
    files = soft_label_files(sweep, world, config, cell_beta_r(sweep, cell))
    q = [json.loads(line)["soft_label"] for line in files.train.read_text(encoding="utf-8").splitlines()]
    info = json.loads((files.reward_model / "robalign_reward.json").read_text(encoding="utf-8"))
    return {"soft_labels/mean": sum(q) / len(q), "soft_labels/prefer_chosen": sum(x > 0.5 for x in q) / len(q),
            "reward_model/eval_accuracy": info["eval_accuracy"]}
