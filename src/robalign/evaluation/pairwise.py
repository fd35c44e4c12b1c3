"""Pairwise win rate against a reference answer (``robalign judge pairwise``): the ShaPO paper's
"win rate vs the chosen response", with the position swap and the non-verdicts made explicit.

Protocol. Each row holds a prompt, the model's answer and a reference answer (e.g. the data
set's chosen response). The judge (an LLM with the ``pairwise`` template, ``parsers``) sees the
prompt and two replies and ends with ``[[A]]``, ``[[B]]`` or ``[[TIE]]``. Every row is sent twice:
``model_a`` shows the model's answer as reply A and the reference as B, ``model_b`` swaps them.
LLM judges favour one position (often the first) by a margin that can exceed the difference
being measured; asking both ways and demanding agreement turns that bias into ties, never wins.

Outcome of a row (``pair_outcome``), from the model's side:

| model_a says | model_b says | outcome |
|--------------|--------------|---------|
| A            | B            | win     |
| B            | A            | loss    |
| TIE          | TIE          | tie     |
| any other parsed pair (the orders disagree, e.g. A / A) | | tie |
| UNPARSED, JUDGE_REFUSED or FAILED in either order | | that non-verdict (FAILED first, then UNPARSED) |

Non-verdicts are counted and reported beside the rates, never scored for either side: a judge
that cannot read a pair does not hand the model a loss. So, over the P parsed rows with W wins,
T ties and L losses:

- win rate = W / P, with a Wilson score interval (``bench.harmful.rate``);
- tie-aware win rate = (W + T/2) / P, with a percentile bootstrap over the parsed rows (seeded;
  resampled through ``agreement.bootstrap_confusions``);
- loss rate = L / P (Wilson);
- position consistency = the share of parsed rows whose two orders name the same winner, and
  first-position share = the share of single-order A/B choices (ties left out) that picked reply
  A, over every order that parsed: 0.5 for a judge with no position preference, 1.0 for one that
  always says A (whose rows all become ties).

A row whose generation failed (``status`` = failed, as ``robalign generate`` writes) is FAILED
without a judge call: an empty answer would be judged, and lose. Judge calls go through
``CachedBackend``; the template version is in every request's key, so a re-run (or a resumed
interrupted run) sends nothing already answered, and a changed template is never read from the
cache. k-sample judges (``samples: k``) vote per order with ``judges.majority``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from robalign.errors import UserError
from robalign.evaluation.agreement import bootstrap_confusions
from robalign.evaluation.backends import (
    GenerationRequest,
    GenerationResponse,
    build_backend,
    parse_model_spec,
    spec_label,
)
from robalign.evaluation.cache import CachedBackend, ResponseCache, RunSummary
from robalign.evaluation.judges import JUDGE_EXAMPLE, NOT_JUDGED, LLMJudge, majority, parse_judge_spec
from robalign.evaluation.labels import FAILED, JUDGE_REFUSED, STATUS_FAILED, UNPARSED
from robalign.evaluation.parsers import CUSTOM_KEYS, PAIRWISE_LABELS, get_pairwise_template
from robalign.evaluation.specs import load_spec, reject_secrets
from robalign.evaluation.tables import find_column
from robalign.evaluation.templates import render

WIN, LOSS, TIE = "win", "loss", "tie"
OUTCOMES = (WIN, TIE, LOSS)  # bootstrap index order
NON_VERDICTS = (FAILED, UNPARSED, JUDGE_REFUSED)  # precedence when the two orders differ
ORDERS = ("model_a", "model_b")  # the model's answer shown as reply A, then as reply B
# a choice, read from the model's side, per order
_SIDE = {"model_a": {"A": WIN, "B": LOSS, "TIE": TIE}, "model_b": {"A": LOSS, "B": WIN, "TIE": TIE}}


@dataclass
class PairItem:
    prompt: str
    answer: str  # the model's answer
    reference: str  # what it is compared with, e.g. the data set's chosen response


@dataclass
class PairVerdict:
    outcome: str  # win / loss / tie, or FAILED / UNPARSED / JUDGE_REFUSED
    choice_model_a: str  # A / B / TIE or a non-verdict, the model's answer shown as reply A
    choice_model_b: str  # the same with the model's answer shown as reply B
    raw_model_a: str  # the judge's replies (k samples joined by ---), or why there was none
    raw_model_b: str

    @property
    def consistent(self) -> bool:
        """Both orders parsed and named the same winner (or both said TIE)."""
        return (self.outcome not in NON_VERDICTS
                and _SIDE["model_a"][self.choice_model_a] == _SIDE["model_b"][self.choice_model_b])


def pair_outcome(choice_model_a: str, choice_model_b: str) -> str:
    """The row's outcome from its two choices (table in the module doc): a win or a loss needs
    both orders to agree, a disagreement is a tie, a non-verdict in either order is the row's."""
    for label in NON_VERDICTS:
        if label in (choice_model_a, choice_model_b):
            return label
    first, second = _SIDE["model_a"][choice_model_a], _SIDE["model_b"][choice_model_b]
    return first if first == second else TIE


# ---- the judge -----------------------------------------------------------------------------------


def pairwise_judge(spec: str | dict, cache: ResponseCache | None = None, **backend_overrides: Any) -> LLMJudge:
    """An LLM judge with a pairwise template from an llm judge spec: ``llm:<model spec>`` (template
    ``pairwise``), ``llm:<model spec>#pairwise``, or the mapping form with ``samples``,
    ``temperature``, ``max_new_tokens``, ``seed``, ``name``. Any backend ``build_backend`` knows."""
    loaded = load_spec(spec, "judge spec", JUDGE_EXAMPLE)
    data = parse_judge_spec(loaded)
    reject_secrets(backend_overrides, "backend option (-o)")
    if data["type"] != "llm":
        raise UserError(f"judge pairwise needs an llm judge, not '{data['type']}': e.g. --judge "
                        "llm:openai:deepseek-chat@https://api.deepseek.com or --judge llm:hf:runs/judge")
    if any(key in data for key in CUSTOM_KEYS):
        raise UserError(f"judge pairwise takes a built-in pairwise template, not {', '.join(CUSTOM_KEYS)}: "
                        "drop those keys (the default template is pairwise)")
    unknown = set(data) - {"type", "model", "template", "samples", "temperature", "max_new_tokens", "seed", "name"}
    if unknown:
        raise UserError(f"judge spec: unknown option(s) {', '.join(sorted(unknown))}")
    # parse_judge_spec fills in "bias" when a string spec names no template: only a template the
    # user wrote (#name, or template: in a mapping) replaces the pairwise default
    named = "template" in loaded if isinstance(loaded, dict) else "#" in str(loaded)
    template = get_pairwise_template(str(data["template"]) if named else "pairwise")
    model = parse_model_spec(data["model"])
    backend = CachedBackend(build_backend(model, **backend_overrides), cache, label=spec_label(model))
    return LLMJudge(backend, template, samples=int(data.get("samples", 1)),
                    temperature=float(data.get("temperature", 0.0)), max_new_tokens=data.get("max_new_tokens"),
                    seed=int(data.get("seed", 0)), name=str(data.get("name", "")))


def pair_requests(judge: LLMJudge, items: Sequence[PairItem]) -> list[GenerationRequest]:
    """Per item, per order (``ORDERS``), ``judge.samples`` requests; ids ``<row>/<order>/<sample>``.
    Every field is neutralised by ``render``, so an answer cannot close its block or hold a choice."""
    template = judge.template
    requests = []
    for n, item in enumerate(items):
        for order in ORDERS:
            a, b = (item.answer, item.reference) if order == "model_a" else (item.reference, item.answer)
            text = render(template.text, item.prompt, "", answer_a=a, answer_b=b)
            requests += [GenerationRequest(messages=[{"role": "user", "content": text}],
                                           max_new_tokens=judge.max_new_tokens, temperature=judge.temperature,
                                           seed=judge.seed, sample_index=k, id=f"{n}/{order}/{k}",
                                           template=template.version)
                         for k in range(judge.samples)]
    return requests


def _choice(judge: LLMJudge, chunk: Sequence[GenerationResponse]) -> tuple[str, str]:
    """One order's choice (majority over its samples) and raw text."""
    votes = [judge.vote(r, judge.template) for r in chunk]
    raws = [r.text if r.ok else f"judge call failed: {r.reason}" for r in chunk]
    return majority(votes), "\n---\n".join(raws)


def judge_pairs(judge: LLMJudge, items: Sequence[PairItem], answered: Sequence[bool] | None = None,
                progress: bool = True) -> list[PairVerdict]:
    """A verdict per item; items with ``answered`` False are FAILED and never sent."""
    from tqdm.auto import tqdm

    if tuple(judge.template.labels) != PAIRWISE_LABELS:
        raise UserError(f"judge pairwise needs a pairwise template, not '{judge.template.name}'")
    answered = [True] * len(items) if answered is None else list(answered)
    todo = [n for n, ok in enumerate(answered) if ok]
    requests = pair_requests(judge, [items[n] for n in todo])
    with tqdm(total=len(requests), desc="pairwise judge", unit="call", leave=False,
              disable=not (progress and requests)) as bar:
        responses = judge.backend.generate(requests, on_response=lambda i, r: bar.update(1)) if requests else []
    verdicts = [PairVerdict(FAILED, FAILED, FAILED, NOT_JUDGED, NOT_JUDGED) for _ in items]
    k = judge.samples
    for j, n in enumerate(todo):
        (choice_a, raw_a), (choice_b, raw_b) = (_choice(judge, responses[(2 * j + o) * k : (2 * j + o + 1) * k])
                                                for o in range(2))
        verdicts[n] = PairVerdict(pair_outcome(choice_a, choice_b), choice_a, choice_b, raw_a, raw_b)
    return verdicts


# ---- rates ---------------------------------------------------------------------------------------


def win_rates(verdicts: Sequence[PairVerdict], level: float = 0.95, n_boot: int = 1000, seed: int = 0
              ) -> dict[str, Any]:
    """Counts and rates of the module doc. Rates are None (and CIs None) when no row parsed."""
    from robalign.bench.harmful import rate  # the project's Wilson interval (see the report note)

    counts = Counter(v.outcome for v in verdicts)
    parsed = [v for v in verdicts if v.outcome not in NON_VERDICTS]
    wins, ties, losses, p = counts[WIN], counts[TIE], counts[LOSS], len(parsed)
    picks = [c for v in verdicts for c in (v.choice_model_a, v.choice_model_b) if c in ("A", "B")]
    tie_aware: dict[str, Any] = {"rate": (wins + ties / 2) / p if p else None, "ci": None,
                                 "method": "percentile bootstrap over parsed rows", "n_boot": n_boot, "seed": seed}
    if p and n_boot > 0:
        index = {o: i for i, o in enumerate(OUTCOMES)}
        rows = np.array([index[v.outcome] for v in parsed])
        # a one-column confusion matrix of resampled rows is a histogram of their outcomes
        draws = np.concatenate([(C[:, 0, 0] + C[:, 1, 0] / 2) / p
                                for C in bootstrap_confusions(rows, np.zeros_like(rows), len(OUTCOMES), n_boot, seed)])
        tail = 100 * (1 - level) / 2
        tie_aware["ci"] = [float(x) for x in np.percentile(draws, [tail, 100 - tail])]
    return {
        "rows": len(verdicts), "parsed": p, "wins": wins, "ties": ties, "losses": losses,
        "ties_from_disagreement": sum(v.outcome == TIE and not v.consistent for v in parsed),
        "unparsed": counts[UNPARSED], "judge_refused": counts[JUDGE_REFUSED], "failed": counts[FAILED],
        "win_rate": {**rate(wins, p, level), "method": "wilson"},
        "tie_aware_win_rate": tie_aware,
        "loss_rate": {**rate(losses, p, level), "method": "wilson"},
        "position_consistency": sum(v.consistent for v in parsed) / p if p else None,
        "first_position_share": sum(c == "A" for c in picks) / len(picks) if picks else None,
        "level": level,
    }


def rates_line(stats: dict[str, Any]) -> str:
    """One line for the terminal: the win rate with its CI and the rows it leaves out."""
    def show(entry: dict) -> str:
        low, high = entry["ci"] or (float("nan"), float("nan"))
        return f"{entry['rate']:.3f} [{low:.3f}, {high:.3f}]" if entry["rate"] is not None else "n/a"

    pct = f"{stats['level']:.0%}"
    return (f"win rate {show(stats['win_rate'])} ({pct} CI) over {stats['parsed']} parsed rows: wins {stats['wins']}, "
            f"ties {stats['ties']} ({stats['ties_from_disagreement']} where the two orders disagreed), losses "
            f"{stats['losses']}; tie-aware {show(stats['tie_aware_win_rate'])}; not scored: "
            f"{stats['unparsed']} UNPARSED, {stats['judge_refused']} JUDGE_REFUSED, {stats['failed']} FAILED")


# ---- a table -------------------------------------------------------------------------------------


def pair_columns(df: pd.DataFrame, source: str, prompt_col: str | None = None, response_col: str | None = None,
                 reference_col: str | None = None) -> tuple[str, str, str]:
    """The prompt, answer and reference columns: as named, else ``prompt`` / ``response`` and
    ``reference`` or ``chosen`` (any case). Errors name the file, the columns and the flag."""
    prompt = find_column(df, prompt_col, "prompt", "--prompt-col", source)
    response = find_column(df, response_col, "response", "--response-col", source)
    if reference_col:
        return prompt, response, find_column(df, reference_col, "reference", "--reference-col", source)
    for column in df.columns:
        if str(column).lower() in ("reference", "chosen"):
            return prompt, response, column
    raise UserError(f"{source}: no 'reference' or 'chosen' column for the reference answers; name it with "
                    f"--reference-col. Columns: {', '.join(map(str, df.columns))}")


def _text(value) -> str:
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


def pair_items(df: pd.DataFrame, prompt_col: str, response_col: str, reference_col: str) -> list[PairItem]:
    return [PairItem(_text(p), _text(a), _text(r))
            for p, a, r in zip(df[prompt_col], df[response_col], df[reference_col])]


def answered_rows(df: pd.DataFrame) -> list[bool]:
    """False where a ``status`` column (``robalign generate``) says the generation failed."""
    if "status" not in df.columns:
        return [True] * len(df)
    return [str(s) != STATUS_FAILED for s in df["status"]]


@dataclass
class PairwiseResult:
    frame: pd.DataFrame  # the input rows plus the verdict columns
    stats: dict[str, Any]  # ``win_rates``
    summary: RunSummary  # judge calls, cache hits, tokens
    judge: str  # its name, e.g. llm:openai:m@http://127.0.0.1:8000/v1#pairwise
    template: str  # the template version, e.g. pairwise@3e601d7d
    failed: int = 0  # rows FAILED because a judge call failed (a re-run retries them)
    not_judged: int = 0  # rows FAILED because their generation failed (never sent)


def compare_table(df: pd.DataFrame, items: list[PairItem], judge_spec: str | dict, cache: ResponseCache | None,
                  options: dict[str, Any], prefix: str = "pair_", level: float = 0.95, n_boot: int = 1000,
                  seed: int = 0, progress: bool = True) -> PairwiseResult:
    """``judge pairwise``: both orders of every row, the outcome columns and the rates.
    Columns added: ``<prefix>raw_model_a``, ``choice_model_a``, ``raw_model_b``, ``choice_model_b``
    (``model_a``: the model's answer shown as reply A), ``outcome`` and ``consistent``."""
    judge = pairwise_judge(judge_spec, cache, **options)
    answered = answered_rows(df)
    verdicts = judge_pairs(judge, items, answered, progress=progress)
    out = df.copy()
    added = {"raw_model_a": [v.raw_model_a for v in verdicts], "choice_model_a": [v.choice_model_a for v in verdicts],
             "raw_model_b": [v.raw_model_b for v in verdicts], "choice_model_b": [v.choice_model_b for v in verdicts],
             "outcome": [v.outcome for v in verdicts], "consistent": [v.consistent for v in verdicts]}
    for name, values in added.items():
        out[prefix + name] = values
    failed = sum(v.outcome == FAILED for v, ok in zip(verdicts, answered) if ok)
    return PairwiseResult(out, win_rates(verdicts, level, n_boot, seed), judge.summary, judge.name,
                          judge.template.version, failed, answered.count(False))
