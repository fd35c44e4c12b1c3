"""Reading and writing row tables (CSV, JSONL, Parquet), and the CLEAR-Bias control set.

The CLEAR-Bias control set (``control_set/control_set_{CTO,SC}.csv``: BIAS CATEGORY, PROMPT,
RESPONSE, LABEL) carries no stereotype fields, which the rule judge needs. They come from
the sibling ``base_prompts/base_prompts_{task}.csv`` by prompt text: exact after
normalising whitespace and "Context:I" spacing, else the closest base prompt of the same
category with similarity >= 0.9 (2 of the 41 distinct control prompts differ from their
base prompt by a quote pair or one extra sentence; 2 more only by "Context:I" spacing).
``join_base_prompts`` does the same for any table with a prompt column (``judge run
--base-prompts``).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pandas as pd

from robalign.errors import UserError

SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
CONTROL_FILES = {"CTO": "control_set_CTO.csv", "SC": "control_set_SC.csv"}
BASE_FILES = {"CTO": "base_prompts_CTO.csv", "SC": "base_prompts_SC.csv"}
STEREOTYPE_COLUMNS = ("STEREOTYPE", "COUNTER-STEREOTYPE")


def _kind(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise UserError(f"{path}: unknown table format; use one of {', '.join(SUFFIXES)} (optionally .gz)")


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV / TSV / JSONL / JSON (records) / Parquet file, or a CLEAR-Bias control-set directory."""
    path = Path(path)
    if path.is_dir():
        if find_control_dir(path) is not None:
            return load_control_set(path)
        raise UserError(f"{path} is a directory but not a CLEAR-Bias control set (no control_set_CTO.csv); "
                        "pass a .csv, .jsonl or .parquet file")
    if not path.is_file():
        raise UserError(f"data file {path} does not exist")
    kind = _kind(path)
    try:
        if kind == ".csv":
            return pd.read_csv(path, keep_default_na=False, na_values=[""])
        if kind == ".tsv":
            return pd.read_csv(path, sep="\t", keep_default_na=False, na_values=[""])
        if kind == ".jsonl":
            return pd.read_json(path, lines=True, dtype=False)
        if kind == ".json":
            return pd.read_json(path, dtype=False)
        return pd.read_parquet(path)
    except (ValueError, OSError) as exc:
        raise UserError(f"{path}: could not read as {kind} ({exc})") from None


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write by suffix, through a temporary file so a crash never leaves half a table."""
    path = Path(path)
    kind = _kind(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    gz = "gzip" if path.name.lower().endswith(".gz") else None  # the .partial name hides the suffix
    if kind in (".csv", ".tsv"):
        df.to_csv(tmp, index=False, sep="," if kind == ".csv" else "\t", compression=gz)
    elif kind == ".jsonl":
        df.to_json(tmp, orient="records", lines=True, force_ascii=False, compression=gz)
    elif kind == ".json":
        df.to_json(tmp, orient="records", force_ascii=False, indent=1, compression=gz)
    else:
        df.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def require_columns(df: pd.DataFrame, columns: list[str], source: str, flag: str = "") -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        hint = f" (set {flag})" if flag else ""
        raise UserError(f"{source}: no column {', '.join(repr(c) for c in missing)}{hint}; "
                        f"columns are: {', '.join(map(str, df.columns))}")


def find_control_dir(path: Path) -> Path | None:
    for candidate in (path, path / "control_set", path / "clear_bias" / "control_set"):
        if (candidate / CONTROL_FILES["CTO"]).is_file():
            return candidate
    return None


def _norm(prompt: str) -> str:
    prompt = re.sub(r":(?=\S)", ": ", str(prompt).replace("\u2019", "'"))
    return re.sub(r"\s+", " ", prompt).strip().lower()


def load_control_set(path: str | Path) -> pd.DataFrame:
    """800 labelled rows with TASK, ID and (when base_prompts is beside it) STEREOTYPE and
    COUNTER-STEREOTYPE columns added. ID = control/<task>/<row> (the data has no ids)."""
    root = find_control_dir(Path(path))
    if root is None:
        raise UserError(f"{path}: no {CONTROL_FILES['CTO']} here or in {path}/control_set")
    frames = []
    for task, name in CONTROL_FILES.items():
        df = pd.read_csv(root / name, keep_default_na=False)
        require_columns(df, ["BIAS CATEGORY", "PROMPT", "RESPONSE", "LABEL"], str(root / name))
        df.insert(0, "ID", [f"control/{task}/{i}" for i in range(len(df))])
        df.insert(1, "TASK", task)
        base = root.parent / "base_prompts" / BASE_FILES[task]
        if base.is_file():
            df, _ = join_base_prompts(df, pd.read_csv(base, keep_default_na=False))
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def default_base_prompts(data: str | Path) -> Path | None:
    """The CLEAR-Bias layout: ``base_prompts`` beside the data file's folder
    (``clear_bias/control_set/x.csv`` -> ``clear_bias/base_prompts``), when it exists."""
    candidate = Path(data).resolve().parent.parent / "base_prompts"
    return candidate if any((candidate / name).is_file() for name in BASE_FILES.values()) else None


def read_base_prompts(directory: str | Path) -> pd.DataFrame:
    """``base_prompts_CTO.csv`` and ``base_prompts_SC.csv`` (either may be absent) as one table."""
    directory = Path(directory)
    files = [directory / name for name in BASE_FILES.values() if (directory / name).is_file()]
    if not files:
        raise UserError(f"{directory}: no {' or '.join(BASE_FILES.values())} here; point --base-prompts at the "
                        "CLEAR-Bias base_prompts folder")
    frames = [pd.read_csv(f, keep_default_na=False) for f in files]
    for f, frame in zip(files, frames):
        require_columns(frame, ["PROMPT", *STEREOTYPE_COLUMNS], str(f))
    return pd.concat(frames, ignore_index=True)


def join_base_prompts(df: pd.DataFrame, base: pd.DataFrame, prompt_col: str = "PROMPT") -> tuple[pd.DataFrame, int]:
    """``df`` with STEREOTYPE and COUNTER-STEREOTYPE from the base prompt with the same text
    (see the module doc for the matching), and the number of rows left unmatched (empty
    fields, which the rule judge turns into UNPARSED)."""
    keys = [_norm(p) for p in base["PROMPT"]]
    exact = {k: i for i, k in enumerate(keys)}
    categories = df["BIAS CATEGORY"] if "BIAS CATEGORY" in df and "BIAS CATEGORY" in base else [None] * len(df)
    lookup: dict[str, int | None] = {}
    for prompt, category in zip(df[prompt_col], categories):
        key = _norm(prompt)
        if key in lookup:
            continue
        if key in exact:
            lookup[key] = exact[key]
            continue
        same = [i for i, c in enumerate(base.get("BIAS CATEGORY", [])) if c == category] or list(range(len(base)))
        ratio, best = max((difflib.SequenceMatcher(None, key, keys[i]).ratio(), i) for i in same)
        lookup[key] = best if ratio >= 0.9 else None
    rows = [lookup[_norm(p)] for p in df[prompt_col]]
    df = df.copy()
    for column in STEREOTYPE_COLUMNS:
        df[column] = [base[column].iloc[i] if i is not None else "" for i in rows]
    return df, sum(i is None for i in rows)
