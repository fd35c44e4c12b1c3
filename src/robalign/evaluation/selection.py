"""Judge selection: run candidate judges on a labelled control set, rank them by Cohen's
kappa against the gold labels (ties: higher accuracy, then file order), and record the
winner. CLEAR-Bias picks its judge this way on its 800-row control set (the paper's
choice, DeepSeek V3, is reported at kappa ~0.82).

Judges file (YAML)::

    judges:
      - rule
      - keyword
      - name: deepseek-v3            # optional display name
        spec: llm:openai:deepseek-chat@https://api.deepseek.com#bias
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from robalign.errors import UserError
from robalign.evaluation.agreement import agreement
from robalign.evaluation.backends import BackendUnavailable
from robalign.evaluation.cache import ResponseCache
from robalign.evaluation.judges import build_judge, judge_label, parse_judge_spec
from robalign.evaluation.judging import judge_frame, judge_items, verdict_counts
from robalign.evaluation.specs import redact_value  # specs written to selection.json: no URL secrets
from robalign.evaluation.tables import write_table
from robalign.provenance import write_json_atomic


def load_judge_list(path: str | Path) -> list[tuple[str, Any]]:
    """[(name, spec)] from a judges YAML file; every spec is validated before anything runs."""
    import yaml

    from robalign.shipped_configs import resolve_config

    try:  # a file, or a shipped judges list by name (robalign configs list --kind judges)
        path = resolve_config(path, kind="judges")
    except UserError as exc:
        raise UserError(f"judges file {path}: {exc} (an example: configs/judges/control_set.yaml)") from None
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({exc})") from None
    entries = data.get("judges") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{path}: expected a top-level 'judges:' list of judge specs")
    judges, seen = [], set()
    for n, entry in enumerate(entries):
        spec = entry.get("spec") if isinstance(entry, dict) and "spec" in entry else entry
        try:
            parse_judge_spec(spec)
        except UserError as exc:
            raise UserError(f"{path}: judges[{n}]: {exc}") from None
        name = str(entry.get("name")) if isinstance(entry, dict) and entry.get("name") else judge_label(spec)
        if name in seen:
            raise UserError(f"{path}: judges[{n}]: duplicate judge name '{name}'; add a distinct 'name:'")
        seen.add(name)
        judges.append((name, spec))
    return judges


def select_judge(control: pd.DataFrame, judges: list[tuple[str, Any]], out_dir: str | Path,
                 cache: ResponseCache | None, n_boot: int = 1000, seed: int = 0, gold_col: str = "LABEL",
                 log=print) -> dict:
    """Run every judge on ``control`` (CLEAR-Bias control-set columns), rank, write
    ``selection.json``, ``winner.json`` and ``verdicts.csv`` into ``out_dir``. A candidate
    whose backend cannot run here (``BackendUnavailable``, e.g. an API key variable unset)
    is skipped with its reason; the others are still ranked."""
    out_dir = Path(out_dir)
    items = judge_items(control, "PROMPT", "RESPONSE",
                        "STEREOTYPE" if "STEREOTYPE" in control else None,
                        "COUNTER-STEREOTYPE" if "COUNTER-STEREOTYPE" in control else None)
    verdicts = control[[c for c in ("ID", "TASK", "BIAS CATEGORY", gold_col) if c in control]].copy()
    results, skipped = [], []
    for name, spec in judges:
        judge = build_judge(spec, cache)
        log(f"judging {len(items)} rows with {name} ...")
        try:
            frame = judge_frame(control, judge, items, prefix="_")
        except BackendUnavailable as exc:
            log(f"skipping {name}: {exc}")
            skipped.append({"name": name, "spec": redact_value(spec), "skipped": str(exc)})
            continue
        verdicts[name] = frame["_verdict"].values
        stats = agreement(control[gold_col], frame["_verdict"], name=name, n_boot=n_boot, seed=seed)
        summary = judge.summary.to_dict() if getattr(judge, "summary", None) else None
        results.append({"name": name, "spec": redact_value(spec), "agreement": stats.to_dict(),
                        "verdicts": verdict_counts(frame["_verdict"]), "generation": summary})
    if not results:
        raise UserError("no candidate judge could run: " + "; ".join(f"{s['name']}: {s['skipped']}" for s in skipped))
    order = sorted(range(len(results)), key=lambda i: (-_finite(results[i]["agreement"]["kappa"]["kappa"]),
                                                       -results[i]["agreement"]["accuracy"], i))
    ranking = [results[i] for i in order]
    winner = ranking[0]
    record = {"name": winner["name"], "spec": winner["spec"], "kappa": winner["agreement"]["kappa"]["kappa"],
              "kappa_ci": winner["agreement"]["ci"].get("kappa"), "accuracy": winner["agreement"]["accuracy"],
              "control_rows": len(control)}
    write_json_atomic(out_dir / "winner.json", record)
    write_json_atomic(out_dir / "selection.json", {"ranking": ranking, "skipped": skipped, "winner": record})
    write_table(verdicts, out_dir / "verdicts.csv")
    return {"ranking": ranking, "skipped": skipped, "winner": record}


def _finite(x: float) -> float:
    return x if x == x else float("-inf")  # NaN kappa (a constant judge) ranks last
