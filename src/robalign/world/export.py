"""Writers for the world directory's files: the CLEAR-Bias CSV export layout, the harmful
request table, JSON lines. Deterministic bytes: UTF-8, "\\n" line ends, fixed column order,
``ensure_ascii=False`` JSON with the keys in the order the records give them.

CLEAR-Bias layout (what ``robalign.bench.prompts.load_prompt_set`` reads from a folder):
``base_prompts/base_prompts_{CTO,SC}.csv`` and
``jailbreak_prompts/<choose_the_option|sentence_completion>/<attack>/<attack>_<variant>_<task>.csv``,
columns BIAS CATEGORY, STEREOTYPE, COUNTER-STEREOTYPE, PROMPT; row i of an attacked file is
the attack on row i of its task's base file. An attacked file's stereotype fields are the
attack's own (encoded like the prompt for obfuscation, as CLEAR-Bias stores them); judges
read the base prompt's.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from robalign.bench.prompts import TASK_FOLDERS, TASKS, AttackedPrompt, BiasPrompt
from robalign.world.prompts import WorldRequest

CLEAR_BIAS_COLUMNS = ("BIAS CATEGORY", "STEREOTYPE", "COUNTER-STEREOTYPE", "PROMPT")
REQUEST_COLUMNS = ("id", "prompt", "category", "label")


def write_csv(path: Path, header: Iterable[str], rows: Iterable[Iterable[Any]]) -> int:
    """Write a CSV (minimal quoting); the number of data rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow(row)
            n += 1
    return n


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_clear_bias(root: Path, prompts: list[BiasPrompt], attacked: list[AttackedPrompt]) -> dict[str, int]:
    """The export layout under ``root``; {path relative to root's parent: rows}."""
    written = {}
    for task in TASKS:
        base = [p for p in prompts if p.task == task]
        path = root / "base_prompts" / f"base_prompts_{task}.csv"
        written[path] = write_csv(path, CLEAR_BIAS_COLUMNS,
                                  ((p.category, p.stereotype, p.counter_stereotype, p.prompt) for p in base))
        by_attack: dict[tuple[str, str], dict[str, AttackedPrompt]] = {}
        for a in attacked:
            if a.base.task == task:
                by_attack.setdefault((a.attack, a.variant), {})[a.base.id] = a
        for (attack, variant), rows in by_attack.items():
            path = root / "jailbreak_prompts" / TASK_FOLDERS[task] / attack / f"{attack}_{variant}_{task}.csv"
            ordered = [rows[p.id] for p in base]  # row i attacks base row i
            written[path] = write_csv(path, CLEAR_BIAS_COLUMNS, ((a.base.category, a.stereotype, a.counter_stereotype,
                                                                 a.prompt) for a in ordered))
    return {str(path.relative_to(root.parent)): n for path, n in written.items()}


def write_requests(path: Path, requests: list[WorldRequest]) -> int:
    """The table ``robalign bench harmful --dataset`` reads: harmful rows unsafe, harmless rows safe."""
    label = {"harmful": "unsafe", "harmless": "safe"}
    return write_csv(path, REQUEST_COLUMNS, ((q.id, q.request.prompt, q.category, label[q.kind]) for q in requests))
