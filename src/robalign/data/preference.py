"""Preference pairs and their loaders (JSONL / CSV / Parquet, Hugging Face datasets,
HH-RLHF, PKU-SafeRLHF).

``load_pairs`` reads records from a source, picks a format (``auto`` looks at the first
record's columns) and turns each record into a :class:`PreferencePair`. Every problem
with the data raises :class:`DataError` naming the source, the 1-based data row (header
and blank lines not counted) or the column, and the fix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from robalign.data.sources import DataError, Rows, open_source

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]  # [{"role": "user", "content": ...}, ...]


@dataclass(frozen=True)
class PreferencePair:
    id: str
    prompt: str | Messages  # plain text, or chat messages ending with a user turn
    chosen: str  # the response preferred by the (possibly noisy) label
    rejected: str
    soft_label: float | None = None  # P(chosen is truly preferred); None = hard label
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


FORMATS = ("auto", "pairs", "hh_rlhf", "pku_saferlhf")
# The fields the formats read; `columns` maps any of them to a differently named column.
FIELDS = ("prompt", "chosen", "rejected", "soft_label", "id", "response_0", "response_1", "safer_response_id",
          "is_response_0_safe", "is_response_1_safe", "response")
ASSISTANT = "\n\nAssistant:"  # HH-RLHF turn markers
TURN = re.compile(r"\n\n(Human|Assistant):")
ROLES = {"Human": "user", "Assistant": "assistant"}


def load_pairs(source: str, *, format: str = "auto", columns: dict[str, str] | None = None,
               split: str = "train", limit: int | None = None, on_invalid: str = "error",
               skipped_rows: list[int] | None = None) -> list[PreferencePair]:
    """Read preference pairs from ``source`` (a file, a directory, ``hf:<id>[:<config>]`` or
    ``synthetic[:N]``; see ``robalign.data.sources.SOURCES_HELP``).

    format: ``pairs`` (prompt/chosen/rejected, optional soft_label and id), ``hh_rlhf`` (whole
    dialogues), ``pku_saferlhf`` (response_0/1 + safer_response_id, or the realign file's
    ``response`` = [safer, less safe]) or ``auto``. columns: our field -> the source's column.
    limit: keep the first N pairs. on_invalid: ``error`` raises on a bad row; ``skip`` drops
    rows whose content is unusable (empty text, identical responses, bad soft label, broken
    dialogue), logs their row numbers and appends them to ``skipped_rows`` when given (so a run
    can record them); structural problems (missing columns, bad JSON, duplicate ids) always raise.
    """
    if format not in FORMATS:
        raise DataError(f"unknown data format '{format}'; use one of {', '.join(FORMATS)} (data.format)")
    if on_invalid not in ("error", "skip"):
        raise DataError(f"on_invalid must be 'error' or 'skip', got '{on_invalid}'")
    unknown = [name for name in columns or {} if name not in FIELDS]
    if unknown:
        raise DataError(f"data.columns names unknown field(s) {', '.join(unknown)}; it maps our field -> your "
                        f"column, and our fields are {', '.join(FIELDS)}")
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive number of pairs, got {limit} (data.limit)")
    if source == "synthetic" or source.startswith("synthetic:"):
        return _synthetic(source, limit)
    rows = open_source(source, split)
    pairs = _convert(rows, format, dict(columns or {}), limit, on_invalid, skipped_rows)
    if not pairs:
        raise DataError(f"{rows.where}: no preference pairs (empty data set); point data.train at a file with rows")
    return pairs


def split_holdout(pairs: Sequence[PreferencePair], fraction: float,
                  seed: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, eval): hold out about ``fraction`` of the pairs, whole prompts at a time.

    Pairs sharing a prompt land on the same side: PKU-SafeRLHF repeats each prompt ~5.5
    times, and a per-pair split would evaluate on training prompts. Prompt groups are
    shuffled with ``random.Random(seed)`` and moved to eval until it holds at least
    ``max(1, round(fraction * n))`` pairs (it may overshoot by part of one group); one group
    always stays in train. Both sides keep the input order. fraction 0 -> (all, []).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"eval fraction must lie in [0, 1), got {fraction}")
    pairs = list(pairs)
    if fraction == 0.0 or not pairs:
        return pairs, []
    groups: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        groups.setdefault(_prompt_key(pair.prompt), []).append(i)
    if len(groups) < 2:
        raise DataError(f"cannot hold out an eval split: all {len(pairs)} pairs share one prompt; "
                        "give a separate data.eval or set data.eval_fraction=0")
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    target = max(1, round(fraction * len(pairs)))
    held: set[int] = set()
    for indices in order[:-1]:
        if len(held) >= target:
            break
        held.update(indices)
    return ([p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held])


def data_fingerprint(pairs: Iterable[PreferencePair]) -> str:
    """sha256 hex over (id, prompt, chosen, rejected, soft_label) of each pair, in order; meta is left out."""
    digest = hashlib.sha256()
    for p in pairs:
        record = [p.id, p.prompt, p.chosen, p.rejected, p.soft_label]
        digest.update(json.dumps(record, ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\n")
    return digest.hexdigest()


# ---------------------------------------------------------------- records -> pairs


def _synthetic(source: str, limit: int | None) -> list[PreferencePair]:
    from robalign.data.synthetic import synthetic_pairs  # synthetic imports this module

    count = source.partition(":")[2] or "400"
    if not count.isdigit() or int(count) < 1:
        raise DataError(f"'{source}': write synthetic or synthetic:N with N a positive number of pairs")
    return synthetic_pairs(n=int(count))[:limit]


class _BadRow(Exception):
    """One record is unusable; _convert adds the source and row. missing: the column is absent."""

    def __init__(self, column: str, problem: str = "", fix: str = "", missing: bool = False):
        super().__init__(f"column '{column}': {problem}; {fix}")
        self.column, self.missing = column, missing


def _convert(rows: Rows, format: str, columns: dict[str, str], limit: int | None,
             on_invalid: str, skipped: list[int] | None = None) -> list[PreferencePair]:
    pairs: list[PreferencePair] = []
    first_row: dict[str, int] = {}  # id -> row, for duplicate-id messages
    skipped = [] if skipped is None else skipped
    convert = None
    for index, record in enumerate(rows.records):
        row = index + 1
        at = f"{rows.where}: row {row} (1-based data row{f'; line {rows.lines[index]}' if rows.lines else ''})"
        if not isinstance(record, dict):
            raise DataError(f"{at}: expected a record with named fields, got {type(record).__name__}")
        record = _remap(record, columns, at)
        if convert is None:
            convert = CONVERTERS[format if format != "auto" else _detect(record, at, columns)]
        try:
            pair = convert(record, f"{rows.stem}-{index}")
            if pair.chosen.strip() == pair.rejected.strip():
                raise _BadRow("chosen/rejected", "chosen and rejected are identical, so the row carries no preference",
                              "drop the row or fix one of the responses")
        except _BadRow as exc:
            if exc.missing:  # structural: never skipped
                raise DataError(_missing_message(at, exc.column, record, columns)) from None
            if on_invalid == "error":
                raise DataError(f"{at}, {exc} (or skip such rows: data.on_invalid=skip)") from None
            skipped.append(row)
            continue
        if pair.id in first_row:
            raise DataError(f"{at}, column 'id': duplicate id '{pair.id}' (first used in row {first_row[pair.id]}); "
                            "ids must be unique: fix the id column or drop it to derive ids from row numbers")
        first_row[pair.id] = row
        pairs.append(pair)
        if limit is not None and len(pairs) >= limit:
            break
    if skipped:
        shown = ", ".join(map(str, skipped[:20])) + (" ..." if len(skipped) > 20 else "")
        log.warning("%s: skipped %d invalid row(s) (1-based data rows %s)", rows.where, len(skipped), shown)
    return pairs


def _remap(record: dict[str, Any], columns: dict[str, str], at: str) -> dict[str, Any]:
    if not columns:
        return record
    out = dict(record)
    for name, column in columns.items():
        if column not in record:
            raise DataError(f"{at}: data.columns maps {name} to column '{column}', which is not there "
                            f"(columns found: {', '.join(map(str, record))}); fix the mapping")
        out[name] = record[column]
    return out


def _missing_message(at: str, column: str, record: dict[str, Any], columns: dict[str, str]) -> str:
    found = [str(k) for k in record if k not in columns.values()]
    guess = next((k for k in found if k not in FIELDS), found[0] if found else "...")
    return (f"{at}: missing column '{column}' (columns found: {', '.join(found) or 'none'}); "
            f"name the column that holds it with data.columns, e.g. data.columns={{{column}: {guess}}}")


def _detect(record: dict[str, Any], at: str, columns: dict[str, str]) -> str:
    keys = set(record)
    if {"response_0", "response_1", "safer_response_id"} <= keys:
        return "pku_saferlhf"
    if {"prompt", "response"} <= keys and isinstance(record["response"], list):
        return "pku_saferlhf"  # the realign derivative: response = [safer, less safe]
    if {"prompt", "chosen", "rejected"} <= keys:
        return "pairs"
    if {"chosen", "rejected"} <= keys and ASSISTANT in str(record["chosen"]):
        return "hh_rlhf"
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in keys]
    spare = [str(k) for k in record if k not in ("prompt", "chosen", "rejected", *columns, *columns.values())]
    example = ", ".join(f"{m}: {c}" for m, c in zip(missing, spare + ["<column>"] * len(missing)))
    raise DataError(f"{at}: cannot tell the data format from the columns ({', '.join(map(str, record))}). "
                    "Expected prompt/chosen/rejected (pairs), chosen/rejected dialogues with \"\\n\\nAssistant:\" "
                    "(hh_rlhf), or prompt/response_0/response_1/safer_response_id (pku_saferlhf). Map your columns "
                    f"with data.columns, e.g. data.columns={{{example}}}, or set data.format")


def _get(record: dict[str, Any], column: str) -> Any:
    if column not in record:
        raise _BadRow(column, missing=True)
    return record[column]


def _text(value: Any, column: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        value = ""
    if not isinstance(value, str):
        raise _BadRow(column, f"expected text, got {type(value).__name__} {value!r}", "store the text as a string")
    if not value.strip():
        raise _BadRow(column, "empty or whitespace-only text", "fill in the text or drop the row")
    return value


def _prompt(value: Any, column: str = "prompt") -> str | Messages:
    if not isinstance(value, list):
        return _text(value, column)
    messages = []
    for turn in value:
        if not (isinstance(turn, dict) and turn.get("role") in ("system", "user", "assistant")
                and isinstance(turn.get("content"), str)):
            raise _BadRow(column, f"a chat message must be {{role: system|user|assistant, content: text}}, got {turn!r}",
                          "fix the message list")
        messages.append({"role": turn["role"], "content": turn["content"]})
    if not messages or messages[-1]["role"] != "user":
        raise _BadRow(column, "a chat prompt must end with a user turn", "drop trailing assistant turns")
    _text(messages[-1]["content"], column)
    return messages


def _id(record: dict[str, Any], default: str) -> str:
    if "id" not in record:
        return default
    value = record["id"]
    if value is None or str(value).strip() == "":
        raise _BadRow("id", "empty id", "fill in every id, or drop the id column to derive ids from row numbers")
    return str(value)


def _soft_label(record: dict[str, Any]) -> float | None:
    value = record.get("soft_label")
    if value is None or value == "":  # column absent, null, or an empty CSV cell: a hard label
        return None
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not 0.0 <= number <= 1.0:  # also rejects NaN
        raise _BadRow("soft_label", f"{value!r} is not a number in [0, 1]",
                      "a soft label is P(chosen is preferred): give a number in [0, 1] or leave it empty")
    return number


def _binary(value: Any, column: str, truth: bool = False) -> int:
    """0/1 (also "0"/"1", and for flags true/false) from JSON, CSV or Parquet cells."""
    text = str(value).strip().lower()
    if truth and text in ("true", "false"):
        return int(text == "true")
    if not isinstance(value, bool) and text in ("0", "1", "0.0", "1.0"):
        return int(float(text))
    raise _BadRow(column, f"expected {'true/false' if truth else '0 or 1'}, got {value!r}", "fix the value")


def _from_pairs(record: dict[str, Any], default_id: str) -> PreferencePair:
    return PreferencePair(id=_id(record, default_id), prompt=_prompt(_get(record, "prompt")),
                          chosen=_text(_get(record, "chosen"), "chosen"),
                          rejected=_text(_get(record, "rejected"), "rejected"), soft_label=_soft_label(record))


def _from_hh(record: dict[str, Any], default_id: str) -> PreferencePair:
    """Split two whole dialogues at the end of their shared prefix's last "\\n\\nAssistant:"."""
    chosen, rejected = _text(_get(record, "chosen"), "chosen"), _text(_get(record, "rejected"), "rejected")
    for column, dialogue in (("chosen", chosen), ("rejected", rejected)):
        if ASSISTANT not in dialogue:
            raise _BadRow(column, 'the dialogue has no "\\n\\nAssistant:" turn',
                          'HH-RLHF rows are whole dialogues "\\n\\nHuman: ...\\n\\nAssistant: ..."; '
                          "for plain prompt/chosen/rejected columns use data.format=pairs")
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(ASSISTANT)
    if cut < 0:
        raise _BadRow("chosen/rejected", 'the two dialogues share no prefix ending in "\\n\\nAssistant:"',
                      "both must be the same dialogue up to the final assistant reply")
    start = cut + len(ASSISTANT)
    return PreferencePair(id=_id(record, default_id), prompt=_hh_messages(shared[:cut]),
                          chosen=_text(chosen[start:].strip(), "chosen"),
                          rejected=_text(rejected[start:].strip(), "rejected"), soft_label=_soft_label(record))


def _hh_messages(dialogue: str) -> Messages:
    """"\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c" -> user/assistant/user messages.

    Consecutive turns of one role are merged (4 of the 2,312 harmless-base test rows have
    two assistant turns in a row), so strict chat templates accept the result.
    """
    if not dialogue.startswith("\n\n"):
        dialogue = "\n\n" + dialogue  # some copies drop the leading blank line
    parts = TURN.split(dialogue)
    if parts[0].strip():
        raise _BadRow("chosen", f"text before the first Human:/Assistant: turn: {parts[0][:60]!r}",
                      'start the dialogue with "\\n\\nHuman:"')
    messages: Messages = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        role, content = ROLES[speaker], content.strip()
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n\n" + content
        else:
            messages.append({"role": role, "content": content})
    if not messages or messages[-1]["role"] != "user":
        raise _BadRow("chosen", "the prompt (the dialogue before the final assistant reply) does not end with "
                      "a Human turn", "each row must end with a Human turn followed by the assistant reply")
    _text(messages[-1]["content"], "chosen")
    return messages


def _from_pku(record: dict[str, Any], default_id: str) -> PreferencePair:
    """chosen = the safer response; meta chosen_safe / rejected_safe from is_response_*_safe.

    The realign derivative (xinykou/safety_realignment) has ``response`` = [safer, less safe]
    instead; its filter kept only pairs with exactly one safe response, so chosen is safe
    and rejected unsafe.
    """
    if "response_0" not in record and isinstance(record.get("response"), list):
        if len(record["response"]) != 2:
            raise _BadRow("response", f"expected [safer, less safe], got {len(record['response'])} responses",
                          "fix the list")
        safe, unsafe = (_text(text, f"response[{k}]") for k, text in enumerate(record["response"]))
        record = {**record, "response_0": safe, "response_1": unsafe, "safer_response_id": 0,
                  "is_response_0_safe": True, "is_response_1_safe": False}
    safer = _binary(_get(record, "safer_response_id"), "safer_response_id")
    responses = [_text(_get(record, f"response_{k}"), f"response_{k}") for k in (0, 1)]
    meta = {}
    for side, k in (("chosen", safer), ("rejected", 1 - safer)):
        column = f"is_response_{k}_safe"
        if column in record:  # optional: pairs load without them, the safety probe needs them
            meta[f"{side}_safe"] = bool(_binary(record[column], column, truth=True))
    return PreferencePair(id=_id(record, default_id), prompt=_prompt(_get(record, "prompt")),
                          chosen=responses[safer], rejected=responses[1 - safer],
                          soft_label=_soft_label(record), meta=meta)


CONVERTERS = {"pairs": _from_pairs, "hh_rlhf": _from_hh, "pku_saferlhf": _from_pku}


def _prompt_key(prompt: str | Messages) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)
