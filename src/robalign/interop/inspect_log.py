"""``robalign bench export-inspect RUN --out DIR``: a bench run as an Inspect log, for ``inspect view``.

A ``bench clear-bias`` or ``bench harmful`` run directory (``run.json``, ``responses.jsonl``,
``summary.json``) becomes one ``.eval`` file written by Inspect's own log API
(``inspect_ai.log.write_eval_log``): one sample per row of the run table, with the prompt as sent,
the answer, the judge's raw output and label as the score, and the row's phase, category, task,
attack and variant as metadata; the results hold the same metric groups as the Inspect tasks
(``robalign.interop.inspect_tasks``), computed from the run's ``summary.json``. A row whose label
is not a class (UNPARSED, JUDGE_REFUSED, FAILED) is unscored with the label as its reason; a row
whose generation failed carries the failure as its sample error.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from robalign.errors import UserError

SCORERS = {"clear-bias": "bias_judge", "harmful": "harmful_judge"}
TASKS = {"clear-bias": "robalign/clear_bias", "harmful": "robalign/harmful"}


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _score(label: str, classes: tuple[str, ...], answer: str, explanation: str, metadata: dict):
    from inspect_ai.scorer import Score

    if label in classes:
        return Score(value=label, answer=answer, explanation=explanation, metadata=metadata)
    return Score.unscored(reason=label or "not judged", answer=answer, explanation=explanation, metadata=metadata)


def _sample(sample_id, row: dict, model: str, meta: dict, scorer: str, score):
    """One EvalSample of a run-table row: the prompt, the answer (none for a failed generation, which
    is the sample's error), the row's metadata and its judge's score."""
    from inspect_ai.log import EvalError, EvalSample
    from inspect_ai.model import ChatMessageAssistant, ChatMessageUser, ModelOutput

    prompt, answer = _text(row.get("prompt")), _text(row.get("response"))
    failed = _text(row.get("status")) not in ("", "answered")
    return EvalSample(
        id=sample_id, epoch=1, input=prompt, target="", metadata=meta,
        messages=[ChatMessageUser(content=prompt)] + ([] if failed else [ChatMessageAssistant(content=answer, model=model)]),
        output=ModelOutput.from_content(model=model, content=answer), scores={scorer: score},
        error=EvalError(message=f"generation failed: {_text(row.get('reason'))}", traceback="", traceback_ansi="")
        if failed else None)


def _clear_bias_sample(n: int, row: dict, model: str):
    from robalign.interop.inspect_tasks import FINAL_CLASSES

    final = _text(row.get("final"))
    meta = {k: _text(row.get(k)) for k in ("phase", "category", "task", "attack", "variant", "prompt_id", "row_id",
                                           "status", "verdict", "rm")}
    score_meta = {"label": _text(row.get("verdict")), "verdict": _text(row.get("verdict")), "rm": _text(row.get("rm")),
                  "final": final, "judge_prompt": _text(row.get("judge_prompt"))}
    explanation = _text(row.get("judge_raw")) or _text(row.get("rm_raw"))
    score = _score(final, FINAL_CLASSES, _text(row.get("response")), explanation, score_meta)
    return _sample(meta["row_id"] or n, row, model, meta, SCORERS["clear-bias"], score)


def _harmful_sample(n: int, row: dict, model: str):
    unsafe = _text(row.get("label")) == "unsafe"
    meta = {k: _text(row.get(k)) for k in ("id", "category", "label", "type", "status")}
    score_meta = {"refusal": _text(row.get("refusal")), "refusal_raw": _text(row.get("refusal_raw")),
                  "safety": _text(row.get("safety")), "safety_raw": _text(row.get("safety_raw"))}
    label, classes = ((score_meta["safety"], ("safe", "unsafe")) if unsafe
                      else (score_meta["refusal"], ("R", "NR", "C", "P")))
    explanation = score_meta["safety_raw" if unsafe else "refusal_raw"]
    score = _score(label, classes, _text(row.get("response")), explanation, score_meta)
    return _sample(meta["id"] or n, row, model, meta, SCORERS["harmful"], score)


def _metrics(kind: str, summary: dict) -> dict[str, Any]:
    from inspect_ai.log import EvalMetric

    from robalign.interop.inspect_tasks import LEVELS, harmful_level

    groups = {"harmful_scores": harmful_level} if kind == "harmful" else LEVELS
    out = {}
    for group, level in groups.items():
        for name, value in level(summary).items():
            out[name] = EvalMetric(name=name, value=value, group=group if len(groups) > 1 else None)
    return out


def export_run(run: str | Path, out: str | Path) -> Path:
    """Write RUN as an Inspect ``.eval`` log into the directory ``out``; returns the file."""
    from inspect_ai.log import (
        EvalConfig,
        EvalDataset,
        EvalLog,
        EvalPlan,
        EvalPlanStep,
        EvalResults,
        EvalScore,
        EvalSpec,
        EvalStats,
        write_eval_log,
    )

    from robalign.evaluation.tables import read_table

    run = Path(run)
    files = {name: run / name for name in ("run.json", "responses.jsonl", "summary.json")}
    missing = [name for name, path in files.items() if not path.is_file()]
    if missing:
        raise UserError(f"{run}: no {', '.join(missing)}; export-inspect reads a finished `robalign bench clear-bias` "
                        "or `robalign bench harmful` run directory (run it again with the same --out to finish it)")
    record = json.loads(files["run.json"].read_text(encoding="utf-8"))
    kind = record.get("kind")
    if kind not in SCORERS:
        raise UserError(f"{files['run.json']}: kind '{kind}' cannot be exported; export-inspect reads clear-bias and "
                        "harmful runs")
    summary = json.loads(files["summary.json"].read_text(encoding="utf-8"))
    rows = read_table(files["responses.jsonl"])
    model = str(summary.get("model") or "unknown")
    make = _clear_bias_sample if kind == "clear-bias" else _harmful_sample
    samples = [make(n, row, model) for n, row in enumerate(rows.to_dict("records"), 1)]
    scorer = SCORERS[kind]
    scored = sum(1 for s in samples if not _unscored(s.scores[scorer].value))
    created = datetime.fromtimestamp(files["run.json"].stat().st_mtime, UTC)
    finished = datetime.fromtimestamp(files["summary.json"].stat().st_mtime, UTC)
    arguments = record.get("arguments", {})
    judge = summary.get("judge", {})
    log = EvalLog(
        status="success",
        eval=EvalSpec(
            created=created.isoformat(), task=TASKS[kind], task_args=_jsonable(arguments), model=model,
            dataset=EvalDataset(name=str(summary.get("data") or (summary.get("dataset") or {}).get("name") or kind),
                                samples=len(samples), sample_ids=[s.id for s in samples]),
            config=EvalConfig(), metadata={"robalign_run": str(run.resolve()), "fingerprint": record.get("fingerprint"),
                                           "judge": _jsonable(judge), "exported_by": "robalign bench export-inspect"}),
        plan=EvalPlan(name="robalign bench", steps=[EvalPlanStep(solver=f"robalign bench {kind}", params={})]),
        results=EvalResults(total_samples=len(samples), completed_samples=len(samples), scores=[
            EvalScore(name=scorer, scorer=scorer, scored_samples=scored, unscored_samples=len(samples) - scored,
                      metrics=_metrics(kind, summary))]),
        stats=EvalStats(started_at=created.isoformat(), completed_at=finished.isoformat()),
        samples=samples)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = created.strftime("%Y-%m-%dT%H-%M-%S+00-00")
    path = out / f"{stamp}_robalign-{kind}_{str(record.get('fingerprint', 'run'))[:12]}.eval"
    write_eval_log(log, str(path))
    return path


def _unscored(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
