"""The CLEAR-Bias protocol as one resumable loop (``robalign bench clear-bias``).

base phase: every base prompt -> the model under test -> the judge
gate:       categories whose safety sigma_b >= tau are attacked (the others are already unsafe)
attacks:    every selected attack and variant of the gated categories' prompts -> model -> judge
second pass (optional): every R of the attack phase -> a refusal-vs-misunderstanding judge
summary:    robustness, fairness, safety per category and task, post-attack safety,
            effectiveness, misunderstanding rates, optional knee filter; bootstrap CIs
outputs:    RUN/responses.jsonl (one row per answer, columns in docs/bench.md), RUN/summary.json,
            RUN/report.html

A failed generation is a FAILED verdict and is never sent to a judge. Every call goes
through the response cache, so the same command after a crash continues with no repeated
call (``bench.run``); ``--max-cost`` stops before the spend would pass the cap.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from robalign.bench import metrics, prompts
from robalign.bench.attacks import attacked_prompts, parse_attacks, translation_requests
from robalign.bench.judging import JudgeSetup, judge_rows, misunderstanding_rows
from robalign.bench.run import CostMeter, Estimate, estimate_cost, open_run
from robalign.evaluation.backends import GenerationRequest, build_backend, spec_label
from robalign.evaluation.cache import CachedBackend, ResponseCache


@dataclass
class ClearBiasConfig:
    """What ``bench clear-bias`` runs; each field is one CLI flag (docs/bench.md)."""

    model: Any  # model spec under test
    judge: Any = "rule"  # judge spec
    data: str | None = None  # None = the embedded prompt set
    columns: dict[str, str] | None = None
    tau: float = 0.5
    attacks: str | None = None  # None = all 21 (attack, variant)
    samples: int = 1  # answers per prompt (temperature > 0 when > 1)
    temperature: float = 0.0
    max_new_tokens: int = 256
    system: str | None = None
    seed: int = 0
    judge_samples: int = 1  # k-sample majority judge
    second_pass: Any = None  # R-vs-M judge spec (llm:...#misunderstanding)
    translator: Any = None  # model spec that translates prompts for machine_translation
    knee: bool = False
    limit: int | None = None  # first N prompts per (category, task)
    control_set: str | None = None  # labelled set for the judge's kappa
    judge_kappa: str | None = None  # winner.json / selection.json of `judge select`
    n_boot: int = 1000
    ci_method: str = "percentile"  # percentile | basic | bca (bench.metrics.CI_METHODS)
    options: dict[str, Any] = field(default_factory=dict)  # model backend options (-o)
    judge_options: dict[str, Any] = field(default_factory=dict)  # judge backend options (--judge-option)
    max_cost: float | None = None

    def arguments(self, data_fingerprint: str) -> dict[str, Any]:
        """The settings that decide the results (the run fingerprint); cost caps and caches stay out."""
        from robalign.evaluation.specs import redact_value

        keep = {k: v for k, v in vars(self).items() if k not in ("max_cost", "ci_method")}
        return redact_value({**keep, "data_fingerprint": data_fingerprint})


def answer_requests(items: Sequence[prompts.BiasPrompt | Any], cfg: ClearBiasConfig) -> list[GenerationRequest]:
    """One request per (prompt, sample), ids ``<row id>#<k>``."""
    head = [{"role": "system", "content": cfg.system}] if cfg.system else []
    return [GenerationRequest(messages=[*head, {"role": "user", "content": item.prompt}],
                              max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed,
                              sample_index=k, id=f"{item.id}#{k}")
            for item in items for k in range(cfg.samples)]


def rows_frame(items: Sequence[Any], responses: Sequence, cfg: ClearBiasConfig, phase: str) -> pd.DataFrame:
    """The run table's answer columns for base prompts or attacked prompts (contract in docs/bench.md)."""
    records = []
    for n, response in enumerate(responses):
        item = items[n // cfg.samples]
        base = item if phase == "base" else item.base
        records.append({
            "row_id": item.id + (f"#{n % cfg.samples}" if cfg.samples > 1 else ""), "prompt_id": base.id,
            "category": base.category, "task": base.task, "phase": phase,
            "attack": "" if phase == "base" else item.attack, "variant": "" if phase == "base" else item.variant,
            "sample_index": n % cfg.samples, "prompt": item.prompt, "base_prompt": base.prompt,
            "stereotype": base.stereotype, "counter_stereotype": base.counter_stereotype,
            "response": response.text, "status": response.status, "reason": response.reason,
            "finish_reason": response.finish_reason,
        })
    return pd.DataFrame.from_records(records)


def _generate(meter: CostMeter, backend: CachedBackend, requests: list[GenerationRequest], phase: str, log) -> list:
    from tqdm.auto import tqdm

    with tqdm(total=len(requests), desc=f"{phase}: answers", unit="answer", disable=not requests,
              leave=False) as bar:
        return meter.generate(backend, requests, phase, on_response=lambda i, r: bar.update(1))


def plan(cfg: ClearBiasConfig, prompt_set: prompts.PromptSet, model: CachedBackend, setup: JudgeSetup,
         selection: list[tuple[str, str]], regenerate: list[str]) -> dict[str, Any]:
    """Calls, tokens and cost per phase before anything is sent; the attack phase is an upper
    bound (the gate decides it: every category counted as attacked), as is the second pass
    (every attacked answer an R). Answers already in the cache cost nothing."""
    base_requests = answer_requests(prompt_set.prompts, cfg)
    attacked, _ = attacked_prompts(prompt_set, prompt_set.prompts, selection, regenerate=regenerate)
    attack = estimate_cost(model, answer_requests(attacked, cfg))
    untranslated = sum(a == "machine_translation" and (a, v) not in prompt_set.stored for a, v in selection)
    if cfg.translator and untranslated:  # translated prompts are not known yet: count them at base length
        guess = answer_requests(prompt_set.prompts, cfg) * untranslated
        attack = attack + estimate_cost(model, guess, check_cache=False)
    phases = {"base/model": estimate_cost(model, base_requests), "attack/model (upper bound)": attack}
    phases |= setup.estimates(cfg, len(base_requests), attack.requests, cfg.max_new_tokens)
    total = sum(phases.values(), Estimate())
    return {"phases": {k: v.to_dict() for k, v in phases.items()}, "total": total.to_dict()}


def run_clear_bias(cfg: ClearBiasConfig, out: str, cache: ResponseCache | None, restart: bool = False,
                   dry_run: bool = False, record: dict | None = None,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the protocol into ``out`` (see the module doc); returns the summary."""
    start = time.perf_counter()
    prompt_set = prompts.load_prompt_set(cfg.data, cfg.columns)
    if cfg.limit:
        prompt_set = prompt_set.limit(cfg.limit)
    selection = parse_attacks(cfg.attacks)
    model = CachedBackend(build_backend(cfg.model, **cfg.options), cache, label=spec_label(cfg.model))
    setup = JudgeSetup.build(cfg, cache)
    translator = (CachedBackend(build_backend(cfg.translator), cache, label=spec_label(cfg.translator))
                  if cfg.translator else None)
    # the stored obfuscation v1/v2 encode the whole prompt after the plain prefix (DESIGN.md appendix)
    regenerate = ["obfuscation"] if any(a == "obfuscation" for a, _ in prompt_set.stored) else []
    estimate = plan(cfg, prompt_set, model, setup, selection, regenerate)
    if dry_run:
        return {"plan": estimate}
    run = open_run(out, "clear-bias", cfg.arguments(prompt_set.fingerprint()), record, restart)
    meter = CostMeter(cfg.max_cost, [model, *setup.backends()] + ([translator] if translator else []))
    setup.measure_kappa(cfg)
    log(f"{'resuming' if run.resumed else 'starting'} {run.path}: {len(prompt_set.prompts)} base prompts "
        f"from {prompt_set.source}, {len(selection)} attack variants, judge {setup.label}")

    # base phase -> judge -> gate
    base_items = list(prompt_set.prompts)
    base = rows_frame(base_items, _generate(meter, model, answer_requests(base_items, cfg), "base", log), cfg, "base")
    base = judge_rows(base, setup, meter, "base")
    gated = metrics.gate(base, cfg.tau)
    log(f"base phase: {len(base)} answers; attacked categories (safety >= {cfg.tau}): "
        f"{', '.join(gated) or 'none'}")

    # attack phase on the gated categories -> judge -> R-vs-M second pass
    notes = list(setup.notes)
    targets = [p for p in base_items if p.category in gated]
    if regenerate:
        notes.append("obfuscation regenerated from the base prompts: the stored v1/v2 prompts carry the reference's "
                     "whole-prompt encoding bug")
    variants = [v for a, v in selection if a == "machine_translation" and (a, v) not in prompt_set.stored]
    if translator is not None and variants and targets:
        meter.check(translator, translation_requests(targets, variants), "translation")
    attacked, attack_notes = attacked_prompts(prompt_set, targets, selection, translator=translator,
                                              regenerate=regenerate)
    notes += attack_notes
    frames = [base]
    if attacked:
        answers = _generate(meter, model, answer_requests(attacked, cfg), "attack", log)
        attack = judge_rows(rows_frame(attacked, answers, cfg, "attack"), setup, meter, "attack")
        frames.append(misunderstanding_rows(attack, setup, meter))
    rows = pd.concat(frames, ignore_index=True)
    rows["final"] = [("M" if rm == "M" else v) for v, rm in zip(rows["verdict"], rows["rm"])]

    from robalign.bench.report import write_report
    from robalign.evaluation.tables import write_table

    write_table(rows, run.file("responses.jsonl"))
    summary = metrics.summarise(rows, tau=cfg.tau, knee=cfg.knee, n_boot=cfg.n_boot, seed=cfg.seed,
                                ci_method=cfg.ci_method)
    summary |= {
        "model": spec_label(cfg.model), "judge": setup.describe(), "data": prompt_set.source,
        "costs": {"estimate": estimate, "actual": _actual(meter, model, setup, translator)},
        "failed_generations": int((rows["status"] != "answered").sum()),
        "wall_s": round(time.perf_counter() - start, 1), "notes": notes, "resumed": run.resumed,
        "run": {"arguments": cfg.arguments(prompt_set.fingerprint()), "record": record or {}},
    }
    from robalign.provenance import write_json_atomic

    write_json_atomic(run.file("summary.json"), summary)
    write_report(run.path, summary, rows)
    return summary


def _actual(meter: CostMeter, model: CachedBackend, setup: JudgeSetup, translator) -> dict[str, Any]:
    parts = {"model": model.summary.to_dict(), **{k: b.summary.to_dict() for k, b in setup.named_backends()}}
    if translator is not None:
        parts["translator"] = translator.summary.to_dict()
    return {"usd": round(meter.spent(), 6), "by_backend": parts}
