"""The shared stages of a sweep's world: the world directory and its pre-trained checkpoints.

``ensure_world`` builds the synthetic world (``robalign world build``) where the sweep names it,
once. A world found there is used as it is when the sweep points at an existing directory
(``world.dir``) without overrides; otherwise its recorded config must equal the one the sweep's
``world.overrides`` give, so that a sweep never benchmarks a world it did not ask for.

``ensure_checkpoints`` pre-trains the world's tiny model (``robalign pretrain``) so that a
checkpoint exists at every ``pretrain.steps`` of the grid: one run up to the largest, saving
every gcd of them (with a cooldown, each saved checkpoint is its own decayed branch off one
constant-LR trunk, so the durations lie on one axis). It always asks pretrain to resume: an
interrupted run continues from its last checkpoint, a finished one does nothing, and a run
killed before its first checkpoint starts afresh. A grid step below the world's last checkpoint
that was never saved cannot be made without pre-training again from scratch, so it is an error
that names the steps the world has.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robalign.config import parse_overrides
from robalign.errors import UserError


def world_dir(sweep) -> Path:
    """``world.dir``, or ``OUT/world``; absolute, so Ray workers and subprocesses agree."""
    return Path(sweep.world.dir or sweep.out_dir / "world").resolve()


def world_record(world: Path) -> dict[str, Any]:
    return json.loads((world / "world.json").read_text(encoding="utf-8"))


def ensure_world(sweep, log: Callable[[str], None] = print) -> Path:
    """Build the sweep's world unless it is there; check a found one against the sweep."""
    from robalign.world.config import load_world_config, resolved

    world = world_dir(sweep)
    wanted = _canonical(resolved(load_world_config(None, sweep.world.overrides)))
    if (world / "world.json").is_file():
        record = world_record(world)
        if (sweep.world.overrides or not sweep.world.dir) and _canonical(record["config"]) != wanted:
            changed = sorted(k for k in set(wanted) | set(record["config"])
                             if wanted.get(k) != _canonical(record["config"]).get(k))
            raise UserError(f"{world} holds a world built with another config (differs in: {', '.join(changed)}) "
                            f"than sweep {sweep.name}'s world.overrides {sweep.world.overrides}. Point world.dir "
                            "at another directory, or delete this one to rebuild it")
        return world
    from robalign.world.build import build_world

    summary = build_world(load_world_config(None, sweep.world.overrides), world)
    log(f"world {world}: built in {summary.seconds:.1f} s ({summary.files.get('pairs/train.jsonl', 0)} training "
        f"pairs, {summary.files.get('corpus/train.jsonl', 0)} corpus rows)")
    return world


def _canonical(config: dict) -> dict:
    return json.loads(json.dumps(config, sort_keys=True))


def grid_steps(sweep) -> list[int]:
    return sorted({int(s) for s in sweep.grid.get("pretrain.steps", [])})


def pretrain_config(sweep, world: Path, steps: int, save_every: int):
    """``PretrainConfig`` from the sweep's ``pretrain:`` section and its ``overrides``."""
    from robalign.training.pretrain import PretrainConfig

    known = {f.name for f in dataclasses.fields(PretrainConfig)} - {"world", "steps", "save_every"}
    extra = dict(parse_overrides(sweep.pretrain.overrides))
    unknown = sorted(set(extra) - known)
    if unknown:
        raise UserError(f"{sweep.source}: pretrain.overrides: unknown key(s) {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(known))}")
    settings = {"size": sweep.pretrain.size, "cooldown": sweep.pretrain.cooldown, "threads": sweep.pretrain.threads}
    return PretrainConfig(world=str(world), steps=steps, save_every=save_every, **(settings | extra))


def ensure_checkpoints(sweep, world: Path, log: Callable[[str], None] = print) -> dict[int, dict]:
    """A checkpoint at every grid ``pretrain.steps`` (module doc); returns step -> its world.json record."""
    steps = grid_steps(sweep)
    have = {c["steps"]: c for c in world_record(world)["checkpoints"]}
    if not steps:
        if not have:
            raise UserError(f"{sweep.source}: the world lane needs grid.pretrain.steps (pre-training durations), "
                            f"and {world} has no checkpoints yet")
        return have
    missing = [s for s in steps if s not in have]
    if missing:
        last = max(have, default=0)
        below = [s for s in missing if s < last]
        if below:
            raise UserError(f"{world} has checkpoints at steps {sorted(have)}; grid.pretrain.steps {below} lie below "
                            f"its last one ({last}) and were not saved. Use steps the world has or larger ones, or a "
                            "new world directory (world.dir) to pre-train from scratch")
        save_every = math.gcd(*missing)  # pretrain saves where step % save_every == 0, resumed or not
        from robalign.training.pretrain import pretrain

        cfg = pretrain_config(sweep, world, max(steps), save_every)
        log(f"pretrain {world}: {cfg.size} to step {cfg.steps}, a checkpoint every {save_every} steps"
            f"{f' (each with a {cfg.cooldown}-step cooldown)' if cfg.cooldown else ''}"
            f"{f', resuming from step {last}' if have else ''}")
        pretrain(cfg, resume=True)
        have = {c["steps"]: c for c in world_record(world)["checkpoints"]}
        still = [s for s in steps if s not in have]
        if still:
            raise UserError(f"pre-training {world} left no checkpoint at steps {still} (it has {sorted(have)}); "
                            "use steps that are multiples of the saving interval")
    return {s: have[s] for s in steps}


def checkpoint(world: Path, steps: int | None) -> tuple[Path, dict]:
    """The checkpoint directory at ``steps`` (None = the world's last) and its world.json record."""
    have = {c["steps"]: c for c in world_record(world)["checkpoints"]}
    if not have:
        raise UserError(f"{world} has no pre-trained checkpoint; run the sweep's prepare stage (robalign sweep) first")
    steps = max(have) if steps is None else int(steps)
    if steps not in have:
        raise UserError(f"{world} has no checkpoint at step {steps} (it has {sorted(have)}); run the sweep again so "
                        "that its prepare stage pre-trains it")
    return world / have[steps]["path"], have[steps]


# ---------------------------------------------------------------------------- the world's LLM judge

WORLD_JUDGE = "llm"  # the judge spec that names the sweep's own trained judge (OUT/judge/run/model)
# smollm2 lane: (shipped training config, judge examples), the issue-10 LoRA judge (384 examples x 3
# epochs, ~16 min). The world lane trains `judge-train --tiny` on a default world of its own, OUT/judge/world
# (from scratch on its 1,920 judge examples, ~70 s for 800 steps on one core; kappa 0.92 on held-out
# examples, docs/world.md).
JUDGE_RECIPES = {"smollm2": ("judge/smollm2_lora", 384)}


def judge_dir(sweep) -> Path:
    """OUT/judge: data/ (the judge pairs) and run/ (the training run; the judge is run/model)."""
    return (sweep.out_dir / "judge").resolve()


def resolve_judge(sweep, spec: str) -> str:
    """``llm`` -> the spec of the sweep's trained judge; any other spec as it is."""
    from robalign.world.judge import judge_spec

    return judge_spec(judge_dir(sweep) / "run" / "model") if spec == WORLD_JUDGE else spec


def ensure_judge(sweep, world: Path, base: Path | None, log: Callable[[str], None] = print) -> Path:
    """Train the LLM judge on the world's judge examples unless it is there. World lane: the tiny
    judge from scratch (``robalign judge-train --tiny``); smollm2 lane: ``robalign judge-train``'s
    recipe, SmolLM2 with LoRA (the bias-compact request as the prompt, the right verdict as chosen;
    ``base`` replaces its model when given). The CLEAR-Bias control set plays no part."""
    import time

    from robalign.config import TrainConfig, load_config, validate_train_config
    from robalign.shipped_configs import resolve_config
    from robalign.training.trainer import train
    from robalign.world.judge import CARD, write_judge_card, write_judge_data

    out = judge_dir(sweep)
    run = out / "run"
    if (run / "model" / CARD).is_file():
        return run / "model"
    if sweep.lane == "world":
        from robalign.world.build import build_world
        from robalign.world.config import load_world_config
        from robalign.world.tiny_judge import TinyJudgeConfig, train_tiny_judge

        # the judge learns from a default-size world (1,920 examples, every attack) whatever the sweep's
        # world: on demo_quick's 40-prompt world the same 800 steps gave 0.68 held-out accuracy
        source = out / "world"
        if not (source / "world.json").is_file():
            build_world(load_world_config(None, []), source)
        log(f"judge {run}: training a tiny judge from scratch on {source}'s judge examples "
            f"({sweep.bench.clear_bias.judge_steps} steps)")
        result = train_tiny_judge(TinyJudgeConfig(world=str(source), out=str(run),
                                                  steps=sweep.bench.clear_bias.judge_steps,
                                                  threads=sweep.pretrain.threads))
        accuracy = (result.card.get("heldout_eval") or {}).get("accuracy")
        log(f"judge {result.model}: {result.card['steps']} steps in {result.card['train_seconds']:.0f} s"
            + (f", held-out accuracy {accuracy:.3f}" if accuracy is not None else ""))
        return result.model
    name, examples = JUDGE_RECIPES[sweep.lane]
    start = time.perf_counter()
    data = write_judge_data(world, out / "data", examples=examples, eval_examples=32, seed=0, control_set=None)
    config = load_config(TrainConfig, resolve_config(name, "judge"))
    config.output_dir, config.data.train, config.training.save_model = str(run), str(data.train), True
    config.data.eval = str(data.eval) if data.counts["eval"]["pairs"] else None
    config.cache_dir = config.cache_dir or str((sweep.out_dir / "cache").resolve())
    if base is not None:
        config.model.name_or_path = str(base)
    validate_train_config(config)
    log(f"judge {run}: training {config.model.name_or_path} on {data.counts['train']['pairs']} judge examples")
    result = train(config, overwrite=True)  # a run killed before its card is written starts over
    seconds = round(time.perf_counter() - start, 1)
    write_judge_card(run / "model", data, base_model=config.model.name_or_path, steps=result.steps,
                     train_seconds=seconds, eval_metrics=result.eval_metrics, losses=config.loss.losses)
    log(f"judge {run / 'model'}: {result.steps} steps in {seconds:.0f} s")
    return run / "model"
