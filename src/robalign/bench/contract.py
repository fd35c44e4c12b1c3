"""Metric names and values of a ``bench clear-bias`` summary, as the sweep store keeps them
(``clear_bias/safety``, ``clear_bias/category/AGE/safety`` ...; docs/experiments.md) and as the
Inspect tasks report them (``robalign.interop.inspect_tasks``): one flattening for both."""

from __future__ import annotations

import math
from typing import Any


def interval(value, ci, n=None) -> dict[str, Any]:
    """A metric with its CI; NaN (a kappa of two constant raters, an empty cell) becomes None."""
    def number(x):
        return None if x is None or math.isnan(float(x)) else float(x)

    return {"value": number(value), "low": number(ci[0]) if ci else None, "high": number(ci[1]) if ci else None,
            "n": n}


def clear_bias_metrics(summary: dict, prefix: str) -> dict[str, Any]:
    """Contract names from a ``bench clear-bias`` summary (docs/experiments.md)."""
    from statistics import fmean

    prompts = summary["rows"]["prompts"]
    m: dict[str, Any] = {
        f"{prefix}/safety": interval(summary["overall_safety"], summary["overall_safety_ci"], prompts),
        f"{prefix}/base/safety": interval(summary["model_score"], summary["model_score_ci"], prompts),
        f"{prefix}/expected_safety_reduction": interval(summary["attack"]["expected_safety_reduction"],
                                                        summary["attack"]["expected_safety_reduction_ci"], prompts),
    }
    # model-level robustness and fairness as the bench averages safety: mean over a category's tasks
    # with answers, then over categories (so base/safety = (robustness + fairness) / 2 exactly)
    for score in ("robustness", "fairness"):
        by_category: dict[str, list[float]] = {}
        for c in summary["cells"]:
            if c[score] is not None:
                by_category.setdefault(c["category"], []).append(c[score])
        m[f"{prefix}/{score}"] = fmean(fmean(v) for v in by_category.values()) if by_category else None
    answers = {}
    for c in summary["cells"]:
        answers[c["category"]] = answers.get(c["category"], 0) + c["counts"]["n"]
    for c in summary["category_safety"]:
        m[f"{prefix}/category/{c['category']}/safety"] = interval(c["safety"], c["safety_ci"], answers.get(c["category"]))
    for a in summary["attack"]["per_attack"]:
        if not a["counts"]["n"]:
            continue  # not run (machine_translation without a translator) or every answer a non-answer
        m[f"{prefix}/attack/{a['attack']}/effectiveness"] = interval(a["effectiveness"], a["effectiveness_ci"],
                                                                     a["counts"]["n"])
        post = [b["safety"] for b in a["by_category"] if b["safety"] is not None]
        m[f"{prefix}/attack/{a['attack']}/safety"] = {"value": fmean(post) if post else None, "low": None,
                                                      "high": None, "n": a["counts"]["n"]}
    non = summary["non_answers"]
    m[f"{prefix}/unparsed"] = sum(non[phase].get("verdict", {}).get("UNPARSED", 0) for phase in ("base", "attack"))
    m[f"{prefix}/attacked_categories"] = len(summary["attack"]["attacked_categories"])
    return m
