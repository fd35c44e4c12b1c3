"""The judges of a bench run: the bias judge, the optional R-vs-M second pass, and what the
summary says about them (which judge, its kappa on a labelled control set and where that
number came from, warnings).

Rows whose generation failed get a FAILED verdict and are never sent to a judge. Attacked
rows are judged with their base prompt beside them (``JudgeItem.base_prompt``): the rule
judge reads the options and stereotype fields from the base prompt, an LLM judge sees both
the prompt as sent and the plain original. Judging goes in chunks so ``--max-cost`` is
checked between them.

Kappa, in order: ``--judge-kappa FILE`` (``winner.json`` / ``selection.json`` of
``robalign judge select``); else computed on ``--control-set DIR`` (or the ``control_set``
folder of CLEAR-Bias data given with ``--data``) -- for an LLM judge only when
``--control-set`` is named, since it costs 800 calls; else unknown, with the command that
measures it. The rule judge's word lists were written while looking at the CLEAR-Bias control
set, so its kappa there is optimistic; the summary says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from robalign.bench.run import CostMeter, Estimate, estimate_cost
from robalign.errors import UserError
from robalign.evaluation.cache import CachedBackend, ResponseCache, cache_key
from robalign.evaluation.families import same_family
from robalign.evaluation.judges import (
    JudgeItem,
    LLMJudge,
    Verdict,
    build_judge,
    judge_answers,
    judge_label,
    parse_judge_spec,
    sample_disagreement,
)

CHUNK = 64  # items judged between two checks of --max-cost
RULE_KAPPA_CAVEAT = ("the rule judge's word lists were written while reading the CLEAR-Bias control set, so its "
                     "kappa there is optimistic")


@dataclass
class JudgeSetup:
    judge: Any
    label: str
    second: LLMJudge | None = None
    kappa: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)  # every first-pass verdict, for sample agreement

    @classmethod
    def build(cls, cfg, cache: ResponseCache | None) -> JudgeSetup:
        spec = parse_judge_spec(cfg.judge)
        if cfg.judge_samples > 1 and spec["type"] == "llm":
            spec = {**spec, "samples": cfg.judge_samples, "temperature": spec.get("temperature", 0.7)}
        elif cfg.judge_samples > 1:
            raise UserError(f"--judge-samples {cfg.judge_samples} needs an llm judge; '{spec['type']}' is deterministic")
        judge = build_judge(spec, cache, **cfg.judge_options)
        second = None
        if cfg.second_pass:
            second = build_judge(cfg.second_pass, cache, **cfg.judge_options)
            if not isinstance(second, LLMJudge):
                raise UserError("--second-pass needs an llm judge spec ending in #misunderstanding")
        setup = cls(judge, judge_label(spec), second)
        setup.notes += _family_notes(cfg, spec)
        if spec["type"] == "rule":
            setup.notes.append(f"judge: {RULE_KAPPA_CAVEAT}; it is a baseline, use an LLM judge for reported numbers")
        if second is None:
            setup.notes.append("no --second-pass: refusals are not split into refusals and misunderstandings (M = 0)")
        return setup

    def backends(self) -> list[CachedBackend]:
        return [b for _, b in self.named_backends()]

    def named_backends(self) -> list[tuple[str, CachedBackend]]:
        out = [("judge", self.judge.backend)] if isinstance(self.judge, LLMJudge) else []
        return out + ([("second_pass", self.second.backend)] if self.second else [])

    def describe(self) -> dict[str, Any]:
        template = getattr(self.judge, "template", None)
        return {"label": self.label, **self.kappa,
                "template": getattr(template, "name", None), "template_version": _version(self.judge) or next((v.template for v in self.verdicts if v.template), None),
                "samples": getattr(self.judge, "samples", 1), "temperature": getattr(self.judge, "temperature", 0.0),
                "second_pass": self.second.name if self.second else None,
                "sample_disagreement": sample_disagreement(self.verdicts) if getattr(self.judge, "samples", 1) > 1
                else None}

    def measure_kappa(self, cfg) -> None:
        self.kappa = judge_kappa(self, cfg)

    def estimates(self, cfg, n_base: int, n_attack: int, answer_tokens: int) -> dict[str, Estimate]:
        """Judge calls per phase, before the answers exist: every answer judged (upper bound
        for the attack phase and the second pass)."""
        out = {}
        for name, judge, n in (("base/judge", self.judge, n_base), ("attack/judge (upper bound)", self.judge, n_attack),
                               ("attack/second pass (upper bound)", self.second, n_attack)):
            if isinstance(judge, LLMJudge) and n:
                calls = n * judge.samples
                prompt_tokens = calls * (len(judge.template.text) // 4 + 120 + answer_tokens)
                e = Estimate(calls, 0, calls, prompt_tokens, calls * judge.max_new_tokens)
                from robalign.bench.run import prices

                price_in, price_out = prices(judge.backend)
                e.usd = (e.prompt_tokens * price_in + e.completion_tokens * price_out) / 1e6
                out[name] = e
        control = None if cfg.judge_kappa else control_dir(self, cfg)
        if control is not None and isinstance(self.judge, LLMJudge):
            out["control set/judge"] = estimate_cost(self.judge.backend, self.judge.requests(control_items(control)[1]))
        return out


def _version(judge) -> str | None:
    template = getattr(judge, "template", None)
    return template.version if template is not None else None


def _family_notes(cfg, judge_spec: dict) -> list[str]:
    notes = []
    for role, spec in (("judge", judge_spec), ("second pass", cfg.second_pass)):
        if spec and parse_judge_spec(spec)["type"] == "llm":
            warning = same_family(cfg.model, parse_judge_spec(spec)["model"])
            if warning:
                notes.append(f"WARNING: the {role} {warning}")
    return notes


def items_for(rows: pd.DataFrame) -> list[JudgeItem]:
    """A judge item per row; attacked rows carry their base prompt and attack name."""
    return [JudgeItem(prompt, response, stereo, counter, base_prompt=base if phase == "attack" else None,
                      attack=attack or None)
            for prompt, response, stereo, counter, base, phase, attack in zip(
                rows["prompt"], rows["response"], rows["stereotype"], rows["counter_stereotype"],
                rows["base_prompt"], rows["phase"], rows["attack"])]


def judge_chunks(judge, items: list[JudgeItem], answered: list[bool], meter: CostMeter, phase: str,
                  desc: str) -> list[Verdict]:
    """``judge_answers`` in chunks (FAILED for unanswered items, never sent), checking the cost
    cap before each chunk."""
    from tqdm.auto import tqdm

    verdicts: list[Verdict] = []
    with tqdm(total=len(items), desc=desc, unit="verdict", leave=False, disable=not items) as bar:
        for start in range(0, len(items), CHUNK):
            part, ok = items[start : start + CHUNK], answered[start : start + CHUNK]
            if isinstance(judge, LLMJudge):
                meter.check(judge.backend, judge.requests([i for i, a in zip(part, ok) if a]), phase)
            verdicts += judge_answers(judge, part, ok)
            bar.update(len(part))
    return verdicts


def judge_rows(rows: pd.DataFrame, setup: JudgeSetup, meter: CostMeter, phase: str) -> pd.DataFrame:
    """``rows`` plus verdict, judge_raw, judge_prompt, judge_template, judge_decoding, judge_votes,
    and empty second-pass columns; failed generations are FAILED without a judge call."""
    verdicts = judge_chunks(setup.judge, items_for(rows), [s == "answered" for s in rows["status"]], meter, phase,
                             f"{phase}: judge")
    setup.verdicts += verdicts
    out = rows.copy()
    out["verdict"] = [v.label for v in verdicts]
    out["judge_raw"] = [v.raw for v in verdicts]
    out["judge_prompt"] = [v.prompt for v in verdicts]
    out["judge_template"] = [v.template for v in verdicts]
    out["judge_decoding"] = [json.dumps(v.decoding, sort_keys=True) if v.decoding else "" for v in verdicts]
    out["judge_votes"] = [",".join(v.votes) for v in verdicts]
    out["rm"], out["rm_raw"] = "", ""
    return out


def misunderstanding_rows(rows: pd.DataFrame, setup: JudgeSetup, meter: CostMeter) -> pd.DataFrame:
    """The second pass on every R of ``rows``: ``rm`` = R / M / UNPARSED / FAILED / JUDGE_REFUSED."""
    if setup.second is None:
        return rows
    items = items_for(rows)
    refusals = [i for i, v in enumerate(rows["verdict"]) if v == "R"]
    verdicts = judge_chunks(setup.second, [items[i] for i in refusals], [True] * len(refusals), meter, "attack",
                             "attack: R vs M")
    out = rows.copy()
    rm, rm_raw = list(out["rm"]), list(out["rm_raw"])
    for i, v in zip(refusals, verdicts):
        rm[i], rm_raw[i] = v.label, v.raw
    out["rm"], out["rm_raw"] = rm, rm_raw
    return out


def control_dir(setup: JudgeSetup, cfg) -> Path | None:
    """The labelled set kappa is measured on in this run, or None (see the module doc)."""
    from robalign.evaluation.tables import find_control_dir

    if cfg.control_set:
        found = find_control_dir(Path(cfg.control_set))
        if found is None:
            raise UserError(f"--control-set {cfg.control_set}: no CLEAR-Bias control_set_CTO.csv there or in its "
                            "control_set folder")
        return found
    if cfg.data and Path(cfg.data).is_dir() and not isinstance(setup.judge, LLMJudge):
        return find_control_dir(Path(cfg.data))  # free for rule judges; 800 paid calls for an LLM
    return None


def judge_kappa(setup: JudgeSetup, cfg) -> dict[str, Any]:
    """{"kappa", "kappa_ci", "kappa_source"} for the summary (see the module doc)."""
    if cfg.judge_kappa:
        return _kappa_from_file(Path(cfg.judge_kappa), setup.label)
    control = control_dir(setup, cfg)
    if control is None:
        how = ("robalign judge select --control-set DIR --judges FILE, then --judge-kappa DIR/winner.json, "
               "or --control-set DIR")
        return {"kappa": None, "kappa_ci": None, "kappa_source": f"not measured in this run ({how})"}
    return _kappa_on_control(setup, control, cfg)


def control_items(control: Path) -> tuple[pd.DataFrame, list[JudgeItem]]:
    from robalign.evaluation.judging import judge_items
    from robalign.evaluation.tables import load_control_set

    df = load_control_set(control)
    has_fields = "STEREOTYPE" in df
    return df, judge_items(df, "PROMPT", "RESPONSE", "STEREOTYPE" if has_fields else None,
                           "COUNTER-STEREOTYPE" if has_fields else None)


def _kappa_from_file(path: Path, label: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"--judge-kappa {path}: cannot read it ({exc}); give the winner.json or selection.json "
                        "written by robalign judge select") from None
    if "ranking" in data:  # selection.json: the entry of this judge
        entry = next((r for r in data["ranking"] if r.get("name") == label), None)
        if entry is None:
            raise UserError(f"--judge-kappa {path}: no judge named '{label}' in its ranking "
                            f"({', '.join(r.get('name', '?') for r in data['ranking'])})")
        return {"kappa": entry["agreement"]["kappa"]["kappa"], "kappa_ci": entry["agreement"]["ci"].get("kappa"),
                "kappa_source": f"{path} ({entry['agreement']['n']} control rows)"}
    if "kappa" not in data:
        raise UserError(f"--judge-kappa {path}: no 'kappa' field; give robalign judge select's winner.json")
    if data.get("name") not in (None, label):
        raise UserError(f"--judge-kappa {path} measured judge '{data.get('name')}', not '{label}'")
    return {"kappa": data["kappa"], "kappa_ci": data.get("kappa_ci"),
            "kappa_source": f"{path} ({data.get('control_rows', '?')} control rows)"}


def _kappa_on_control(setup: JudgeSetup, control: Path, cfg) -> dict[str, Any]:
    from robalign.evaluation.agreement import agreement

    df, items = control_items(control)
    verdicts = setup.judge.judge(items)
    stats = agreement(df["LABEL"], [v.label for v in verdicts], name=setup.label, n_boot=min(cfg.n_boot, 1000),
                      seed=cfg.seed).to_dict()
    return {"kappa": stats["kappa"]["kappa"], "kappa_ci": stats["ci"].get("kappa"),
            "kappa_source": f"computed in this run on {control} ({len(df)} rows)",
            "control_accuracy": stats["accuracy"]}


def cached_answers(model: CachedBackend, requests: list) -> list[str | None]:
    """The text of each request's answer when the cache holds it, else None; sends nothing."""
    if model.cache is None:
        return [None] * len(requests)
    identity = model.identity()
    keys = [cache_key(identity, r) for r in requests]
    found = model.cache.get_many(keys)
    return [found[k].text if k in found else None for k in keys]


def judge_estimate(judge, prompts: list[str], answers: list[str | None], max_new_tokens: int) -> Estimate:
    """A judge's calls on these answers: exact (and free when cached) for a known answer; for an
    unknown one, as if it were judged and ``max_new_tokens`` long (4 characters a token, the
    rule ``estimate_cost`` counts with). A keyword judge makes no calls."""
    if not isinstance(judge, LLMJudge):
        return Estimate()
    known = [JudgeItem(p, a) for p, a in zip(prompts, answers) if a is not None]
    filler = "x" * (4 * max_new_tokens)
    unknown = [JudgeItem(p, filler) for p, a in zip(prompts, answers) if a is None]
    return (estimate_cost(judge.backend, judge.requests(known))
            + estimate_cost(judge.backend, judge.requests(unknown), check_cache=False))
