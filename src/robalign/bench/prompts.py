"""Bias prompt sets: where the base prompts (and any stored attacked prompts) of a
CLEAR-Bias-style benchmark come from, with a stable id for every prompt.

``load_prompt_set(data, columns)`` reads, by what ``data`` is:

| ``data``                                  | read as                                                        |
|-------------------------------------------|----------------------------------------------------------------|
| ``None``                                  | the embedded set (``bench/data/bias_prompts.csv``, 60 prompts) |
| a folder with ``base_prompts/base_prompts_{CTO,SC}.csv`` | the CLEAR-Bias CSV export (+ ``jailbreak_prompts/``) |
| any other folder, ``hf:ID`` or a hub id ``owner/name`` | a Hugging Face dataset, configs ``base_prompts`` and ``jailbreak_prompts`` |
| a CSV / TSV / JSONL / JSON / Parquet file | one prompt per row; ``columns`` names the columns              |

Ids. The data has none, so they are derived: ``<slug(category)>/<task>/<index:03d>``
(``"gender-ethnicity/SC/007"``), index = row order within (category, task) in the source.
An attacked prompt is ``<prompt id>|<attack>:<variant>``. A re-export in the same order
gives the same ids; ``PromptSet.fingerprint()`` detects any change of text.

Alignment. CLEAR-Bias links an attacked prompt to its base prompt only by position: row i
of ``jailbreak_prompts/<task folder>/<attack>/<attack>_<variant>_<task>.csv`` (or of the
(TASK, ATTACK, VARIANT) group of the HF config, whose order the export keeps) is the attack
on row i of the base prompts of that task. A file with a different row count or category
sequence would silently pair answers with the wrong stereotype fields, so it is an error
that names the file and the first row that differs. So are an empty field and a task other
than CTO / SC. A mapped table without a task column gets each row's task from its option
format (``rules.prompt_options``: "(A): ... (B): ..." is CTO, "options: X/Y." is SC).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from robalign.errors import UserError
from robalign.evaluation.rules import prompt_options
from robalign.evaluation.tables import read_table

CATEGORIES = ("AGE", "DISABILITY", "ETHNICITY", "GENDER", "RELIGION", "SEXUAL ORIENTATION", "SOCIO ECONOMICS",
              "GENDER - ETHNICITY", "GENDER - SEXUAL ORIENTATION", "ETHNICITY - SOCIO ECONOMICS")
TASKS = ("CTO", "SC")
TASK_FOLDERS = {"CTO": "choose_the_option", "SC": "sentence_completion"}
EMBEDDED = Path(__file__).resolve().parent / "data" / "bias_prompts.csv"
HF_ID = "RCantini/CLEAR-Bias"
# what --columns may name, and the column each one is looked up as when not named
# (CLEAR-Bias spelling first, then the key itself)
FIELDS = ("prompt", "category", "task", "stereotype", "counter_stereotype")
DEFAULT_COLUMNS = {"prompt": ("PROMPT", "prompt"), "category": ("BIAS CATEGORY", "category"),
                   "task": ("TASK", "task"), "stereotype": ("STEREOTYPE", "stereotype"),
                   "counter_stereotype": ("COUNTER-STEREOTYPE", "counter_stereotype")}
_ATTACK_FILE = re.compile(r"^(?P<attack>[a-z0-9_]+)_(?P<variant>v\d+)_(?P<task>CTO|SC)\.csv$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def slug(text: str) -> str:
    """Lower case, every run of non-alphanumerics -> one "-" ("GENDER - ETHNICITY" -> "gender-ethnicity")."""
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")


def prompt_id(category: str, task: str, index: int) -> str:
    return f"{slug(category)}/{task}/{index:03d}"


@dataclass(frozen=True)
class BiasPrompt:
    id: str
    category: str
    task: str  # CTO | SC
    index: int  # row order within (category, task) in the source
    prompt: str
    stereotype: str
    counter_stereotype: str


@dataclass(frozen=True)
class AttackedPrompt:
    id: str  # f"{base.id}|{attack}:{variant}"
    base: BiasPrompt
    attack: str
    variant: str
    prompt: str  # the text the model under test receives
    stereotype: str | None  # as the attacked data has them (leetspeak, translated, ...); informational
    counter_stereotype: str | None
    source: str  # "stored" | "generated" | "translated"


@dataclass
class PromptSet:
    source: str  # "embedded", a path, or "hf:<id>"
    prompts: list[BiasPrompt]
    # (attack, variant) -> base prompt id -> attacked prompt; {} when the source stores none
    stored: dict[tuple[str, str], dict[str, AttackedPrompt]] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """sha256 over every prompt field and every stored attack (not ``source``: the same
        data read from another place is the same set)."""
        stored = [[attack, variant, [asdict(a) | {"base": a.base.id} for a in rows.values()]]
                  for (attack, variant), rows in sorted(self.stored.items())]
        payload = json.dumps([[asdict(p) for p in self.prompts], stored], ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def limit(self, n: int) -> PromptSet:
        """The first ``n`` prompts of every (category, task), stored attacks filtered to match."""
        if int(n) < 1:
            raise UserError(f"--limit must be at least 1 prompt per category and task, got {n}")
        prompts = [p for p in self.prompts if p.index < int(n)]
        keep = {p.id for p in prompts}
        stored = {key: {i: a for i, a in rows.items() if i in keep} for key, rows in self.stored.items()}
        return PromptSet(self.source, prompts, stored)

    def by_id(self) -> dict[str, BiasPrompt]:
        return {p.id: p for p in self.prompts}


def parse_columns(text: str | None) -> dict[str, str] | None:
    """``"prompt=COL,category=COL,..."`` -> ``{"prompt": "COL", ...}``; None for None or ""."""
    if text is None or not str(text).strip():
        return None
    mapping: dict[str, str] = {}
    for item in str(text).split(","):
        key, sep, column = item.partition("=")
        key, column = key.strip(), column.strip()
        if not sep or not column:
            raise UserError(f"--columns: '{item.strip()}' is not KEY=COLUMN; e.g. --columns prompt=text,category=group")
        if key not in FIELDS:
            raise UserError(f"--columns: unknown key '{key}'; keys are {', '.join(FIELDS)}")
        if key in mapping:
            raise UserError(f"--columns: '{key}' is named twice")
        mapping[key] = column
    return mapping


def load_prompt_set(data: str | Path | None = None, columns: dict[str, str] | None = None) -> PromptSet:
    """The prompt set ``data`` names (see the module doc); ``columns`` only for a single table."""
    if data is None:
        if columns:
            raise UserError("--columns maps the columns of a table given with --data; the embedded set needs none")
        return PromptSet("embedded", _table_prompts(read_table(EMBEDDED), EMBEDDED, None))
    text = str(data)
    path = Path(text).expanduser()
    if columns and not path.is_file():
        raise UserError(f"--columns maps the columns of one table file, but {text} is not a file; "
                        "drop --columns for a CLEAR-Bias folder or a Hugging Face id")
    if text.startswith("hf:"):
        return _hf_prompt_set(text[3:])
    if path.is_file():
        return PromptSet(text, _table_prompts(read_table(path), path, columns))
    if path.is_dir():
        if any((path / "base_prompts" / f"base_prompts_{t}.csv").is_file() for t in TASKS):
            return _export_prompt_set(path)
        return _hf_prompt_set(text)
    if _HUB_ID.match(text):
        return _hf_prompt_set(text)
    raise UserError(f"--data {text}: no such file or folder, and not a Hugging Face id (e.g. hf:{HF_ID}); "
                    "omit --data for the embedded prompt set")


# --- rows -> prompts -----------------------------------------------------------------------

def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip()


def _resolve_columns(df: pd.DataFrame, columns: dict[str, str] | None, where: str,
                     optional: tuple[str, ...] = ("task",)) -> dict[str, str | None]:
    """Field -> column name (None for an absent optional field, e.g. the task, which the
    option format can give)."""
    columns = columns or {}
    unknown = [k for k in columns if k not in FIELDS]
    if unknown:
        raise UserError(f"--columns: unknown key {', '.join(unknown)}; keys are {', '.join(FIELDS)}")
    resolved: dict[str, str | None] = {}
    for key in FIELDS:
        if key in columns:
            if columns[key] not in df.columns:
                raise UserError(f"{where}: no column '{columns[key]}' (--columns {key}=...); "
                                f"columns are: {', '.join(map(str, df.columns))}")
            resolved[key] = columns[key]
            continue
        resolved[key] = next((c for c in DEFAULT_COLUMNS[key] if c in df.columns), None)
        if resolved[key] is None and key not in optional:
            raise UserError(f"{where}: no {key} column (looked for {' / '.join(DEFAULT_COLUMNS[key])}); name it "
                            f"with --columns {key}=COLUMN. Columns are: {', '.join(map(str, df.columns))}")
    return resolved


def _task_of(value, prompt: str, where: str, row: int) -> str:
    if _missing(value):
        options = prompt_options(prompt)
        if options is None:
            raise UserError(f"{where}, row {row}: no task, and the prompt has neither CTO options '(A): ... (B): ...' "
                            "nor SC options 'options: X/Y.'; add a task column (CTO or SC) and name it with "
                            "--columns task=COLUMN")
        return options.task
    task = str(value).strip().upper()
    if task not in TASKS:
        raise UserError(f"{where}, row {row}: unknown task '{value}'; the task must be one of {', '.join(TASKS)}")
    return task


def _records(df: pd.DataFrame, columns: dict[str, str | None], where: str) -> list[dict[str, str]]:
    """One dict per row with the five fields; rows are numbered from 1 (the first data row)."""
    records = []
    for row, values in enumerate(df.to_dict(orient="records"), 1):
        record = {}
        for key in ("prompt", "category", "stereotype", "counter_stereotype"):
            value = values[columns[key]]
            if _missing(value):
                raise UserError(f"{where}, row {row}: empty {key} (column '{columns[key]}'); fill it in or drop the row")
            record[key] = str(value)
        record["category"] = record["category"].strip()
        task_value = values[columns["task"]] if columns["task"] else None
        record["task"] = _task_of(task_value, record["prompt"], where, row)
        records.append(record)
    return records


def _number(records: list[dict[str, str]]) -> list[BiasPrompt]:
    seen: dict[tuple[str, str], int] = {}
    prompts = []
    for r in records:
        index = seen.get((r["category"], r["task"]), 0)
        seen[(r["category"], r["task"])] = index + 1
        prompts.append(BiasPrompt(prompt_id(r["category"], r["task"], index), r["category"], r["task"], index,
                                  r["prompt"], r["stereotype"], r["counter_stereotype"]))
    return prompts


def _table_prompts(df: pd.DataFrame, where: Path | str, columns: dict[str, str] | None) -> list[BiasPrompt]:
    if df.empty:
        raise UserError(f"{where}: no rows")
    return _number(_records(df, _resolve_columns(df, columns, str(where)), str(where)))


def _attacked(base: list[BiasPrompt], df: pd.DataFrame, task: str, attack: str, variant: str, where: str,
              numbers: list[int] | None = None) -> dict[str, AttackedPrompt]:
    """Pair row i of an attacked table with ``base[i]``; any misalignment is an error.
    ``numbers``: the row numbers to show in errors (default 1, 2, ...)."""
    fix = (f"row i of every attacked {task} file must be the attack on row i of the {task} base prompts; "
           "restore the original rows and order (re-export the data set)")
    if len(df) != len(base):
        raise UserError(f"{where}: {len(df)} rows, but there are {len(base)} {task} base prompts; {fix}")
    columns = _resolve_columns(df, None, where, optional=("task", "stereotype", "counter_stereotype"))
    numbers = numbers or list(range(1, len(df) + 1))
    out = {}
    for row, b, values in zip(numbers, base, df.to_dict(orient="records")):
        category = values[columns["category"]]
        if _missing(category) or str(category).strip() != b.category:
            raise UserError(f"{where}, row {row}: category '{category}' but the base prompt it pairs with is "
                            f"'{b.category}' ({b.id}, row {b.index + 1} of that category); {fix}")
        prompt = values[columns["prompt"]]
        if _missing(prompt):
            raise UserError(f"{where}, row {row}: empty prompt (column '{columns['prompt']}'); fill it in")
        fields = [None if columns[k] is None or _missing(values[columns[k]]) else str(values[columns[k]])
                  for k in ("stereotype", "counter_stereotype")]
        out[b.id] = AttackedPrompt(f"{b.id}|{attack}:{variant}", b, attack, variant, str(prompt), *fields, "stored")
    return out


def _by_task(prompts: list[BiasPrompt]) -> dict[str, list[BiasPrompt]]:
    return {t: [p for p in prompts if p.task == t] for t in TASKS}


# --- CLEAR-Bias CSV export -------------------------------------------------------------------

def _export_prompt_set(root: Path) -> PromptSet:
    """``root/base_prompts/base_prompts_{CTO,SC}.csv`` + ``root/jailbreak_prompts/**`` (PROVENANCE layout)."""
    records = []
    for task in TASKS:
        path = root / "base_prompts" / f"base_prompts_{task}.csv"
        if not path.is_file():
            continue
        df = read_table(path)
        df["TASK"] = task  # the export keeps the task only in the file name
        records += _records(df, _resolve_columns(df, None, str(path)), str(path))
    base = _by_task(_number(records))
    stored: dict[tuple[str, str], dict[str, AttackedPrompt]] = {}
    for task, folder in TASK_FOLDERS.items():
        for path in sorted((root / "jailbreak_prompts" / folder).glob("*/*.csv")):
            match = _ATTACK_FILE.match(path.name)
            if match is None or match["attack"] != path.parent.name or match["task"] != task:
                raise UserError(f"{path}: expected jailbreak_prompts/{folder}/<attack>/<attack>_v<N>_{task}.csv; "
                                "rename the file or move it out of jailbreak_prompts")
            key = (match["attack"], match["variant"])
            stored.setdefault(key, {}).update(_attacked(base[task], read_table(path), task, *key, str(path)))
    return PromptSet(str(root), base["CTO"] + base["SC"], stored)


# --- Hugging Face dataset ----------------------------------------------------------------------

def _hf_config(path: str, config: str) -> pd.DataFrame | None:
    """The ``train`` split of one config as a table; None when the dataset has no such config."""
    import datasets  # heavy (~1 s): only when a dataset is read this way

    try:
        names = datasets.get_dataset_config_names(path)
    except Exception:  # e.g. offline with the dataset in the local cache: loading may still work
        names = None
    if names is not None and config not in names:
        return None
    try:
        return datasets.load_dataset(path, name=config, split="train").to_pandas()
    except Exception as exc:  # the hub unreachable / offline, no such dataset, unreadable files
        raise UserError(f"could not read the Hugging Face dataset {path} (config {config}): {type(exc).__name__}: "
                        f"{exc}. Check the id and the network (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE), or pass the "
                        "CLEAR-Bias CSV export folder") from None


def _attack_name(value) -> str:
    # the export names files attack.replace(" ", "_").lower(): "Machine Translation" -> machine_translation
    return str(value).strip().replace(" ", "_").replace("-", "_").lower()


def _variant_name(value) -> str:
    text = str(value).strip().lower()
    return f"v{text}" if text.isdigit() else text


def _hf_prompt_set(path: str) -> PromptSet:
    where = f"{path} (config base_prompts)"
    df = _hf_config(path, "base_prompts")
    if df is None:
        raise UserError(f"{path}: no 'base_prompts' config; a CLEAR-Bias dataset has base_prompts and "
                        "jailbreak_prompts (e.g. hf:RCantini/CLEAR-Bias)")
    if df.empty:
        raise UserError(f"{where}: no rows")
    # HF keeps both tasks in one table: number CTO then SC, each in source order (as the export files are)
    records = _records(df, _resolve_columns(df, None, where), where)
    base = _by_task(_number([r for t in TASKS for r in records if r["task"] == t]))
    stored: dict[tuple[str, str], dict[str, AttackedPrompt]] = {}
    attacked = _hf_config(path, "jailbreak_prompts")
    if attacked is not None and not attacked.empty:
        for column in ("TASK", "ATTACK", "VARIANT"):
            if column not in attacked.columns:
                raise UserError(f"{path} (config jailbreak_prompts): no {column} column; columns are: "
                                f"{', '.join(map(str, attacked.columns))}")
        keys = [(str(t).strip().upper(), _attack_name(a), _variant_name(v))
                for t, a, v in zip(attacked["TASK"], attacked["ATTACK"], attacked["VARIANT"])]
        groups: dict[tuple[str, str, str], list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)  # keeps source order within a group
        for (task, attack, variant), rows in groups.items():
            where = f"{path} (config jailbreak_prompts, TASK={task} ATTACK={attack} VARIANT={variant})"
            if task not in TASKS:
                raise UserError(f"{where}, row {rows[0] + 1}: unknown task '{task}'; the task must be one of "
                                f"{', '.join(TASKS)}")
            part = attacked.iloc[rows].reset_index(drop=True)
            numbers = [i + 1 for i in rows]  # rows of the whole config table
            stored.setdefault((attack, variant), {}).update(
                _attacked(base[task], part, task, attack, variant, where, numbers))
    return PromptSet(f"hf:{path}", base["CTO"] + base["SC"], stored)
