"""Reading and writing row tables (CSV, TSV, JSONL, JSON, Parquet, each optionally gzipped),
and the CLEAR-Bias control set.

Round trip. Every format gives back exactly the text it was given: carriage returns
(bare ``\\r`` and ``\\r\\n``), U+2028 / U+2029 / U+0085, NUL, quotes, delimiters and fields
of any length. ``read_table(write_table(read_table(f)))`` equals ``read_table(f)``, dtypes
included. How each format gets there:

* CSV / TSV are written with every text field quoted (``csv.QUOTE_NONNUMERIC``) and ``\\n``
  between rows. Python's writer quotes a field only when it holds the delimiter, a quote or
  a character of the line terminator, so a bare ``\\r`` used to go out unquoted and every
  reader split the row there (a 602-row ``judge run`` output read back as 604 rows).
  They are read with pandas' C parser, which keeps ``\\r``, ``\\r\\n`` and NUL inside quoted
  fields (so does Python's ``csv`` module opened with ``newline=""``; NUL is written as is,
  not escaped, because both read it back and an escape would change the text for every
  other reader). CSV has no types, so every field is read as text and a column becomes numbers
  only when the conversion loses nothing: all its non-empty fields are the canonical
  spelling of integers (``-12``; blanks make it nullable ``Int64``), of ``True`` /
  ``False``, or of floats as ``repr`` writes them (``0.1``, ``1e-07``, ``inf``). ``007``,
  ``1.50``, ``1e5``, ``nan`` or `` 3`` keep the column as text, so an id such as ``007``
  comes back as ``007``. An empty field is a missing number in a numeric column and the
  empty string in a text column: CSV cannot tell a missing text from an empty one, so a
  missing text value reads back as ``""`` (use JSONL or Parquet to keep the difference).
* JSONL / JSON are written one record per line with ``json.dumps`` (floats exact, NaN as
  ``null``, ±inf as ``Infinity`` which Python's json reads) and U+2028, U+2029 and U+0085
  written as ``\\u`` escapes: they are not JSON whitespace, but ``str.splitlines`` and
  many line readers break lines there. They are read with ``json.loads`` one ``\\n``-line
  at a time, so no column is turned into dates or floats behind the user's back.
* Parquet stores types and text itself; ``.parquet.gz`` is a gzipped Parquet file.

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

import csv
import difflib
import gzip
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from robalign.errors import UserError

SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
CONTROL_FILES = {"CTO": "control_set_CTO.csv", "SC": "control_set_SC.csv"}
BASE_FILES = {"CTO": "base_prompts_CTO.csv", "SC": "base_prompts_SC.csv"}
STEREOTYPE_COLUMNS = ("STEREOTYPE", "COUNTER-STEREOTYPE")
# line breaks for str.splitlines that JSON leaves unescaped: escape them so any line reader works
_JSON_LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})
_CANONICAL_INT = r"0|-?[1-9][0-9]*"  # not "-0", "+1", "01"
_INT64 = np.iinfo(np.int64)


def _kind(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise UserError(f"{path}: unknown table format; use one of {', '.join(SUFFIXES)} (optionally .gz)")


def _gzipped(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


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
        data = path.read_bytes()
        data = gzip.decompress(data) if _gzipped(path) else data
        if kind in (".csv", ".tsv"):
            return read_delimited(io.BytesIO(data), "," if kind == ".csv" else "\t")
        if kind == ".parquet":
            return pd.read_parquet(io.BytesIO(data))
        text = data.decode("utf-8-sig")
        return _read_json_lines(text, path) if kind == ".jsonl" else _read_json(text)
    except (ValueError, OSError, EOFError) as exc:  # EOFError: a truncated .gz
        raise UserError(f"{path}: could not read as {kind} ({exc})") from None


def read_delimited(source, sep: str = ",") -> pd.DataFrame:
    """CSV (``sep=","``) or TSV: every field read as text, then each column typed by
    ``typed_column`` (see the module doc)."""
    df = pd.read_csv(source, sep=sep, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8")
    return pd.DataFrame({name: typed_column(df[name]) for name in df.columns}, columns=df.columns)


def typed_column(column: pd.Series) -> pd.Series:
    """Text fields -> int64 / Int64, bool, float64 when every non-empty field is the exact
    spelling that writing the number gives back; otherwise the text unchanged."""
    filled = column[column != ""]
    if filled.empty:
        return column
    blank = column == ""
    if filled.str.fullmatch(_CANONICAL_INT).all() and filled.str.len().max() <= 20:  # int64 has 19 digits
        ints = [int(x) for x in filled]
        if _INT64.min <= min(ints) and max(ints) <= _INT64.max:
            values = [None if b else int(x) for x, b in zip(column, blank)]
            return pd.Series(values, index=column.index, dtype="Int64" if blank.any() else "int64")
    if filled.isin(["True", "False"]).all() and not blank.any():
        return column == "True"
    try:
        floats = filled.astype(float)
    except ValueError:
        return column
    if floats.isna().any() or not all(repr(f) == s for f, s in zip(floats, filled)):
        return column  # 'nan' stays text: it would write back as an empty field
    return pd.Series([math.nan if b else float(x) for x, b in zip(column, blank)], index=column.index,
                     dtype="float64")


def _read_json_lines(text: str, path: Path) -> pd.DataFrame:
    rows = []
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines: U+2028 inside a string is no break
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise UserError(f"{path}: line {number} is not JSON ({exc})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}: line {number} is a JSON {type(row).__name__}, not an object; "
                            "JSONL holds one {\"column\": value, ...} object per line")
        rows.append(row)
    return pd.DataFrame(rows)


def _read_json(text: str) -> pd.DataFrame:
    data = json.loads(text)
    if isinstance(data, dict):  # {"column": {"0": value, ...}}, pandas' default orient
        return pd.DataFrame(data).reset_index(drop=True)
    if not isinstance(data, list):
        raise ValueError("expected a list of records or a mapping of columns")
    return pd.DataFrame(data)


def _json_value(value):
    if value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return str(value)


def json_lines(df: pd.DataFrame) -> list[str]:
    """One JSON object per row, U+2028 / U+2029 / U+0085 escaped (see the module doc)."""
    return [json.dumps({str(k): _json_value(v) for k, v in row.items()}, ensure_ascii=False,
                       default=_json_default).translate(_JSON_LINE_BREAKS)
            for row in df.to_dict(orient="records")]


def _encode(df: pd.DataFrame, kind: str) -> bytes:
    if kind in (".csv", ".tsv"):
        text = df.to_csv(index=False, sep="," if kind == ".csv" else "\t", quoting=csv.QUOTE_NONNUMERIC,
                         lineterminator="\n")
        return text.encode("utf-8")
    if kind == ".jsonl":
        return "".join(line + "\n" for line in json_lines(df)).encode("utf-8")
    if kind == ".json":
        return ("[\n" + ",\n".join(json_lines(df)) + "\n]\n").encode("utf-8")
    buffer = io.BytesIO()
    df.to_parquet(buffer, index=False)
    return buffer.getvalue()


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write by suffix, through a temporary file so a crash never leaves half a table."""
    path = Path(path)
    kind = _kind(path)
    try:
        data = _encode(df, kind)
    except (ValueError, TypeError, ImportError) as exc:  # pyarrow: a column mixing types
        raise UserError(f"{path}: could not write as {kind} ({exc}); a column mixing types can be "
                        "written as .jsonl") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(gzip.compress(data, mtime=0) if _gzipped(path) else data)
    tmp.replace(path)
    return path


def require_columns(df: pd.DataFrame, columns: list[str], source: str, flag: str = "") -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        hint = f" (set {flag})" if flag else ""
        raise UserError(f"{source}: no column {', '.join(repr(c) for c in missing)}{hint}; "
                        f"columns are: {', '.join(map(str, df.columns))}")


def find_column(df: pd.DataFrame, wanted: str | None, fallback: str, flag: str, source: str) -> str:
    """``wanted`` if given, else a column named ``fallback`` in any case."""
    if wanted:
        if wanted not in df.columns:
            raise UserError(f"{source}: no column '{wanted}' ({flag}); columns are: {', '.join(map(str, df.columns))}")
        return wanted
    for column in df.columns:
        if str(column).lower() == fallback:
            return column
    raise UserError(f"{source}: no '{fallback}' column; name it with {flag}. Columns: {', '.join(map(str, df.columns))}")


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
        df = read_table(root / name)
        require_columns(df, ["BIAS CATEGORY", "PROMPT", "RESPONSE", "LABEL"], str(root / name))
        df.insert(0, "ID", [f"control/{task}/{i}" for i in range(len(df))])
        df.insert(1, "TASK", task)
        base = root.parent / "base_prompts" / BASE_FILES[task]
        if base.is_file():
            df, _ = join_base_prompts(df, read_table(base))
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
    frames = [read_table(f) for f in files]
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
