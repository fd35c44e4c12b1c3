"""Configuration: dataclasses (each field documented once), YAML instances, dotted overrides.

A config file is YAML whose keys mirror the dataclass fields. On the command line any field
can be overridden with ``section.field=value`` (the value is parsed as YAML, so ``0.1``,
``true``, ``[a, b]`` and ``{dpo: 1.0, sft: 0.1}`` all work). Unknown keys are errors that
name the file and suggest the closest valid key.

Only ``cli`` and the workflow functions see whole config objects; components take plain
arguments.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from robalign.errors import UserError
from robalign.shipped_configs import resolve_config


class ConfigError(UserError, ValueError):
    """A config file or override is invalid; the message names the source, the key and the fix."""


# --------------------------------------------------------------------------------------------
# Training config
# --------------------------------------------------------------------------------------------


# data.noise_mode -> the stage that applies it (robalign.data.noise describes each mode)
NOISE_MODES = {"flip": "train", "reward_labels": "train-reward", "soft_flip": "soft-labels",
               "margin_gaussian": "soft-labels"}

# training.shapo.ascent -> where ε's direction comes from (robalign.training.shapo describes both)
SHAPO_ASCENTS = {"fresh": "∇L(θ) of a first pass: two forward-backward passes a ShaPO step",
                 "previous": "the gradient the previous optimizer step used: one pass a ShaPO step"}

# weight dtypes that cannot be master weights (robalign.models.loading.DTYPES spells them all)
LOW_PRECISION_DTYPES = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16"}


@dataclass
class ModelConfig:
    name_or_path: str = "runs/tiny/nano"  # local directory (save_pretrained layout) or hub id
    revision: str | None = None  # hub revision (branch, tag or commit); ignored for local dirs
    # weight dtype at load: float32 | bfloat16 | float16. Trained weights must be float32 (bf16
    # compute: training.precision=bf16); bfloat16 / float16 only for a frozen base under LoRA
    dtype: str = "float32"
    trust_remote_code: bool = False


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] | None = None  # None = peft's default for the architecture


@dataclass
class DataConfig:
    train: str = "synthetic"  # file (.jsonl/.json/.csv/.parquet, optionally .gz), hf:<dataset id>, or synthetic
    eval: str | None = None  # held-out split; None = hold out eval_fraction of `train`
    format: str = "auto"  # auto | pairs | hh_rlhf | pku_saferlhf
    columns: dict[str, str] = field(default_factory=dict)  # our field -> column, e.g. {prompt: question}
    split: str = "train"  # split name for hf: datasets
    eval_split: str | None = None  # split name for the eval set when `eval` is an hf: id
    eval_fraction: float = 0.1
    limit: int | None = None  # keep the first N training pairs (after loading, before the eval hold-out)
    on_invalid: str = "error"  # error | skip: rows with empty text, chosen == rejected, bad soft labels
    max_length: int = 256  # prompt + response tokens
    max_prompt_length: int = 128
    long_prompt: str = "truncate"  # truncate (keep the end) | skip | error
    prompt_format: str = "auto"  # auto (chat template if the tokenizer has one, else hh) | chat_template | hh | safe_rlhf | plain
    # Label noise on TRAINING pairs only (never the eval split); docs/methods.md#label-noise.
    # noise_mode: where it acts (NOISE_MODES). flip swaps chosen/rejected here in the trainer
    # (q -> 1 - q too, so it cancels exactly under the soft loss); reward_labels, soft_flip and
    # margin_gaussian act upstream (`robalign train-reward --noise-rate`, `robalign soft-labels
    # --noise-mode`) and this run only records them.
    noise_mode: str = "flip"
    noise_rate: float = 0.0  # fraction of training pairs the mode touches: exactly round(rate * n), seeded
    noise_seed: int = 0  # the same seed touches the same pairs in every mode
    noise_std: float = 1.0  # margin_gaussian: std of ξ in Δr + ξ (Δr's units; std(Δr) units with --standardize)


@dataclass
class LossConfig:
    losses: dict[str, float] = field(default_factory=lambda: {"dpo": 1.0})  # name -> weight; dpo ipo cdpo rdpo soft sft
    beta: float = 0.1
    label_smoothing: float = 0.0  # cdpo epsilon
    rdpo_epsilon: float = 0.1  # rdpo assumed flip rate, in [0, 0.5)
    ipo_length_normalize: bool = False  # the IPO paper uses summed log-probs; TRL averages per token
    aggregation: str = "mean"  # mean | drdpo
    drdpo_beta: float = 1.0  # Dr.DPO beta' (Wu et al. 2024 use 1.0)


@dataclass
class ShapoConfig:
    enabled: bool = False  # ShaPO sharpness-aware steps (docs/methods.md#shapo)
    rho: float = 0.05  # ‖ε‖₂, the perturbation radius; sweep it (0 = the plain step, exactly)
    interval: int = 1  # ShaPO on every k-th optimizer step (official recipe: 5; 1 = every step)
    mask: str = "uniform"  # directory from `robalign subspace`, or uniform (every trainable parameter: full SAM)
    # fresh | previous: ε from ∇L(θ) (two passes a step) or from the previous step's gradient (one pass;
    # its loss metrics are then measured at θ+ε). docs/methods.md#3-the-step-trainingshapo
    ascent: str = "fresh"


@dataclass
class TrainingConfig:
    learning_rate: float = 1e-4
    optimizer: str = "adamw"  # adamw | rmsprop | sgd
    weight_decay: float = 0.0
    lr_scheduler: str = "constant"  # constant | linear | cosine (all after warm-up)
    warmup_steps: int = 0
    per_device_batch_size: int = 8  # pairs per micro-batch
    gradient_accumulation_steps: int = 1
    eval_batch_size: int = 16
    max_steps: int | None = None  # optimizer steps; None = num_epochs over the data
    num_epochs: int = 1
    max_grad_norm: float | None = 10.0
    seed: int = 0
    precision: str = "fp32"  # fp32 | bf16 (autocast; master weights stay fp32)
    check_initial_loss: bool = True  # stop if the first batch's DPO loss is not ln 2 (docs/methods.md#prompt-formats)
    logging_steps: int = 1
    eval_steps: int = 0  # 0 = evaluate only at the end
    save_steps: int = 0  # 0 = no intermediate checkpoints
    save_total_limit: int = 2
    report_to: list[str] = field(default_factory=list)  # tensorboard | wandb
    save_model: bool = True  # write the final model to <output_dir>/model
    shapo: ShapoConfig = field(default_factory=ShapoConfig)


@dataclass
class TrainConfig:
    output_dir: str = "runs/train"
    cache_dir: str | None = None  # reference log-prob cache; None = $ROBALIGN_CACHE or ~/.cache/robalign
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)


# --------------------------------------------------------------------------------------------
# Loading, overriding, validating
# --------------------------------------------------------------------------------------------

_NONE = type(None)


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Coerce ``value`` to the annotated type ``tp`` or raise a ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and _NONE in args:
            return None
        errors = []
        for arg in args:
            if arg is _NONE:
                continue
            try:
                return _check_type(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _from_dict(tp, value, where)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str | int | float):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_check_type(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {_check_type(k, key_tp, where): _check_type(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "1e-4" as a string
        except ValueError:
            pass
    if tp is Any or (isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        return value
    raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _from_dict(cls: type, data: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else f" Valid keys: {', '.join(names)}."
            raise ConfigError(f"{where}: unknown key '{key}'.{hint}")
        kwargs[key] = _check_type(value, hints[key], f"{where}.{key}" if where else key)
    return cls(**kwargs)


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """Parse ``key.sub=value`` strings; values are YAML scalars or flow collections."""
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form section.key=value (e.g. loss.beta=0.2)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{item}': value is not valid YAML ({exc})") from None
        parsed.append((key.strip(), value))
    return parsed


def _resolve(path: str | Path) -> Path:
    """An existing file, else the shipped config of that name (``dpo_tiny``, ``train/dpo_tiny``)."""
    try:
        return resolve_config(path)
    except UserError as exc:  # callers catch ConfigError for every config mistake
        raise ConfigError(str(exc)) from None


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None):
    """Build a ``cls`` instance from an optional YAML file plus dotted overrides."""
    data: dict = {}
    source = str(path) if path else "<defaults>"
    if path is not None:
        path = _resolve(path)
        source = str(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    for key, value in parse_overrides(overrides or []):
        _set_dotted(data, key, value)
    try:
        return _from_dict(cls, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}".replace(": : ", ": ")) from None


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def validate_train_config(config: TrainConfig) -> None:
    """Semantic checks beyond types; raise ConfigError with the key and the fix."""
    from robalign.training.losses import AGGREGATIONS, LOSSES

    for name, weight in config.loss.losses.items():
        if name not in LOSSES:
            close = difflib.get_close_matches(name, list(LOSSES), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"loss.losses: unknown loss '{name}'.{hint} Known: {', '.join(LOSSES)}")
        if weight < 0:
            raise ConfigError(f"loss.losses.{name}: weight must be >= 0, got {weight}")
    if config.loss.aggregation not in AGGREGATIONS:
        raise ConfigError(f"loss.aggregation: '{config.loss.aggregation}' is not one of {', '.join(AGGREGATIONS)}")
    if not 0.0 <= config.loss.rdpo_epsilon < 0.5:
        raise ConfigError(f"loss.rdpo_epsilon must lie in [0, 0.5), got {config.loss.rdpo_epsilon}")
    if not 0.0 <= config.loss.label_smoothing <= 0.5:
        raise ConfigError(f"loss.label_smoothing must lie in [0, 0.5], got {config.loss.label_smoothing}")
    if not 0.0 <= config.data.noise_rate <= 1.0:
        raise ConfigError(f"data.noise_rate must lie in [0, 1], got {config.data.noise_rate}")
    if config.data.noise_mode not in NOISE_MODES:
        close = difflib.get_close_matches(config.data.noise_mode, list(NOISE_MODES), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"data.noise_mode: unknown mode '{config.data.noise_mode}'.{hint} "
                          f"Known: {', '.join(NOISE_MODES)} (docs/methods.md#label-noise)")
    if not (config.data.noise_std >= 0 and config.data.noise_std < float("inf")):
        raise ConfigError(f"data.noise_std must be a finite number >= 0, got {config.data.noise_std}")
    if config.data.on_invalid not in ("error", "skip"):
        raise ConfigError(f"data.on_invalid must be error or skip, got '{config.data.on_invalid}'")
    if config.data.prompt_format not in ("auto", "chat_template", "hh", "safe_rlhf", "plain"):
        raise ConfigError(f"data.prompt_format must be auto, chat_template, hh, safe_rlhf or plain, "
                          f"got '{config.data.prompt_format}' (docs/methods.md#prompt-formats)")
    if config.data.long_prompt not in ("truncate", "skip", "error"):
        raise ConfigError(f"data.long_prompt must be truncate, skip or error, got '{config.data.long_prompt}'")
    if config.data.max_prompt_length >= config.data.max_length:
        raise ConfigError("data.max_prompt_length must be smaller than data.max_length (responses need room)")
    t = config.training
    if t.precision not in ("fp32", "bf16"):
        raise ConfigError(f"training.precision must be fp32 or bf16, got '{t.precision}'")
    if config.model.dtype in LOW_PRECISION_DTYPES and not config.lora.enabled:
        raise ConfigError(f"model.dtype={config.model.dtype} trains the weights themselves in "
                          f"{LOW_PRECISION_DTYPES[config.model.dtype]} with no fp32 master copy (small updates "
                          "round away). Use model.dtype=float32 with training.precision=bf16 (bf16 autocast, fp32 "
                          "master weights), or lora.enabled=true (fp32 adapters on a low-precision base)")
    if t.optimizer not in ("adamw", "rmsprop", "sgd"):
        raise ConfigError(f"training.optimizer must be adamw, rmsprop or sgd, got '{t.optimizer}'")
    if t.lr_scheduler not in ("constant", "linear", "cosine"):
        raise ConfigError(f"training.lr_scheduler must be constant, linear or cosine, got '{t.lr_scheduler}'")
    if t.per_device_batch_size < 1 or t.gradient_accumulation_steps < 1:
        raise ConfigError("training.per_device_batch_size and gradient_accumulation_steps must be >= 1")
    if not (t.shapo.rho >= 0 and t.shapo.rho < float("inf")):
        raise ConfigError(f"training.shapo.rho must be a finite number >= 0, got {t.shapo.rho}")
    if t.shapo.interval < 1:
        raise ConfigError(f"training.shapo.interval must be >= 1 (1 = every step), got {t.shapo.interval}")
    if t.shapo.ascent not in SHAPO_ASCENTS:
        close = difflib.get_close_matches(t.shapo.ascent, list(SHAPO_ASCENTS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"training.shapo.ascent: unknown value '{t.shapo.ascent}'.{hint} Known: "
                          + "; ".join(f"{k} ({v})" for k, v in SHAPO_ASCENTS.items()))
    if not t.shapo.mask.strip():
        raise ConfigError("training.shapo.mask is empty: give a directory from `robalign subspace`, or uniform")
    for sink in t.report_to:
        if sink not in ("tensorboard", "wandb"):
            raise ConfigError(f"training.report_to: unknown sink '{sink}' (tensorboard or wandb)")
