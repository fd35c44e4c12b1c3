"""The SFT stage of a sweep cell: supervised fine-tuning on the chosen responses, then preference
training from that model, the pipeline the ShaPO paper (and DPO practice) runs by hand.

With ``sft.enabled``, a trained cell's preference stage starts from an SFT model instead of the
lane's base model (the world checkpoint at the cell's ``pretrain.steps``, or the train config's
model), and the SFT model is its reference model too: the trainer scores log π_ref with the model it
loads, so π_ref = π_SFT, as DPO prescribes (Rafailov et al. 2023, §5). Method ``sft`` (reserved while
the stage is on) benchmarks the SFT model itself; ``none`` still benchmarks the base model.

The SFT run is ``robalign train`` with ``loss.losses={sft: 1.0}`` (each chosen response's per-token
negative log-likelihood; the rejected one is scored for the metrics but never trained on). Its config
is the sweep's base train config with ``train.overrides`` (never a method's overrides or the cell's
grid keys: those shape the preference stage), then no ShaPO, mean aggregation, ``training.max_steps``
= ``sft.steps`` (unless null), ``training.seed`` = ``sft.seed``, the lane's training pairs without
label noise (``sft.noisy``: with the cell's), and ``sft.overrides`` last. The official ShaPO SFT
command passes no noise rate, so the default SFT model is the one every noise level starts from.

One SFT model per key: the first 12 hex digits of the SHA-256 of that config, with the data files
replaced by the fingerprint of their pairs without soft labels (a β_r axis rewrites q, never the
chosen responses, so its cells share one SFT model) and the output and cache directories left out.
It lives in OUT/sft/<key>/ (model/, run_info.json, metrics.jsonl, sft.json). ``prepare`` trains every
key the grid needs once, before any cell; a cell reads it back. A run killed part way resumes from
its last checkpoint (``training.save_steps``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

SFT_LOSS = {"sft": 1.0}


class SftModel(NamedTuple):
    model: Path  # OUT/sft/<key>/model
    metrics: dict[str, Any]  # sft/steps, sft/seconds, sft/eval/... (the run's held-out metrics)
    provenance: dict[str, Any]  # key, base model, resolved config, run_info.json


class Start(NamedTuple):
    model: str  # what the preference stage trains from and uses as reference: base or SFT model
    metrics: dict[str, Any]  # sft/* when there is an SFT stage
    provenance: dict[str, Any]


def is_sft_cell(sweep, cell) -> bool:
    """Method ``sft`` while the SFT stage is on: the SFT model is benchmarked, nothing else trains."""
    from robalign.experiments.sweep import SFT_METHOD

    return sweep.sft.enabled and cell.params["method"] == SFT_METHOD


def start_model(sweep, cell, world: Path, log: Callable[[str], None] = print) -> Start:
    """The model a trained cell starts from: the lane's base model, or with ``sft.enabled`` its SFT
    model, trained here the first time a cell needs it (pipeline_sft)."""
    from robalign.experiments.pipeline import lane_base

    base = lane_base(sweep, cell, world)
    if not sweep.sft.enabled:
        return Start(base, {}, {})
    sft = ensure_sft(sweep, cell, base, world, log)
    return Start(str(sft.model), sft.metrics, {"sft": sft.provenance})


def sft_root(sweep) -> Path:
    return (sweep.out_dir / "sft").resolve()


def sft_config(sweep, cell, base_model: str, world: Path):
    """The SFT run's resolved TrainConfig for ``cell`` (module doc); ``ensure_sft`` sets its output_dir."""
    from robalign.config import TrainConfig, load_config
    from robalign.experiments.pipeline import cell_config, lane_data, sweep_cache
    from robalign.experiments.pipeline_real import cell_beta_r
    from robalign.experiments.sweep import _as_override, _resolve

    s = sweep.sft
    overrides = [*sweep.train.overrides, _as_override("loss.losses", SFT_LOSS), "loss.aggregation=mean",
                 "training.shapo.enabled=false", f"training.seed={s.seed}"]
    if s.steps is not None:
        overrides.append(f"training.max_steps={s.steps}")
    if s.noisy:
        d = cell_config(sweep, cell).data
        overrides += [_as_override(f"data.{k}", getattr(d, k)) for k in ("noise_mode", "noise_rate", "noise_seed",
                                                                          "noise_std")]
    else:
        overrides.append("data.noise_rate=0.0")
    config = load_config(TrainConfig, _resolve(sweep.train.config, "train"), [*overrides, *s.overrides])
    config.model.name_or_path = str(base_model)
    config.data.train, config.data.eval = lane_data(sweep, world, config, cell_beta_r(sweep, cell))
    config.cache_dir = config.cache_dir or str(sweep_cache(sweep))
    config.training.save_model = True  # the preference stage loads OUT/sft/<key>/model
    return config


@functools.lru_cache(maxsize=64)
def _pairs_fingerprint(path: str, size: int, mtime_ns: int) -> str:
    from dataclasses import replace

    from robalign.data.preference import data_fingerprint, load_pairs

    return data_fingerprint(replace(p, soft_label=None) for p in load_pairs(path))


def pairs_fingerprint(path: str | None) -> str | None:
    """sha256 over (id, prompt, chosen, rejected) of a pairs file, soft labels left out; cached per file state."""
    if path is None:
        return None
    stat = Path(path).stat()
    return _pairs_fingerprint(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def sft_key(config) -> str:
    from robalign.config import to_dict

    data = to_dict(config)
    for key in ("output_dir", "cache_dir"):
        data.pop(key)
    data["data"]["train"] = pairs_fingerprint(config.data.train)
    data["data"]["eval"] = pairs_fingerprint(config.data.eval)
    blob = json.dumps(data, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def ensure_sft(sweep, cell, base_model: str, world: Path, log: Callable[[str], None] = print) -> SftModel:
    """The cell's SFT model: read back when OUT/sft/<key> holds a finished run, else trained
    (or resumed) there. Returns the model directory with its metrics and provenance."""
    from robalign.config import dump_yaml, to_dict
    from robalign.experiments.pipeline import proportion
    from robalign.provenance import write_json_atomic
    from robalign.training.checkpoint import checkpoint_dirs
    from robalign.training.trainer import train

    config = sft_config(sweep, cell, base_model, world)
    key = sft_key(config)
    out = sft_root(sweep) / key
    config.output_dir = str(out)
    record_file = out / "sft.json"
    record = json.loads(record_file.read_text(encoding="utf-8")) if record_file.is_file() else {}
    if record.get("key") != key or not (out / "model" / "config.json").is_file():
        same = (out / "config.yaml").is_file() and (out / "config.yaml").read_text() == dump_yaml(config)
        resume = same and bool(checkpoint_dirs(out))
        log(f"sft {out}: {'resuming' if resume else 'training'} {base_model} on the chosen responses of "
            f"{config.data.train}")
        start = time.perf_counter()
        result = train(config, resume=resume, overwrite=not resume)
        record = {"key": key, "base_model": str(base_model), "steps": result.steps,
                  "seconds": round(time.perf_counter() - start, 2), "eval_metrics": result.eval_metrics}
        write_json_atomic(record_file, record)  # written last: its presence means the model is complete
    metrics: dict[str, Any] = {"sft/steps": record["steps"], "sft/seconds": record["seconds"]}
    eval_metrics = record["eval_metrics"]
    for name, value in eval_metrics.items():
        metrics[f"sft/{name}"] = value
    if "eval/rewards/accuracies" in eval_metrics:  # against the base model as reference
        metrics["sft/eval/rewards/accuracies"] = proportion(eval_metrics["eval/rewards/accuracies"],
                                                            int(eval_metrics.get("eval/pairs", 0)))
    provenance = {"key": key, "model": str(out / "model"), "base_model": str(base_model),
                  "config": to_dict(config), "run_info": str(out / "run_info.json")}
    return SftModel(out / "model", metrics, provenance)
