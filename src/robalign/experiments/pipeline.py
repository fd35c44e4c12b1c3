"""What a sweep cell runs: align -> bench clear-bias -> bench harmful -> metrics and samples.

The sweep engine (``robalign.experiments.sweep``) calls ``prepare`` once before any cell and
``run_cell`` for each cell not yet done. This module is that pipeline, written top to bottom:

prepare    the world (``robalign world build``, ``world.overrides``) in ``world.dir`` or OUT/world;
           world lane: pre-training up to every grid ``pretrain.steps`` (pipeline_world);
           smollm2 lane: the reward models and soft-label files every cell trains on (pipeline_real);
           ``sft.enabled``: an SFT model per base model and data (pipeline_sft); masks for cells whose
           ``training.shapo.mask`` is ``subspace:top|bottom|random`` (pipeline_subspace);
           when the judges include ``llm``: the sweep's own LLM judge, trained on the world's judge
           examples into OUT/judge/run (world lane: from the longest checkpoint; smollm2: SmolLM2 LoRA).
           Idempotent: a second call finds everything and does nothing.
run_cell   1. align (skipped for method ``none``; method ``sft`` with an SFT stage stops at the SFT
              model): the sweep's base train config, the method's overrides and the cell's dotted
              grid keys (``sweep.cell_train_config``), then the model it starts from (the world
              checkpoint at the cell's ``pretrain.steps``, or the config's model such as SmolLM2; with
              an SFT stage the SFT model made from it, which is the reference model too) and the
              lane's data (the world's pairs; smollm2: their soft-labelled copy), a ``subspace:`` mask
              resolved to its directory, training.seed = the cell's seed -> ``train()`` into
              CELL/train. Then reward accuracy on the pairs the model was trained on, with the
              labels it was trained on (the noisy ones), beside the trainer's clean held-out accuracy.
           2. ``bench clear-bias`` on the world's CLEAR-Bias prompts, once per configured judge
              (the answers come from the response cache after the first), and Cohen's kappa
              between the first two judges on the same answers.
           3. ``bench harmful`` on the world's harmful and harmless requests.
           -> CellResult(metrics, samples, provenance); metric names in docs/experiments.md.

Re-running a cell reuses its finished stages: a complete training run with the same resolved
config is read back, an interrupted one resumes from its last checkpoint, and the benchmarks
take every answer from the sweep's response cache (OUT/cache/generations.sqlite, one per sweep,
keyed by the model's content, so a ``none`` cell at one duration and any cell that reproduces
a model cost nothing twice). Reference log-probs are cached per sequence in OUT/cache too, so
the cells of a noise sweep compute them once (``training/reference.py``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from robalign.bench.contract import clear_bias_metrics, interval
from robalign.experiments.pipeline_sft import is_sft_cell, start_model
from robalign.experiments.pipeline_world import (
    WORLD_JUDGE,
    checkpoint,
    ensure_checkpoints,
    ensure_judge,
    ensure_world,
    resolve_judge,
    world_dir,
    world_record,
)
from robalign.experiments.sweep import NONE_METHOD, cell_train_config, expand, subspace_selection

# Generation batch per lane: nano answers 64 prompts at once in ~0.1 s a token step on one core;
# SmolLM2 in bf16 weights (3-7x faster than fp32 on AMX CPUs) at 16 keeps ~1 GB of activations.
BENCH_OPTIONS = {"world": {"batch_size": 64}, "smollm2": {"batch_size": 16, "dtype": "bfloat16"}}
NOISY_EVAL_PAIRS = 256  # trained-on pairs scored for train/noisy/*: a Wilson half-width of <= 0.06
N_BOOT = 1000


class CellResult(NamedTuple):
    metrics: dict[str, Any]  # name -> float, or {"value", "low", "high", "n"}
    samples: list[dict[str, Any]]  # every judged answer (benchmark, prompt_id, ..., label, judge)
    provenance: dict[str, Any]


def prepare(sweep, log: Callable[[str], None] = print) -> None:
    """The stages every cell shares (module doc); does nothing when they are there. Torch runs
    with a cell's threads (pre-training with ``pretrain.threads``): torch's default of one
    thread a core ran a nano judge step in 3.4 s on a busy 2-core machine, one thread in 0.4-1 s."""
    world = ensure_world(sweep, log)
    trained = [c for c in expand(sweep) if c.params["method"] != NONE_METHOD]
    with torch_threads(max(1, int(sweep.executor.cpus_per_cell))):
        if sweep.lane == "world":
            ensure_checkpoints(sweep, world, log)
        else:
            from robalign.experiments.pipeline_real import ensure_soft_labels, soft_label_needs

            ensure_soft_labels(sweep, world, soft_label_needs(sweep, world, trained), log)
        for cell in trained:  # SFT models, then the masks of the models they start from: once each
            selection = None if is_sft_cell(sweep, cell) else subspace_selection(cell_train_config(sweep, cell))
            if not sweep.sft.enabled and selection is None:
                continue
            start = start_model(sweep, cell, world, log).model
            if selection is not None:
                from robalign.experiments.pipeline_subspace import ensure_mask

                ensure_mask(sweep, world, start, selection, int(cell.params["seed"]), log)
        if WORLD_JUDGE in sweep.bench.clear_bias.judges:
            ensure_judge(sweep, world, None, log)


def lane_base(sweep, cell, world: Path) -> str:
    """The lane's base model: the world checkpoint at the cell's duration, or the train config's model."""
    if sweep.lane == "world":
        return str(checkpoint(world, cell.params.get("pretrain.steps"))[0])
    return base_model_name(sweep, cell)


def run_cell(sweep, cell, cell_dir: str | Path, log: Callable[[str], None] = print) -> CellResult:
    """Align, benchmark and measure one cell in ``cell_dir`` (module doc)."""
    from robalign.evaluation.cache import ResponseCache

    cell_dir, world = Path(cell_dir).resolve(), world_dir(sweep)
    cache_root = sweep_cache(sweep)
    metrics: dict[str, Any] = {}
    provenance: dict[str, Any] = {"world": str(world), "world_fingerprint": world_record(world)["fingerprint"],
                                  "cell": {"id": cell.id, "label": cell.label, "params": cell.params}}
    with torch_threads(max(1, int(sweep.executor.cpus_per_cell))):
        if sweep.lane == "world":
            base, record = checkpoint(world, cell.params.get("pretrain.steps"))
            metrics |= {"pretrain/steps": record["steps"], "pretrain/heldout_loss": record.get("heldout_loss"),
                        "pretrain/tokens": record.get("tokens")}
            provenance["checkpoint"] = str(base)
        if cell.params["method"] == NONE_METHOD:
            model = lane_base(sweep, cell, world)
        else:
            start = start_model(sweep, cell, world, log)
            metrics |= start.metrics
            provenance |= start.provenance
            model = start.model
            if not is_sft_cell(sweep, cell):
                config = align_config(sweep, cell, start.model, world, cell_dir, cache_root, log)
                model, train_metrics, train_provenance = align(config, cell_dir, log)
                metrics |= train_metrics
                provenance |= train_provenance
        if sweep.lane == "smollm2":
            from robalign.experiments.pipeline_real import soft_label_metrics

            metrics |= soft_label_metrics(sweep, world, cell)
        with ResponseCache(cache_root / "generations.sqlite") as cache:
            bias_metrics, samples, bench_provenance = bench_clear_bias(sweep, cell, model, world, cell_dir, cache, log)
            if sweep.bench.pairwise.judge:
                pair_metrics, pair_provenance = bench_pairwise(sweep, model, world, cell_dir, cache)
                bias_metrics |= pair_metrics
                bench_provenance |= pair_provenance
        harm_metrics, harm_samples, harm_provenance = bench_harmful(sweep, cell, model, world, cell_dir, cache_root)
    provenance["model"] = model
    provenance["bench"] = bench_provenance | harm_provenance
    return CellResult(metrics | bias_metrics | harm_metrics, samples + harm_samples, provenance)


def sweep_cache(sweep) -> Path:
    """OUT/cache: the sweep's response cache and reference log-probs."""
    return (sweep.out_dir / "cache").resolve()


@contextmanager
def torch_threads(n: int):
    """``n`` intra-op threads for the cell (its executor.cpus_per_cell), restored after: on a busy
    2-core machine OpenMP workers spin for a core they do not get (docs/world.md, Threads)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------- 1. align


def base_model_name(sweep, cell) -> str:
    return cell_train_config(sweep, cell).model.name_or_path


def cell_config(sweep, cell):
    """``sweep.cell_train_config`` with the cell's seed as training.seed and, unless the sweep names
    data.noise_seed, as the noise seed too (a replicate draws its own noisy pairs)."""
    config = cell_train_config(sweep, cell)
    seed = int(cell.params["seed"])
    config.training.seed = seed
    named = {*cell.params, *sweep.methods.get(cell.params["method"], {}), *(o.split("=", 1)[0].strip()
                                                                             for o in sweep.train.overrides)}
    if "data.noise_seed" not in named:
        config.data.noise_seed = seed
    return config


def align_config(sweep, cell, start: str, world: Path, cell_dir: Path, cache_root: Path,
                 log: Callable[[str], None] = print):
    """The cell's resolved TrainConfig (module doc): the model it starts from (``start_model``), the
    lane's data, and a ``subspace:`` mask replaced by the directory the subspace stage made."""
    from robalign.config import validate_train_config
    from robalign.experiments.pipeline_real import cell_beta_r

    config = cell_config(sweep, cell)
    config.output_dir = str(cell_dir / "train")
    config.cache_dir = config.cache_dir or str(cache_root)
    config.training.save_model = True  # the benchmarks load CELL/train/model
    config.model.name_or_path = str(start)
    config.data.train, config.data.eval = lane_data(sweep, world, config, cell_beta_r(sweep, cell))
    selection = subspace_selection(config)
    if selection is not None:
        from robalign.experiments.pipeline_subspace import ensure_mask

        config.training.shapo.mask = str(ensure_mask(sweep, world, start, selection, int(cell.params["seed"]), log))
    validate_train_config(config)
    return config


def lane_data(sweep, world: Path, config, beta_r: float) -> tuple[str, str]:
    """(train, eval) files of a run: the world's pairs, or (smollm2 lane) the soft-label files its
    noise setting and β_r pick (losses other than soft read their pairs and ignore q)."""
    if sweep.lane == "world":
        return str(world / "pairs" / "train.jsonl"), str(world / "pairs" / "eval.jsonl")
    from robalign.experiments.pipeline_real import soft_label_files

    files = soft_label_files(sweep, world, config, beta_r)
    return str(files.train), str(files.eval)


def align(config, cell_dir: Path, log: Callable[[str], None]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Train (or reuse, or resume) the cell's model; returns its directory, metrics, provenance."""
    from robalign.config import dump_yaml, to_dict
    from robalign.training.checkpoint import checkpoint_dirs
    from robalign.training.trainer import train

    out = Path(config.output_dir)
    same = (out / "config.yaml").is_file() and (out / "config.yaml").read_text() == dump_yaml(config)
    info = _read_json(out / "run_info.json")
    stages = _read_json(cell_dir / "stages.json")
    if same and info.get("status") == "complete" and (out / "model" / "config.json").is_file() and "train" in stages:
        log(f"align: reusing the finished run in {out}")
        eval_metrics, seconds = info["eval_metrics"], stages["train"]["seconds"]
        noisy = stages["train"]["noisy"]
    else:
        resume = same and bool(checkpoint_dirs(out))
        log(f"align: {'resuming' if resume else 'training'} {out} from {config.model.name_or_path}")
        start = time.perf_counter()
        result = train(config, resume=resume, overwrite=not resume)
        eval_metrics = result.eval_metrics
        noisy = noisy_reward_accuracy(config, out / "model")
        seconds = round(time.perf_counter() - start, 2)
        info = _read_json(out / "run_info.json")
        _write_json(cell_dir / "stages.json", stages | {"train": {"seconds": seconds, "noisy": noisy}})
    n_eval = int(eval_metrics.get("eval/pairs", 0))
    metrics = {f"train/{k}": v for k, v in eval_metrics.items() if k != "eval/rewards/accuracies"}
    metrics["train/eval/rewards/accuracies"] = proportion(eval_metrics["eval/rewards/accuracies"], n_eval)
    metrics["train/noisy/rewards/accuracies"] = proportion(noisy["eval/rewards/accuracies"], int(noisy["eval/pairs"]))
    metrics |= {"train/noisy/rewards/margins": noisy["eval/rewards/margins"], "train/noisy/pairs": noisy["eval/pairs"],
                "train/seconds": seconds, "train/steps": info.get("total_steps")}
    provenance = {"train_config": to_dict(config), "train_run": str(out / "run_info.json"),
                  "flipped_pairs": len(info.get("flipped_ids") or []), "reference_cache": info.get("reference_cache"),
                  "noisy_eval": {k: v for k, v in noisy.items() if not k.startswith("eval/")}}
    return str(out / "model"), metrics, provenance


def noisy_reward_accuracy(config, model_dir: Path, max_pairs: int = NOISY_EVAL_PAIRS) -> dict[str, Any]:
    """The trainer's held-out metrics (``step.evaluate``), computed on the pairs the schedule
    trained on with the labels it trained on: flipped pairs as flipped, and under a ``soft``
    loss a pair whose soft label says q < 1/2 read the way its label points. A seeded sample of
    ``max_pairs`` of them; their reference log-probs are in the per-sequence cache already."""
    import random
    from dataclasses import replace

    from robalign.data.tokenize import collate_pairs
    from robalign.models.loading import load_causal_lm, load_tokenizer, model_fingerprint
    from robalign.training.reference import reference_logps
    from robalign.training.step import LossSettings, evaluate
    from robalign.training.trainer import prepare_data, step_indices

    t, m = config.training, config.model
    tokenizer = load_tokenizer(m.name_or_path, m.revision, m.trust_remote_code)
    train_pairs, _, _ = prepare_data(config, tokenizer)
    global_batch = t.per_device_batch_size * t.gradient_accumulation_steps
    n = len(train_pairs)
    steps_per_epoch = max(1, math.ceil(n / global_batch))
    total = t.max_steps or steps_per_epoch * t.num_epochs
    scheduled = sorted({i for s in range(total) for i in step_indices(n, global_batch, s, steps_per_epoch, t.seed)})
    picked = sorted(random.Random(t.seed).sample(scheduled, min(max_pairs, len(scheduled))))
    pairs = [train_pairs[i] for i in picked]
    if "soft" in config.loss.losses:  # the label is q: a pair with q < 1/2 prefers its `rejected` response
        pairs = [replace(p, chosen_ids=p.rejected_ids, rejected_ids=p.chosen_ids, soft_label=1 - p.soft_label)
                 if p.soft_label is not None and p.soft_label < 0.5 else p for p in pairs]
    reference_model = load_causal_lm(m.name_or_path, m.revision, m.dtype, m.trust_remote_code)
    ref = reference_logps(reference_model, pairs, tokenizer.pad_token_id, model_fingerprint(m.name_or_path, m.revision),
                          cache_dir=config.cache_dir, batch_size=t.eval_batch_size, precision=t.precision,
                          desc="reference log-probs (noisy train)")
    del reference_model
    policy = load_causal_lm(str(model_dir), None, "float32")
    settings = LossSettings(dict(config.loss.losses), config.loss.beta, config.loss.label_smoothing,
                            config.loss.rdpo_epsilon, config.loss.ipo_length_normalize, config.loss.aggregation,
                            config.loss.drdpo_beta)
    batches = [collate_pairs(pairs[i : i + t.eval_batch_size], tokenizer.pad_token_id)
               for i in range(0, len(pairs), t.eval_batch_size)]
    import torch

    result = evaluate(policy, batches, (ref.chosen, ref.rejected), settings,
                      torch.bfloat16 if t.precision == "bf16" else None)
    return result | {"scheduled_pairs": len(scheduled), "reference_sequences_computed": ref.sequences_computed}


def proportion(value: float | None, n: int) -> dict[str, Any]:
    """A share of n with its 95 % Wilson interval (``bench.harmful.wilson_interval``)."""
    from robalign.bench.harmful import wilson_interval

    if value is None or not n:
        return {"value": value, "low": None, "high": None, "n": n or None}
    low, high = wilson_interval(round(value * n), n)
    return {"value": value, "low": low, "high": high, "n": n}


# ---------------------------------------------------------------------------- 2. clear-bias


def judge_prefixes(judges: list[str]) -> list[str]:
    """Metric prefix per judge: the first is ``clear_bias``, the others ``clear_bias_<type>``
    (``clear_bias_llm``), numbered when two share a type."""
    from robalign.evaluation.judges import parse_judge_spec

    prefixes = ["clear_bias"]
    for spec in judges[1:]:
        name = f"clear_bias_{parse_judge_spec(spec)['type']}"
        prefixes.append(name if name not in prefixes else f"{name}{len(prefixes) + 1}")
    return prefixes


def bench_clear_bias(sweep, cell, model: str, world: Path, cell_dir: Path, cache, log):
    """CLEAR-Bias once per judge; metrics, samples and summary paths."""
    from robalign.bench.clearbias import ClearBiasConfig, run_clear_bias
    from robalign.evaluation.judges import judge_label
    from robalign.evaluation.tables import read_table

    cb = sweep.bench.clear_bias
    # default: the attacks the world wrote (and pre-training saw), not every attack the bench can generate
    attacks = cb.attacks if cb.attacks is not None else world_record(world)["attacks"]["included"]
    metrics, samples, provenance, tables = {}, [], {}, []
    judges = [resolve_judge(sweep, spec) for spec in cb.judges]
    for spec, prefix in zip(judges, judge_prefixes(judges)):
        cfg = ClearBiasConfig(model=f"hf:{model}", judge=spec, data=str(world / "clear_bias"),
                              attacks=",".join(attacks) or None, samples=cb.samples,
                              temperature=cb.temperature, max_new_tokens=cb.max_new_tokens, seed=int(cell.params["seed"]),
                              n_boot=N_BOOT, options=dict(BENCH_OPTIONS[sweep.lane]))
        out = cell_dir / prefix
        # restart: the directory is rewritten from this run; every answer and verdict comes from the cache
        summary = run_clear_bias(cfg, str(out), cache, restart=True, log=log)
        rows = read_table(out / "responses.jsonl")
        metrics |= clear_bias_metrics(summary, prefix)
        samples += clear_bias_samples(rows, judge_label(spec))
        provenance[prefix] = str(out / "summary.json")
        tables.append(rows)
    if len(tables) > 1:
        metrics |= judge_agreement(tables[0], tables[1], int(cell.params["seed"]))
    return metrics, samples, provenance


def clear_bias_samples(rows, judge: str) -> list[dict[str, Any]]:
    attack = [f"{a}:{v}" if a else "" for a, v in zip(rows["attack"], rows["variant"])]
    return [{"benchmark": "clear_bias", "prompt_id": r["prompt_id"], "category": r["category"], "attack": at,
             "prompt": r["prompt"], "answer": r["response"], "label": r["final"], "judge": judge,
             "extra": {"task": r["task"], "phase": r["phase"], "row_id": r["row_id"], "status": r["status"],
                       "verdict": r["verdict"]}}
            for r, at in zip(rows.to_dict("records"), attack)]


def judge_agreement(first, second, seed: int) -> dict[str, Any]:
    """Cohen's kappa of the second judge against the first on the answers both judged
    (first-pass verdicts; the gate may attack other categories under each judge)."""
    from robalign.evaluation.agreement import agreement

    a = first[first["status"] == "answered"].set_index("row_id")["verdict"]
    b = second[second["status"] == "answered"].set_index("row_id")["verdict"]
    both = a.index.intersection(b.index)
    if not len(both):
        return {}
    result = agreement(list(a[both]), list(b[both]), name="second judge", n_boot=N_BOOT, seed=seed)
    return {"judges/kappa": interval(result.kappa.kappa, result.ci.get("kappa"), len(both)),
            "judges/agreement": interval(result.accuracy, result.ci.get("accuracy"), len(both))}


# ---------------------------------------------------------------------------- 3. harmful


def bench_harmful(sweep, cell, model: str, world: Path, cell_dir: Path, cache_root: Path):
    from robalign.bench.harmful import HarmfulConfig, run_harmful

    h = sweep.bench.harmful
    # "rule" is the bias judge; on requests the rule-based judge is the keyword refusal judge
    judge = "keyword" if h.judge == "rule" else h.judge
    out = cell_dir / "harmful"
    result = run_harmful(HarmfulConfig(dataset=str(world / "harmful" / "prompts.csv"), model=f"hf:{model}",
                                       out=str(out), judge=judge, max_new_tokens=h.max_new_tokens,
                                       options=dict(BENCH_OPTIONS[sweep.lane]),
                                       cache=str(cache_root / "generations.sqlite"), restart=True))
    s = result.summary
    metrics: dict[str, Any] = {}
    if "harmful" in s:
        metrics["harmful/compliance"] = _rate(s["harmful"]["asr"])
        metrics["harmful/refusal"] = _rate(s["harmful"]["refusal_rate"])
    if "over_refusal" in s:
        metrics["harmful/over_refusal"] = _rate(s["over_refusal"]["over_refusal"])
    samples = []
    for r in result.rows.to_dict("records"):
        unsafe = r["label"] == "unsafe"  # the headline verdict: harm on unsafe requests, refusal on safe ones
        samples.append({"benchmark": "harmful", "prompt_id": r["id"], "category": r["category"], "attack": "",
                        "prompt": r["prompt"], "answer": r["response"], "label": r["safety"] if unsafe else r["refusal"],
                        "judge": judge, "extra": {"request": r["label"], "refusal": r["refusal"],
                                                  "safety": r["safety"], "status": r["status"]}})
    return metrics, samples, {"harmful": str(out / "summary.json")}


def bench_pairwise(sweep, model: str, world: Path, cell_dir: Path, cache):
    """The paper's win rate: the cell's greedy answers to the first ``pairs`` held-out world prompts
    against each pair's chosen answer, judged in both orders (``robalign judge pairwise``; a
    disagreement between the orders is a tie, UNPARSED is counted and never scored)."""
    import pandas as pd

    from robalign.evaluation.backends import build_backend
    from robalign.evaluation.cache import CachedBackend
    from robalign.evaluation.generation import generate_frame, generation_requests
    from robalign.evaluation.pairwise import compare_table, pair_items

    p = sweep.bench.pairwise
    lines = (world / "pairs" / "eval.jsonl").read_text(encoding="utf-8").splitlines()[: p.pairs]
    rows = pd.DataFrame([{k: r[k] for k in ("id", "prompt", "chosen")} for r in map(json.loads, lines)])
    backend = CachedBackend(build_backend(f"hf:{model}", **BENCH_OPTIONS[sweep.lane]), cache, label=f"hf:{model}")
    answers = generate_frame(rows, backend, generation_requests(rows["prompt"].tolist(), None, 1, p.max_new_tokens,
                                                                0.0, 1.0, 0), 1)
    result = compare_table(answers, pair_items(answers, "prompt", "response", "chosen"), p.judge, cache, {},
                           n_boot=N_BOOT, progress=False)
    out = cell_dir / "pairwise"
    out.mkdir(parents=True, exist_ok=True)
    result.frame.to_json(out / "verdicts.jsonl", orient="records", lines=True, force_ascii=False)
    _write_json(out / "summary.json", {"judge": result.judge, "template": result.template, **result.stats})
    s, tie = result.stats, result.stats["tie_aware_win_rate"]
    metrics = {"pairwise/win_rate": _rate(s["win_rate"]),
               "pairwise/tie_aware_win_rate": interval(tie["rate"], tie["ci"], s["parsed"]),
               "pairwise/unparsed": s["unparsed"]}
    return metrics, {"pairwise": str(out / "summary.json")}


def _rate(r: dict) -> dict[str, Any]:
    return interval(r["rate"], r["ci"], r["n"])


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _write_json(path: Path, data: dict) -> None:
    from robalign.provenance import write_json_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, data)

