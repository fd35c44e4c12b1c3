"""The preference-training workflow, top to bottom: config -> data -> reference log-probs ->
loop -> held-out evaluation -> saved model, with every run recording how it was made."""

from __future__ import annotations

import functools
import json
import math
import shutil
import sys
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from robalign.config import TrainConfig, dump_yaml, to_dict
from robalign.data.noise import apply_training_noise
from robalign.data.preference import DataError, data_fingerprint, load_pairs, split_holdout
from robalign.data.tokenize import collate_pairs, tokenize_pairs
from robalign.errors import UserError
from robalign.models.loading import load_causal_lm, load_tokenizer, model_fingerprint
from robalign.provenance import run_record, write_json_atomic
from robalign.training.checkpoint import checkpoint_dirs, load_checkpoint, save_checkpoint
from robalign.training.metrics_log import MetricsLog
from robalign.training.preflight import check_initial_loss, describe_pair, initial_dpo_loss
from robalign.training.reference import reference_logps
from robalign.training.shapo import masked_gradient, shapo_due, shapo_step
from robalign.training.step import LossSettings, accumulate_gradients, evaluate
from robalign.training.subspace import resolve_parameter_mask


class TrainResult(NamedTuple):
    output_dir: Path
    steps: int
    final_metrics: dict[str, float]  # last logged training step
    eval_metrics: dict[str, float]


def step_indices(n: int, global_batch: int, step: int, steps_per_epoch: int, seed: int) -> list[int]:
    """Pair indices of optimizer step ``step``: a seeded permutation per epoch, so a resumed
    run sees exactly the batches an uninterrupted one would."""
    epoch, pos = divmod(step, steps_per_epoch)
    return list(_epoch_order(n, seed, epoch)[pos * global_batch : (pos + 1) * global_batch])


@functools.lru_cache(maxsize=2)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    # computed once per epoch, not once per step (O(n) each time on large data sets)
    return tuple(torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist())


def prepare_data(config: TrainConfig, tokenizer):
    """Load, hold out, add label noise to the training split only, tokenize."""
    d = config.data
    load = dict(format=d.format, columns=d.columns or None, on_invalid=d.on_invalid)
    invalid = {"train": [], "eval": []}  # 1-based data rows dropped by data.on_invalid=skip
    pairs = load_pairs(d.train, split=d.split, skipped_rows=invalid["train"], **load)
    if d.eval:
        train = pairs[: d.limit] if d.limit else pairs
        eval_pairs = load_pairs(d.eval, split=d.eval_split or d.split, skipped_rows=invalid["eval"], **load)
    else:
        pairs = pairs[: d.limit] if d.limit else pairs
        train, eval_pairs = split_holdout(pairs, d.eval_fraction, config.training.seed)
    if "soft" in config.loss.losses:
        missing = [p.id for p in train if p.soft_label is None]
        if missing:
            raise DataError(f"{d.train}: loss 'soft' needs a soft_label for every pair; {len(missing)} lack one "
                            f"(first: '{missing[0]}'). Add the column with `robalign soft-labels`, or map it with "
                            "data.columns={soft_label: <column>}.")
    noisy = apply_training_noise(train, d.noise_mode, d.noise_rate, d.noise_seed)  # only `flip` acts here
    kw = dict(max_length=d.max_length, max_prompt_length=d.max_prompt_length, long_prompt=d.long_prompt,
              prompt_format=d.prompt_format)
    tok_train = tokenize_pairs(noisy.pairs, tokenizer, source=d.train, **kw)
    tok_eval = tokenize_pairs(eval_pairs, tokenizer, source=d.eval or d.train, **kw)
    if not tok_train.pairs:
        raise DataError(f"{d.train}: no training pairs left after length filtering (data.long_prompt=skip?)")
    info = {"train_pairs": len(tok_train.pairs), "eval_pairs": len(tok_eval.pairs),
            "train_fingerprint": data_fingerprint(noisy.pairs), "eval_fingerprint": data_fingerprint(eval_pairs),
            "noise_mode": d.noise_mode, "noise_rate": d.noise_rate, "noise_seed": d.noise_seed,
            "noise_std": d.noise_std, "flipped_ids": noisy.flipped_ids,
            "skipped_ids": tok_train.skipped_ids + tok_eval.skipped_ids, "invalid_rows_skipped": invalid,
            "truncated_pairs": tok_train.truncated + tok_eval.truncated}
    return tok_train.pairs, tok_eval.pairs, info


def _prepare_output_dir(out: Path, resume: bool, overwrite: bool) -> Path | None:
    """Return the checkpoint to resume from, refusing to clobber an existing run by accident."""
    info = out / "run_info.json"
    if resume:
        ckpts = checkpoint_dirs(out)
        if not ckpts:
            raise UserError(f"--resume: {out} has no complete checkpoint (training.save_steps=0?); start afresh")
        return ckpts[-1]
    if info.exists() and not overwrite:
        status = json.loads(info.read_text()).get("status", "unknown")
        raise UserError(f"{out} already holds a run (status: {status}). Pass --resume to continue it, "
                        "--overwrite to replace it, or set output_dir=<new dir>.")
    if out.exists() and overwrite:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return None


def require_fp32_master_weights(model, dtype_option: str) -> None:
    """Refuse trainable bf16 / fp16 weights: the optimizer would update them in place with no fp32
    master copy. bf16 keeps 8 significant bits, so an update below half a bf16 step (2⁻⁹ ≈ 0.2 %
    of the weight) rounds away, and so does most of a ShaPO ε (ρ = 0.05 over a 1 % mask of a 3B
    model is ≈ 2e-5 per coordinate, against a half-step of ≈ 4e-5 at |w| = 0.02)."""
    low = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()
                  if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16)})
    if low:
        raise UserError(f"model.dtype={dtype_option} would train {'/'.join(low)} weights with no fp32 master copy, "
                        "so small updates and ShaPO perturbations round away. Load fp32 weights and compute in "
                        "bf16: model.dtype=float32 training.precision=bf16 (autocast, fp32 master weights). "
                        "With lora.enabled=true a bf16 base model is fine: its adapters are fp32.")


def _optimizer(config: TrainConfig, params):
    t = config.training
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    if t.optimizer == "rmsprop":  # the ShaPO paper's official recipe
        return torch.optim.RMSprop(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.learning_rate, weight_decay=t.weight_decay)


def _apply_lora(config: TrainConfig, model):
    from peft import LoraConfig, get_peft_model

    lc = config.lora
    return get_peft_model(model, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                            target_modules=lc.target_modules, task_type="CAUSAL_LM"))


def train(config: TrainConfig, resume: bool = False, overwrite: bool = False) -> TrainResult:
    from accelerate import Accelerator
    from transformers import get_scheduler

    t, out = config.training, Path(config.output_dir)
    # bf16 is explicit autocast with fp32 master weights. cpu=True on accelerator-less machines lets
    # `torchrun --nproc_per_node N` give data-parallel CPU training on gloo.
    accelerator = Accelerator(mixed_precision="no", cpu=torch.accelerator.current_accelerator() is None)
    resume_from = _prepare_output_dir(out, resume, overwrite) if accelerator.is_main_process else None
    accelerator.wait_for_everyone()
    if accelerator.num_processes > 1 and resume:
        resume_from = checkpoint_dirs(out)[-1]
    torch.manual_seed(t.seed)
    autocast = torch.bfloat16 if t.precision == "bf16" else None

    tokenizer = load_tokenizer(config.model.name_or_path, config.model.revision, config.model.trust_remote_code)
    model = load_causal_lm(config.model.name_or_path, config.model.revision, config.model.dtype,
                           config.model.trust_remote_code).to(accelerator.device)
    train_pairs, eval_pairs, data_info = prepare_data(config, tokenizer)
    if accelerator.is_main_process and not resume_from:
        _log_example_pair(train_pairs[0], tokenizer, out)
    fingerprint = model_fingerprint(config.model.name_or_path, config.model.revision)
    pad = tokenizer.pad_token_id

    world = accelerator.num_processes
    global_batch = t.per_device_batch_size * t.gradient_accumulation_steps * world
    n = len(train_pairs)
    steps_per_epoch = max(1, n // global_batch if world > 1 else math.ceil(n / global_batch))
    total_steps = t.max_steps or steps_per_epoch * t.num_epochs
    # Reference log-probs only for the pairs the schedule reaches: 60 steps of 8 over 5,000 PKU
    # pairs need 480 of them (on SmolLM2 / 2 CPU cores, ~2 s a pair saved).
    scheduled = sorted({i for s in range(total_steps) for i in step_indices(n, global_batch, s, steps_per_epoch, t.seed)})
    ref_kw = dict(cache_dir=config.cache_dir, batch_size=t.eval_batch_size, precision=t.precision)
    ref_train = reference_logps(model, [train_pairs[i] for i in scheduled], pad, fingerprint,
                                desc="reference log-probs (train)", **ref_kw)
    ref_eval = reference_logps(model, eval_pairs, pad, fingerprint, desc="reference log-probs (eval)", **ref_kw)
    if config.lora.enabled:
        model = _apply_lora(config, model)
    require_fp32_master_weights(model, config.model.dtype)
    model.train()
    optimizer = _optimizer(config, [p for p in model.parameters() if p.requires_grad])
    scheduler = get_scheduler("constant_with_warmup" if t.lr_scheduler == "constant" else t.lr_scheduler,
                              optimizer, num_warmup_steps=t.warmup_steps, num_training_steps=total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    settings = LossSettings(dict(config.loss.losses), config.loss.beta, config.loss.label_smoothing,
                            config.loss.rdpo_epsilon, config.loss.ipo_length_normalize, config.loss.aggregation,
                            config.loss.drdpo_beta)
    shapo_mask = resolve_parameter_mask(unwrapped, t.shapo.mask, fingerprint) if t.shapo.enabled else None
    start_step, initial_loss = 0, None
    if resume_from is not None:
        start_step = load_checkpoint(resume_from, unwrapped, optimizer, scheduler)["step"]
    elif t.check_initial_loss:  # policy = reference at step 0, so the DPO loss is ln 2 (training/preflight.py)
        first = step_indices(n, global_batch, 0, steps_per_epoch, t.seed)[accelerator.process_index::world]
        batch = collate_pairs([train_pairs[i] for i in first[: t.per_device_batch_size]], pad)
        initial_loss = initial_dpo_loss(model, batch, (ref_train.chosen, ref_train.rejected), config.loss.beta,
                                        autocast)
        check_initial_loss(initial_loss, t.precision)

    record = {"status": "running", "model_fingerprint": fingerprint, "world_size": world,
              "total_steps": total_steps, "global_batch": global_batch, **data_info,
              "reference_pairs": len(scheduled),
              "initial_dpo_loss": initial_loss._asdict() if initial_loss is not None else None,
              "shapo_mask": shapo_mask.summary() if shapo_mask else None,
              "reference_cache": {"train": str(ref_train.cache_file), "train_hit": ref_train.cache_hit,
                                  "eval": str(ref_eval.cache_file), "eval_hit": ref_eval.cache_hit}}
    if accelerator.is_main_process:
        (out / "config.yaml").write_text(dump_yaml(config))
        previous = json.loads((out / "run_info.json").read_text()) if resume_from else {}
        record = run_record(**record) | ({"created": previous["created"], "resumed_from": [
            *previous.get("resumed_from", []), str(resume_from)]} if previous else {})
        write_json_atomic(out / "run_info.json", record)
    log = MetricsLog(out, t.report_to, to_dict(config), enabled=accelerator.is_main_process,
                     truncate_after=start_step if resume_from else None)

    eval_batches = [collate_pairs(eval_pairs[i : i + t.eval_batch_size], pad)
                    for i in range(0, len(eval_pairs), t.eval_batch_size)]
    reference = (ref_train.chosen, ref_train.rejected)
    metrics: dict[str, float] = {}
    previous_gradient = None  # shapo.ascent=previous: M⊙ last step's gradient (not checkpointed: fresh after resume)
    bar = tqdm(range(start_step, total_steps), initial=start_step, total=total_steps, desc="train",
               disable=not accelerator.is_main_process, dynamic_ncols=True)
    try:
        for step in bar:
            idx = step_indices(n, global_batch, step, steps_per_epoch, t.seed)[accelerator.process_index::world]
            micro = [collate_pairs([train_pairs[i] for i in idx[j : j + t.per_device_batch_size]], pad)
                     for j in range(0, len(idx), t.per_device_batch_size)]
            if shapo_mask is not None and shapo_due(step, t.shapo.interval):
                metrics = shapo_step(model, micro, reference, settings, shapo_mask, t.shapo.rho, accelerator, autocast,
                                     t.shapo.ascent, previous_gradient)
            else:
                metrics = accumulate_gradients(model, micro, reference, settings, accelerator, autocast)
            if shapo_mask is not None and t.shapo.ascent == "previous":  # kept only when the next step needs it
                previous_gradient = masked_gradient(shapo_mask) if shapo_due(step + 1, t.shapo.interval) else None
            params = [p for p in model.parameters() if p.requires_grad]
            grad_norm = accelerator.clip_grad_norm_(params, t.max_grad_norm or float("inf"))
            if torch.isfinite(grad_norm):
                optimizer.step()
            else:
                warnings.warn(f"step {step + 1}: non-finite gradient norm, optimizer step skipped", stacklevel=1)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            metrics |= {"grad_norm": float(grad_norm), "learning_rate": scheduler.get_last_lr()[0],
                        "epoch": (step + 1) / steps_per_epoch}
            done = step + 1
            if done % t.logging_steps == 0 or done == total_steps:
                log.write(done, metrics)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics['rewards/accuracies']:.2f}",
                                margin=f"{metrics['rewards/margins']:.3f}")
            if t.eval_steps and done % t.eval_steps == 0 and done < total_steps and eval_batches:
                log.write(done, evaluate(model, eval_batches, (ref_eval.chosen, ref_eval.rejected), settings, autocast))
            if t.save_steps and done % t.save_steps == 0 and done < total_steps and accelerator.is_main_process:
                save_checkpoint(out, done, unwrapped, optimizer, scheduler, {"epoch": done / steps_per_epoch},
                                keep=t.save_total_limit)
        eval_metrics = (evaluate(model, eval_batches, (ref_eval.chosen, ref_eval.rejected), settings, autocast)
                        if eval_batches else {})
    except BaseException as exc:
        if accelerator.is_main_process:
            write_json_atomic(out / "run_info.json", record | {"status": "failed", "error": repr(exc)})
        log.close()
        raise
    if accelerator.is_main_process:
        log.write(total_steps, eval_metrics)
        write_json_atomic(out / "eval_results.json", eval_metrics)
        if t.save_model:
            _save_final(config, unwrapped, tokenizer, out)
        write_json_atomic(out / "run_info.json", record | {"status": "complete", "final_metrics": metrics,
                                                           "eval_metrics": eval_metrics})
    log.close()
    accelerator.wait_for_everyone()
    return TrainResult(out, total_steps, metrics, eval_metrics)


def _log_example_pair(pair, tokenizer, out: Path) -> None:
    """One pair as the model reads it, in the log and in ``example_pair.txt`` (a doubled BOS or
    system prompt shows there before any compute is spent)."""
    text = describe_pair(pair, tokenizer)
    (out / "example_pair.txt").write_text(text + "\n")
    tqdm.write(text, file=sys.stderr)


def _save_final(config: TrainConfig, model, tokenizer, out: Path) -> None:
    """``model/`` holds a full save_pretrained model (LoRA merged; the adapter alone in ``adapter/``)."""
    tmp = out / "model.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    if config.lora.enabled:
        model.save_pretrained(out / "adapter")
        model = model.merge_and_unload()
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out / "model", ignore_errors=True)
    tmp.rename(out / "model")
