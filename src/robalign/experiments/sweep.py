"""Sweeps: a grid of cells from YAML, each cell run once, resumable, locally or as Ray tasks.

A sweep config (``configs/sweep/*.yaml``, ``SweepConfig`` below) names a base training
config, the alignment methods (name -> dotted train overrides; ``none`` is reserved for the
un-aligned model benchmarked as it is) and a ``grid``: the cartesian product of its lists is
the set of cells, minus those a ``skip`` rule drops (``method=none and data.noise_rate>0``:
noise means nothing without training). A cell's id is the first 12 hex digits of the
SHA-256 of the canonical JSON (sorted keys) of the sweep name and the cell's params, so it
does not depend on the order of keys in the YAML, and values are coerced to TrainConfig's
field types first (``0`` and ``0.0`` are one noise rate, one cell).

Beside ``grid`` and ``methods`` a sweep may turn on the stages of the ShaPO study
(docs/experiments.md, "The ShaPO study"): ``sft`` (an SFT model every trained cell starts from;
method ``sft`` is then reserved for it), ``subspace`` (the probe and masks that
``training.shapo.mask=subspace:top|bottom|random`` names) and ``soft_labels`` (β_r, also a
smollm2-lane grid axis ``soft_labels.beta_r``). Left at their defaults they are not stored, so a
sweep recorded before they existed compares equal on a re-run.

``run_sweep`` is the loop: record the sweep in the store (its config, git hash and
versions), let the runner prepare what every cell shares (world, pre-training), then for
each cell not yet done: claim it in the store, run it in ``OUT/cells/<id>/``, and write its
metrics and samples in one transaction (``executors.run_one``). The store is the only record
of what is done, so a sweep killed at any point and run again skips every finished cell and
runs the rest; a cell that raised is marked failed (traceback in ``OUT/cells/<id>/error.txt``),
the others go on, and the next run retries it.

The runner is a module (or, locally, any object) with ``prepare(sweep, log)`` and
``run_cell(sweep, cell, cell_dir, log) -> CellResult(metrics, samples, provenance)``; the
default is ``robalign.experiments.pipeline``. Cells run one at a time in the driver or as
Ray tasks (``robalign.experiments.executors``).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib
import itertools
import json
import math
import operator
import re
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from robalign.config import ConfigError, TrainConfig, load_config, validate_train_config
from robalign.errors import UserError
from robalign.shipped_configs import resolve_config

LANES = ("world", "smollm2")  # world: tiny models, duration = pretrain.steps; smollm2: duration = training.max_steps
EXECUTORS = ("local", "ray")
NONE_METHOD = "none"  # reserved: the base model benchmarked as it is, no alignment
SFT_METHOD = "sft"  # reserved while sft.enabled: the SFT stage's model benchmarked, no preference stage
CELL_KEYS = ("method", "seed")  # params every cell has (seed defaults to [0], method to every method)
# grid keys that are the sweep's own, not the train config's: key -> the lane that has it
SWEEP_GRID_KEYS = {"pretrain.steps": "world", "soft_labels.beta_r": "smollm2"}
# training.shapo.mask=subspace:top|bottom|random: the mask the sweep's subspace stage makes for the
# cell's starting model (pipeline_subspace); any other value is a directory or `uniform`
SUBSPACE_MASK = "subspace:"
SUBSPACE_SELECTIONS = ("top", "bottom", "random")
DEFAULT_RUNNER = "robalign.experiments.pipeline"
ID_HEX = 12  # 48 bits: a collision among 10^4 cells has probability ~2e-7


@dataclass
class WorldSection:
    dir: str | None = None  # an existing world directory; None = build one in OUT/world
    overrides: list[str] = field(default_factory=list)  # world build key=value


@dataclass
class PretrainSection:  # world lane only
    size: str = "nano"  # tiny model size (robalign.models.tiny.SIZES)
    cooldown: int = 200  # steps of linear LR decay branched off the trunk at each saved duration
    threads: int = 1  # torch threads (1 is ~4x faster than 2 on a busy 2-core machine)
    overrides: list[str] = field(default_factory=list)  # robalign pretrain key=value


@dataclass
class TrainSection:
    config: str = "configs/train/dpo_tiny.yaml"  # base train config of every cell: a file, or a shipped name
    overrides: list[str] = field(default_factory=list)  # dotted TrainConfig overrides for every cell


@dataclass
class ClearBiasSection:
    judges: list[str] = field(default_factory=lambda: ["rule"])  # rule, llm (the world's trained judge) ...
    samples: int = 1  # answers per prompt
    temperature: float = 0.0
    max_new_tokens: int = 48
    attacks: list[str] | None = None  # None = every attack the world has
    judge_steps: int = 800  # world lane: optimizer steps of the tiny `llm` judge (robalign judge-train --tiny)


@dataclass
class HarmfulSection:
    judge: str = "rule"
    max_new_tokens: int = 48


@dataclass
class PairwiseSection:
    judge: str | None = None  # an llm judge spec (llm:openai:M@URL ...); None = no pairwise stage
    pairs: int = 64  # the world's held-out pairs, in file order: the model's answer against their chosen one
    max_new_tokens: int = 48


@dataclass
class BenchSection:
    clear_bias: ClearBiasSection = field(default_factory=ClearBiasSection)
    harmful: HarmfulSection = field(default_factory=HarmfulSection)
    pairwise: PairwiseSection = field(default_factory=PairwiseSection)


@dataclass
class SftSection:
    """The SFT stage (pipeline_sft): the cell's starting model trained with the ``sft`` loss on the
    chosen responses of the lane's training pairs, once per (base model, data, these settings); the
    preference stage starts from it and uses it as its reference model."""

    enabled: bool = False
    steps: int | None = None  # optimizer steps; None = as the base train config says (max_steps, else num_epochs)
    seed: int = 0  # the SFT run's training.seed: one SFT model for every seed of the grid
    # False: the chosen responses as the data has them (the official ShaPO SFT command sets no noise), one
    # SFT model for every noise level; True: as the cell's label noise leaves them (one per rate and seed)
    noisy: bool = False
    overrides: list[str] = field(default_factory=list)  # dotted train overrides of the SFT run alone


@dataclass
class SubspaceSection:
    """ShaPO's probe and masks (pipeline_subspace), made for every cell whose
    ``training.shapo.mask`` is ``subspace:top``, ``subspace:bottom`` or ``subspace:random``."""

    fraction: float = 0.01  # K = fraction * layers * d_ff neurons (official recipe: 1 %)
    probe_pairs: int = 512  # seeded sample of the lane's training pairs the probe reads (harmless requests left out)
    estimator: str = "lbfgs"  # lbfgs | adam (robalign probe --estimator): the head whose vector ranks the neurons
    # more estimators fitted on the same features for the report's probe curves alone (Figure 6 needs adam's
    # epochs); the mask stays the one of `estimator`, so adding them to a stored sweep keeps its cells
    curves: list[str] = field(default_factory=list)
    max_length: int = 256  # tokens per probe text (long texts keep their end)
    seed: int = 0  # the probe's pair sample and prompt split; random masks use the cell's seed


@dataclass
class SoftLabelsSection:  # smollm2 lane
    beta_r: float = 1.0  # q = sigmoid(beta_r * dr / std(dr)); a grid axis as soft_labels.beta_r


# sections added after sweeps were first stored: left out of to_dict() at their defaults, so a stored
# sweep that predates them still compares equal
LATER_SECTIONS = {"sft": SftSection, "subspace": SubspaceSection, "soft_labels": SoftLabelsSection}


@dataclass
class ExecutorSection:
    kind: str = "local"  # local (in this process, one cell at a time) | ray
    workers: int = 1  # ray: cells at once on a local instance (its num_cpus = workers * cpus_per_cell)
    cpus_per_cell: float = 1.0
    gpus_per_cell: float = 0.0


@dataclass
class SweepConfig:
    name: str = ""  # the sweep's key in the store; empty = the file's stem
    lane: str = "world"  # world | smollm2
    out: str | None = None  # cell dirs OUT/cells/<id>/; None = runs/sweeps/<name>
    world: WorldSection = field(default_factory=WorldSection)
    pretrain: PretrainSection = field(default_factory=PretrainSection)
    train: TrainSection = field(default_factory=TrainSection)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> dotted train overrides
    grid: dict[str, Any] = field(default_factory=dict)  # dotted key -> list of values (cartesian product)
    skip: list[str] = field(default_factory=list)  # rules like "method=none and data.noise_rate>0"
    bench: BenchSection = field(default_factory=BenchSection)
    executor: ExecutorSection = field(default_factory=ExecutorSection)
    sft: SftSection = field(default_factory=SftSection)
    subspace: SubspaceSection = field(default_factory=SubspaceSection)
    soft_labels: SoftLabelsSection = field(default_factory=SoftLabelsSection)
    store: str | None = None  # SQLAlchemy URL; None = sqlite:///OUT/results.sqlite
    source: ClassVar[str] = "<defaults>"  # the file it came from: set per instance, not a YAML key or stored

    @property
    def out_dir(self) -> Path:
        return Path(self.out or f"runs/sweeps/{self.name}")

    def to_dict(self) -> dict:
        """What the store keeps, and compares on a re-run (LATER_SECTIONS only when not at defaults)."""
        data = dataclasses.asdict(self)
        for key, section in LATER_SECTIONS.items():
            if data[key] == dataclasses.asdict(section()):
                del data[key]
        return data


@dataclass(frozen=True)
class Cell:
    id: str
    params: dict  # dotted key -> value; always method and seed
    label: str  # "method=dpo noise_rate=0.2 steps=300 seed=0"


# --------------------------------------------------------------------------------------------
# Loading and checking
# --------------------------------------------------------------------------------------------


def train_fields() -> dict[str, Any]:
    """TrainConfig's dotted leaf fields -> their type (``data.noise_rate`` -> float)."""
    import typing

    def walk(cls: type, prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, tp in typing.get_type_hints(cls).items():
            out |= walk(tp, f"{prefix}{name}.") if dataclasses.is_dataclass(tp) else {f"{prefix}{name}": tp}
        return out

    return walk(TrainConfig, "")


def _train_key(key: str, fields: dict[str, Any]) -> bool:
    """A leaf field, or an entry of a dict field (``loss.losses.sft``)."""
    return key in fields or any(key.startswith(f + ".") and "dict" in str(tp) for f, tp in fields.items())


def _flatten(mapping: dict, fields: dict[str, Any], prefix: str = "") -> dict:
    """Nested override mappings -> dotted keys, stopping at TrainConfig leaves (a dict-valued
    field such as ``loss.losses`` stays whole). Dotted CLI overrides arrive nested."""
    out: dict = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in fields:
            out |= _flatten(value, fields, dotted + ".")
        else:
            out[dotted] = value
    return out


def _resolve(value: str | Path, kind: str) -> Path:
    """A file, else the shipped ``configs/<kind>/<value>.yaml`` (robalign.shipped_configs)."""
    try:
        return resolve_config(value, kind)
    except ConfigError:
        raise
    except UserError as exc:
        raise ConfigError(str(exc)) from None


def _as_override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"  # JSON is YAML flow syntax: strings stay strings, null stays None


def is_sweep_config(data: object) -> bool:
    """Whether parsed YAML is a sweep config (``robalign validate`` tells config kinds apart by keys)."""
    return isinstance(data, dict) and any(key in data for key in ("grid", "methods", "skip", "lane"))


def load_sweep_config(path_or_name: str | Path, overrides: list[str] | None = None) -> SweepConfig:
    """A sweep from a YAML file, or a shipped ``configs/sweep/NAME.yaml``, plus dotted overrides
    (grid lists as YAML: ``grid.seed=[0,1]``); checked, with errors naming the file and key."""
    path = _resolve(path_or_name, "sweep")
    sweep = load_config(SweepConfig, path, overrides)
    sweep.source = str(path)
    sweep.name = sweep.name or path.stem
    fields = train_fields()
    sweep.grid = {k: v if isinstance(v, list) else [v] for k, v in _flatten(sweep.grid, fields).items()}
    sweep.methods = {name: _flatten(o or {}, fields) for name, o in sweep.methods.items()}
    validate_sweep(sweep)
    return sweep


def validate_sweep(sweep: SweepConfig) -> None:
    """Semantic checks: lane, executor, methods, grid keys and values, skip rules, the train config."""
    def fail(key: str, problem: str) -> None:
        raise ConfigError(f"{sweep.source}: {key}: {problem}")

    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", sweep.name):
        fail("name", f"'{sweep.name}' must be letters, digits, '_', '-' or '.' (it names the sweep in the store)")
    if sweep.lane not in LANES:
        fail("lane", f"'{sweep.lane}' is not one of {', '.join(LANES)}")
    if sweep.executor.kind not in EXECUTORS:
        fail("executor.kind", f"'{sweep.executor.kind}' is not one of {', '.join(EXECUTORS)}")
    if sweep.executor.workers < 1 or sweep.executor.cpus_per_cell <= 0 or sweep.executor.gpus_per_cell < 0:
        fail("executor", "workers must be >= 1, cpus_per_cell > 0 and gpus_per_cell >= 0")
    if sweep.lane == "world":
        from robalign.models.tiny import SIZES

        if sweep.pretrain.size not in SIZES:
            fail("pretrain.size", f"'{sweep.pretrain.size}' is not one of {', '.join(SIZES)}")
    if NONE_METHOD in sweep.methods:
        fail(f"methods.{NONE_METHOD}", "'none' is reserved for the un-aligned model (no training); "
             "use it in grid.method without defining it, and give your method another name")
    if sweep.sft.enabled and SFT_METHOD in sweep.methods:
        fail(f"methods.{SFT_METHOD}", "'sft' is reserved while sft.enabled is true (the SFT stage's model, no "
             "preference stage); use it in grid.method without defining it, and give your method another name")
    fields = train_fields()
    for name, method in sweep.methods.items():
        for key in method:
            if not _train_key(key, fields):
                fail(f"methods.{name}.{key}", f"not a train config key.{_suggest(key, fields)}")
    allowed = {*CELL_KEYS, *(k for k, lane in SWEEP_GRID_KEYS.items() if lane == sweep.lane)}
    for key, values in sweep.grid.items():
        if key not in allowed and not _train_key(key, fields):
            where = {"pretrain.steps": " (pretrain.steps is world-lane only; smollm2's duration is training.max_steps)",
                     "soft_labels.beta_r": " (soft_labels.beta_r is smollm2-lane only: the world lane's pairs "
                                           "carry no soft labels)"}.get(key, "")
            fail(f"grid.{key}", f"not a grid key{where}.{_suggest(key, [*allowed, *fields])} Grid keys: "
                 "method, seed, pretrain.steps (world lane), soft_labels.beta_r (smollm2 lane) and any dotted "
                 "train config key")
        if not values:
            fail(f"grid.{key}", "the list is empty (every cell needs a value)")
    for method in sweep.grid.get("method", []):
        if method == SFT_METHOD and sweep.sft.enabled:
            continue
        if method != NONE_METHOD and method not in sweep.methods:
            hint = " or turn the SFT stage on (sft: {enabled: true})" if method == SFT_METHOD else ""
            fail("grid.method", f"unknown method '{method}'.{_suggest(str(method), sweep.methods)} "
                 f"Define it under methods:{hint} (known: {', '.join(sweep.methods) or 'none'}; 'none' = no "
                 "training)")
    _validate_stages(sweep, fail)
    if "method" not in sweep.grid and not sweep.methods:
        fail("methods", "no methods and no grid.method: name at least one method (e.g. dpo: {})")
    for i, rule in enumerate(sweep.skip):
        parse_skip(rule, f"{sweep.source}: skip[{i}]", set(_grid(sweep)))
    try:
        base = load_config(TrainConfig, _resolve(sweep.train.config, "train"), sweep.train.overrides)
        validate_train_config(base)
    except ConfigError as exc:
        fail("train", str(exc))
    for key in ("pretrain.steps", "seed"):
        for value in sweep.grid.get(key, []):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                fail(f"grid.{key}", f"values must be whole numbers >= 0, got {value!r}")
    for value in sweep.grid.get("soft_labels.beta_r", []):
        if not _positive(value):
            fail("grid.soft_labels.beta_r", f"values must be finite numbers > 0, got {value!r}")
    cells = expand(sweep)  # coerces every value to its field type, evaluates every skip rule
    if not cells:
        fail("skip", "the rules drop every cell of the grid")
    for cell in cells:
        _validate_cell(sweep, cell, fail)


def _validate_cell(sweep: SweepConfig, cell: Cell, fail: Callable[[str, str], None]) -> None:
    """The cell's train config, its label noise on the smollm2 lane, and a ``subspace:`` mask."""
    try:
        config = cell_train_config(sweep, cell)
        validate_train_config(config)
    except ConfigError as exc:
        fail("grid", f"cell {cell.label}: {exc}")
    trains = cell.params["method"] != NONE_METHOD and not (sweep.sft.enabled and cell.params["method"] == SFT_METHOD)
    d = config.data
    if trains and sweep.lane == "smollm2" and "soft" not in config.loss.losses and d.noise_rate > 0 \
            and d.noise_mode != "flip":  # the soft-label files carry that noise in q, which only `soft` reads
        fail("grid", f"cell {cell.label}: data.noise_mode={d.noise_mode} acts on the soft labels q, which loss "
             f"{', '.join(config.loss.losses)} never reads, so the cell would train on clean pairs; use "
             "data.noise_mode=flip for it (e.g. in the method's overrides)")
    selection = subspace_selection(config)
    if selection is not None and selection not in SUBSPACE_SELECTIONS:
        fail("grid", f"cell {cell.label}: training.shapo.mask={config.training.shapo.mask}: the sweep's subspace "
             f"stage makes {', '.join(SUBSPACE_MASK + s for s in SUBSPACE_SELECTIONS)} (or give a mask "
             "directory, or uniform)")


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf


def _validate_stages(sweep: SweepConfig, fail: Callable[[str, str], None]) -> None:
    """The SFT, subspace and soft-label sections (their values; the runs are checked when they start)."""
    if sweep.sft.steps is not None and sweep.sft.steps < 1:
        fail("sft.steps", f"must be >= 1 or null (as the train config says), got {sweep.sft.steps}")
    if sweep.sft.enabled:
        try:
            load_config(TrainConfig, _resolve(sweep.train.config, "train"), [*sweep.train.overrides,
                                                                             *sweep.sft.overrides])
        except ConfigError as exc:
            fail("sft.overrides", str(exc))
    if not 0 < sweep.subspace.fraction <= 1:
        fail("subspace.fraction", f"must lie in (0, 1], got {sweep.subspace.fraction} (the official recipe: 0.01)")
    if sweep.subspace.probe_pairs < 2 or sweep.subspace.max_length < 8:
        fail("subspace", "probe_pairs must be >= 2 and max_length >= 8")
    from robalign.training.probe import ESTIMATORS

    if sweep.subspace.estimator not in ESTIMATORS:
        fail("subspace.estimator", f"must be one of {', '.join(ESTIMATORS)}, got {sweep.subspace.estimator!r}")
    extra = [e for e in sweep.subspace.curves if e not in ESTIMATORS or e == sweep.subspace.estimator]
    if extra:
        fail("subspace.curves", f"{extra}: list estimators other than subspace.estimator "
                                f"({sweep.subspace.estimator}) from {', '.join(ESTIMATORS)}, e.g. [adam]")
    if not _positive(sweep.soft_labels.beta_r):
        fail("soft_labels.beta_r", f"must be a finite number > 0, got {sweep.soft_labels.beta_r}")


def subspace_selection(config: TrainConfig) -> str | None:
    """``top`` for a ShaPO config whose mask is ``subspace:top``; None for a directory, uniform, or no ShaPO."""
    mask = config.training.shapo.mask
    if not config.training.shapo.enabled or not mask.startswith(SUBSPACE_MASK):
        return None
    return mask[len(SUBSPACE_MASK):]


def _suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


# --------------------------------------------------------------------------------------------
# Skip rules: "KEY OP VALUE [and|or KEY OP VALUE ...]", values read as YAML scalars (no eval)
# --------------------------------------------------------------------------------------------

# a value is one word, number or quoted string: "method = none and" is an error, not the value "none and"
_COMPARISON = re.compile(r"""^\s*([A-Za-z_][\w.]*)\s*(==|!=|<=|>=|=|<|>)\s*("[^"]*"|'[^']*'|[^\s"']+)\s*$""")
_OPS: dict[str, Callable[[Any, Any], bool]] = {"=": operator.eq, "==": operator.eq, "!=": operator.ne,
                                               "<": operator.lt, "<=": operator.le, ">": operator.gt,
                                               ">=": operator.ge}


@dataclass(frozen=True)
class SkipRule:
    text: str
    any_of: tuple[tuple[tuple[str, str, Any], ...], ...]  # or over ands of (key, op, value)

    def matches(self, params: dict) -> bool:
        try:
            return any(all(_OPS[op](params.get(key), value) for key, op, value in clauses) for clauses in self.any_of)
        except TypeError:
            raise UserError(f"skip rule '{self.text}' compares values of different kinds in cell {params} "
                            "(e.g. a number with a word, or null with <)") from None


def parse_skip(text: str, where: str, keys: set[str]) -> SkipRule:
    """``method=none and data.noise_rate>0`` -> a SkipRule; ``and`` binds tighter than ``or``."""
    any_of = []
    for alternative in re.split(r"\s+or\s+", str(text).strip()):
        clauses = []
        for part in re.split(r"\s+and\s+", alternative):
            m = _COMPARISON.match(part)
            if not m:
                raise ConfigError(f"{where}: cannot read '{part}' in '{text}': write KEY OP VALUE joined by and/or, "
                                  "OP one of = != < <= > >=, VALUE one word, number or quoted string "
                                  "(e.g. method=none and data.noise_rate>0)")
            key, op, raw = m.groups()
            if key not in keys:
                raise ConfigError(f"{where}: '{key}' is not a grid key.{_suggest(key, keys)} Grid keys: "
                                  f"{', '.join(sorted(keys))}")
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                raise ConfigError(f"{where}: '{raw}' in '{text}' is not a value (a number, a word, true/false, "
                                  "null)") from None
            clauses.append((key, op, value))
        any_of.append(tuple(clauses))
    return SkipRule(str(text), tuple(any_of))


# --------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------


def _grid(sweep: SweepConfig) -> dict[str, list]:
    """The grid with method and seed filled in: every method (never none) and seed 0 unless given."""
    grid = dict(sweep.grid) if "method" in sweep.grid else {"method": list(sweep.methods), **sweep.grid}
    grid.setdefault("seed", [0])
    return grid


def _coerce(key: str, value: Any) -> Any:
    """A train-config grid value as the field's type (``0`` -> ``0.0`` for a float field)."""
    if key == "soft_labels.beta_r" and _positive(value):
        return float(value)
    if key in (*CELL_KEYS, *SWEEP_GRID_KEYS):
        return value
    config = load_config(TrainConfig, None, [_as_override(key, value)])
    node: Any = config
    for part in key.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node


# a sweep re-run with other values in these keys keeps its done cells: they choose which cells run and
# where, not what a cell computes (its id is the sweep name and its own parameters)
EXTENDABLE = ("grid", "skip", "executor", "subspace.curves")


def cell_id(sweep_name: str, params: dict) -> str:
    blob = json.dumps({"sweep": sweep_name, "params": params}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:ID_HEX]


def expand(sweep: SweepConfig) -> list[Cell]:
    """Every cell of the grid (cartesian product in the YAML's key order) that no skip rule drops."""
    grid = _grid(sweep)
    try:
        values = {k: [_coerce(k, v) for v in vs] for k, vs in grid.items()}
    except ConfigError as exc:
        raise ConfigError(f"{sweep.source}: grid: {exc}".replace("<defaults>: ", "")) from None
    for key, vs in values.items():
        if len({json.dumps(v, sort_keys=True) for v in vs}) < len(vs):
            raise ConfigError(f"{sweep.source}: grid.{key}: a value is listed twice ({vs}); each value once")
    rules = [parse_skip(rule, f"{sweep.source}: skip[{i}]", set(grid)) for i, rule in enumerate(sweep.skip)]
    order = ["method", *[k for k in grid if k not in CELL_KEYS], "seed"]  # label order: method first, seed last
    short = {k: k.rsplit(".", 1)[-1] for k in order}
    short = {k: s if list(short.values()).count(s) == 1 else k for k, s in short.items()}
    cells = []
    for combo in itertools.product(*values.values()):
        params = dict(zip(values, combo))
        if any(rule.matches(params) for rule in rules):
            continue
        label = " ".join(f"{short[k]}={params[k]}" for k in order)
        cells.append(Cell(cell_id(sweep.name, params), params, label))
    return cells


def cell_train_config(sweep: SweepConfig, cell: Cell) -> TrainConfig:
    """The cell's TrainConfig: the base file, train.overrides, the method's overrides, then the
    cell's train-config grid values. method, seed and SWEEP_GRID_KEYS are the runner's to apply."""
    method = sweep.methods.get(cell.params["method"], {})
    grid = [_as_override(k, v) for k, v in cell.params.items() if k not in (*CELL_KEYS, *SWEEP_GRID_KEYS)]
    return load_config(TrainConfig, _resolve(sweep.train.config, "train"), [*sweep.train.overrides, *(_as_override(k, v) for k, v in method.items()),
                                           *grid])


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def default_store_url(sweep: SweepConfig) -> str:
    return sweep.store or f"sqlite:///{(sweep.out_dir / 'results.sqlite').resolve()}"


def display_url(url: str) -> str:
    """The store URL as logs and sweep.json show it: user info and query of a server URL hidden
    (redact_url would also turn sqlite:////abs/path into sqlite://abs/path)."""
    from robalign.evaluation.specs import redact_url

    return url if url.startswith("sqlite:") else redact_url(url)


def run_sweep(sweep: SweepConfig, executor: str | None = None, store_url: str | None = None, restart: bool = False,
              dry_run: bool = False, log: Callable[[str], None] = print, runner: Any = None) -> dict:
    """Run every cell of ``sweep`` not yet done in the store; return the summary (also OUT/sweep.json).

    ``runner``: a module path, a module, or an object with ``prepare`` and ``run_cell``
    (default ``robalign.experiments.pipeline``); the ray executor needs an importable module."""
    executor = executor or sweep.executor.kind
    if executor not in EXECUTORS:
        raise UserError(f"executor '{executor}' is not one of {', '.join(EXECUTORS)}")
    url = store_url or default_store_url(sweep)
    cells = expand(sweep)
    if dry_run:
        return _dry_run(sweep, cells, url)
    from robalign.evaluation.specs import redact_value
    from robalign.experiments.executors import driver_lock, module_path, require_ray, run_local, run_ray
    from robalign.experiments.store import Store
    from robalign.provenance import run_record, write_json_atomic

    module = _resolve_runner(runner)
    if executor == "ray":  # fail before touching the store
        require_ray()
        ray_runner = module_path(runner if runner is not None else module)
    start = time.perf_counter()
    out = sweep.out_dir
    out.mkdir(parents=True, exist_ok=True)
    with driver_lock(out):
        store = Store(url)
        if restart:
            store.delete_sweep(sweep.name)
            shutil.rmtree(out / "cells", ignore_errors=True)
        store.add_sweep(sweep.name, sweep.to_dict(), run_record(redact=redact_value, source=sweep.source),
                        extendable=EXTENDABLE)
        status = store.status(sweep.name)
        already = [c for c in cells if status.get(c.id) == "done"]
        pending = [c for c in cells if status.get(c.id) != "done"]
        log(f"sweep {sweep.name}: {len(cells)} cells, {len(already)} done, {len(pending)} to run "
            f"({executor}, store {display_url(url)})")
        if executor == "local" and sweep.executor.workers > 1:
            log("executor.workers > 1 takes effect with --executor ray; local runs one cell at a time")
        module.prepare(sweep, log)
        from robalign.experiments.curves import refresh_probe_curves

        refreshed = refresh_probe_curves(store, sweep.name)  # probes that gained subspace.curves in prepare
        if refreshed:
            log(f"sweep {sweep.name}: probe curves added to {len(refreshed)} done cells")
        # the lock makes this driver the only one of this host and OUT, so cells left running under
        # this name belong to a driver that died: claim() hands them back to us
        worker = f"{socket.gethostname()}:{out.resolve()}"
        if executor == "ray":
            outcome = run_ray(sweep, pending, url, worker, ray_runner)
        else:
            outcome = run_local(sweep, pending, store, worker, module, log)
    summary = {
        "sweep": sweep.name, "store": display_url(url), "executor": executor, "cells": len(cells),
        "skipped_by_rules": math.prod(len(v) for v in _grid(sweep).values()) - len(cells),
        "done": sorted(c.id for c in pending if outcome.get(c.id) == "done"),
        "already_done": len(already),
        "failed": {c.id: c.label for c in pending if outcome.get(c.id) == "failed"},
        "busy": {c.id: c.label for c in pending if outcome.get(c.id) == "busy"},  # running in another driver
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json_atomic(out / "sweep.json", summary)
    log(f"sweep {sweep.name}: {len(summary['done'])} run, {len(already)} already done, "
        f"{len(summary['failed'])} failed, {len(summary['busy'])} running elsewhere, {summary['seconds']:.1f} s")
    return summary


def _dry_run(sweep: SweepConfig, cells: list[Cell], url: str) -> dict:
    """Cells with their status, without creating anything (a missing SQLite file: all pending)."""
    status: dict[str, str] = {}
    sqlite_file = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
    if sqlite_file is None or Path(sqlite_file).is_file():
        from robalign.experiments.store import Store

        status = Store(url).status(sweep.name)
    rows = [{"id": c.id, "label": c.label, "status": status.get(c.id, "pending")} for c in cells]
    return {"sweep": sweep.name, "cells": rows}


def _resolve_runner(runner: Any) -> Any:
    if runner is None or isinstance(runner, str):
        name = runner or DEFAULT_RUNNER
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            raise UserError(f"runner module '{name}' cannot be imported ({exc})") from None
    if not (callable(getattr(runner, "prepare", None)) and callable(getattr(runner, "run_cell", None))):
        raise UserError(f"runner {runner!r} needs prepare(sweep, log) and run_cell(sweep, cell, cell_dir, log)")
    return runner
