"""ShaPO's probe and subspace masks as a sweep stage: ``robalign probe`` then ``robalign subspace``,
made once per starting model in ``prepare`` for the cells whose ``training.shapo.mask`` names one.

A cell asks for a mask with ``training.shapo.mask=subspace:top`` (``subspace:bottom``,
``subspace:random``), in a method's overrides or as a grid axis beside ``uniform`` (every trainable
parameter, the full-SAM control): the ShaPO paper's geometry control, selective Top-K against
Bottom-K, Random-K and uniform at the same ρ, k and steps. The mask is made for the model the
cell's preference stage starts from (the SFT model when the sweep has an SFT stage, else the world
checkpoint or the train config's model), so its fingerprint is the one of the model it perturbs.

1. **Probe** (``training.probe``): the frozen starting model's final hidden states, mean-pooled, of
   a seeded sample of ``subspace.probe_pairs`` of the world's training pairs, harmless requests left
   out (their rejected reply is an over-refusal, not an unsafe answer), labelled chosen = safe and
   rejected = unsafe (the proxy of docs/methods.md), rendered in the base train config's prompt
   format; ``subspace.estimator`` fits the head with 20 % of the prompts held out, and the estimators
   in ``subspace.curves`` are fitted beside it on the same features for the report's probe curves
   (their vectors are not used).
2. **Masks** (``training.subspace``): K = round(fraction · layers · d_ff) neurons ranked across all
   layers by cos(W_down[:, j], v): ``top`` the most aligned, ``bottom`` the most anti-aligned (the
   official code's sort); ``random`` draws K with the cell's seed, so replicates draw their own
   Random-K, while Top-K and Bottom-K are one mask for every seed.

Layout: OUT/subspace/<model>/probe/ and OUT/subspace/<model>/<selection>-f<fraction>[-s<seed>]/,
<model> being the model directory's name (``<key>_model`` for an SFT model) and 8 hex digits of the
SHA-256 of its path or hub id. Each is
written into a ``.partial`` directory and renamed when complete, so a found directory is done.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

PROBE_EVAL_FRACTION = 0.2  # share of prompts the probe holds out (robalign probe's default)
PROBE_BATCH = 16


def model_dir(sweep, model: str) -> Path:
    """OUT/subspace/<name>-<hash of the model path or id>."""
    path = Path(str(model))
    name = f"{path.parent.name}_{path.name}" if path.name == "model" else path.name  # OUT/sft/<key>/model
    name = re.sub(r"[^\w.-]+", "_", name) or "model"
    digest = hashlib.sha256(str(model).encode("utf-8")).hexdigest()[:8]
    return (sweep.out_dir / "subspace" / f"{name}-{digest}").resolve()


def mask_dir(sweep, model: str, selection: str, seed: int) -> Path:
    tag = f"{selection}-f{sweep.subspace.fraction:g}" + (f"-s{seed}" if selection == "random" else "")
    return model_dir(sweep, model) / tag


def ensure_mask(sweep, world: Path, model: str, selection: str, seed: int,
                log: Callable[[str], None] = print) -> Path:
    """The ``selection`` mask (top / bottom / random) for ``model``, made unless it is there."""
    from robalign.models.loading import load_causal_lm, model_fingerprint
    from robalign.provenance import run_record
    from robalign.training.probe import load_probe
    from robalign.training.subspace import build_mask

    out = mask_dir(sweep, model, selection, seed)
    if (out / "mask.json").is_file():
        if selection in ("top", "bottom") and sweep.subspace.curves:
            ensure_probe(sweep, world, model, log)  # curves asked for after the probe was made
        return out
    probe = ensure_probe(sweep, world, model, log) if selection in ("top", "bottom") else None
    vector, probe_info = load_probe(probe) if probe is not None else (None, {})
    network = load_causal_lm(str(model), dtype="float32")
    meta = {"model": str(model), "model_fingerprint": model_fingerprint(str(model)),
            "probe": str(probe) if probe else None, "probe_eval_accuracy": probe_info.get("eval_accuracy"),
            "sweep": sweep.name, "run": run_record()}
    mask = build_mask(network, sweep.subspace.fraction, selection, seed, vector, meta)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    mask.save(tmp)
    tmp.rename(out)
    log(f"subspace {out}: {selection} {mask.info['k']} of {mask.info['total_neurons']} neurons")
    return out


def ensure_probe(sweep, world: Path, model: str, log: Callable[[str], None] = print) -> Path:
    """The safety probe of ``model`` on the world's pairs (module doc), made unless it is there. A
    probe made before ``subspace.curves`` named an estimator gets that estimator fitted on the same
    features and added to its probe.json; its saved vector, and so every mask, stays as it was."""
    out = model_dir(sweep, model) / "probe"
    s = sweep.subspace
    if (out / "probe.json").is_file():
        info = json.loads((out / "probe.json").read_text(encoding="utf-8"))
        missing = [e for e in s.curves if e not in (info.get("estimators") or {})]
        if missing:
            _add_estimators(sweep, world, model, out, info, missing, log)
        return out
    from robalign.training.probe import save_probe

    result, meta = _fit_probe(sweep, world, model, [s.estimator, *s.curves])
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    save_probe(tmp, result, meta)
    tmp.rename(out)
    log(f"probe {out}: held-out accuracy {result.eval_accuracy:.3f} on {result.n_eval} texts "
        f"(chance {result.eval_majority:.3f})")
    return out


def _add_estimators(sweep, world: Path, model: str, out: Path, info: dict, names: list[str],
                    log: Callable[[str], None]) -> None:
    from robalign.errors import UserError
    from robalign.provenance import run_record, write_json_atomic

    result, meta = _fit_probe(sweep, world, model, names)
    if (result.n_train, result.n_eval) != (info.get("n_train_texts"), info.get("n_eval_texts")):
        raise UserError(f"{out / 'probe.json'}: its {info.get('n_train_texts')}/{info.get('n_eval_texts')} "
                        f"train/held-out texts are now {result.n_train}/{result.n_eval}, so the world's pairs "
                        f"changed since the probe was made; re-run the sweep with --restart")
    info["estimators"] = {**(info.get("estimators") or {}), **result.estimators}
    info["curves"] = [*(info.get("curves") or []), *names]
    info.setdefault("added", []).append({"estimators": names, "run": run_record()})
    write_json_atomic(out / "probe.json", info)
    log(f"probe {out}: added {', '.join(names)} (held-out accuracy "
        + ", ".join(f"{n} {result.estimators[n]['eval_accuracy']:.3f}" for n in names) + "); the mask is unchanged")


def _fit_probe(sweep, world: Path, model: str, estimators: list[str]):
    """(ProbeResult, metadata) of ``estimators`` fitted on ``model``'s features of the probe pairs."""
    from robalign.config import TrainConfig, load_config
    from robalign.data.formats import resolve_format
    from robalign.data.preference import data_fingerprint, load_pairs
    from robalign.experiments.sweep import _resolve
    from robalign.models.loading import load_causal_lm, load_tokenizer, model_fingerprint
    from robalign.provenance import run_record
    from robalign.training.probe import probe_examples, train_probe

    s = sweep.subspace
    pairs = [p for p in load_pairs(str(world / "pairs" / "train.jsonl")) if p.meta.get("kind") != "harmless"]
    pairs = [pairs[i] for i in sorted(random.Random(f"{s.seed}:probe pairs").sample(range(len(pairs)),
                                                                                     min(s.probe_pairs, len(pairs))))]
    base = load_config(TrainConfig, _resolve(sweep.train.config, "train"), sweep.train.overrides)
    import torch

    tokenizer = load_tokenizer(str(model))
    # on a GPU when there is one, as `robalign probe` does (a 3B model's features on a CPU take hours)
    network = load_causal_lm(str(model), dtype="float32").to("cuda" if torch.cuda.is_available() else "cpu")
    prompt_format = resolve_format(base.data.prompt_format, tokenizer)
    data = probe_examples(pairs, tokenizer, prompt_format=prompt_format)
    result = train_probe(network, tokenizer, data, PROBE_EVAL_FRACTION, s.seed, PROBE_BATCH, s.max_length,
                         add_special_tokens=prompt_format != "chat_template", estimators=estimators)
    meta = {"model": str(model), "model_fingerprint": model_fingerprint(str(model)),
            "data": str(world / "pairs" / "train.jsonl"), "data_fingerprint": data_fingerprint(pairs),
            "exclude_kinds": ["harmless"], "pairs": len(pairs), "label_source": data.label_source,
            "conflicting_texts_dropped": data.conflicts, "prompt_format": prompt_format, "seed": s.seed,
            "eval_fraction": PROBE_EVAL_FRACTION, "max_length": s.max_length, "estimator": estimators[0],
            "curves": estimators[1:], "sweep": sweep.name, "run": run_record()}
    return result, meta
