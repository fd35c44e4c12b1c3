"""Read records from a data source: JSONL / JSON / CSV / Parquet files (optionally gzipped),
directories saved with ``datasets``, and ``hf:<dataset id>[:<config>]``.

Every problem raises :class:`DataError` naming the source and the fix.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robalign.errors import UserError

SUFFIXES = (".jsonl.gz", ".json.gz", ".csv.gz", ".jsonl", ".json", ".csv", ".parquet")  # longest first
SOURCES_HELP = ("a file (.jsonl, .json, .csv, .parquet; .jsonl.gz, .json.gz, .csv.gz), a directory, "
                "hf:<dataset id>[:<config>], or synthetic[:N]")


class DataError(UserError, ValueError):
    """Bad input data; the message names the file, the row or column and the fix."""


@dataclass
class Rows:
    where: str  # names the source in messages
    stem: str  # prefix of derived ids: <stem>-<0-based row index>
    records: Iterable[Any]
    lines: list[int] | None = None  # file line of each record (JSONL), for messages


def open_source(source: str, split: str) -> Rows:
    if source.startswith("hf:"):
        return _hf_rows(source[3:], split)
    path = Path(source).expanduser()
    if path.is_dir():
        return _hf_rows(str(path), split)
    if not path.exists():
        raise DataError(f"{source}: no such file or directory; a data source is {SOURCES_HELP}")
    suffix = next((s for s in SUFFIXES if path.name.lower().endswith(s)), None)
    if suffix is None:
        raise DataError(f"{source}: unknown file type '{''.join(path.suffixes) or path.name}'; "
                        f"a data source is {SOURCES_HELP}")
    stem = path.name[: -len(suffix)]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return Rows(source, stem, pq.read_table(path).to_pylist())
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...
            raise DataError(f"{source}: not a readable Parquet file ({exc})") from exc
    text = _read_text(path, source, gz=suffix.endswith(".gz"))
    if suffix.startswith(".jsonl"):
        records, lines = _parse_jsonl(text, source)
        return Rows(source, stem, records, lines)
    if suffix.startswith(".json"):
        return Rows(source, stem, _parse_json(text, source, split))
    try:
        return Rows(source, stem, list(csv.DictReader(io.StringIO(text, newline=""))))
    except csv.Error as exc:
        raise DataError(f"{source}: not valid CSV ({exc}); check the quoting") from exc


def _read_text(path: Path, where: str, gz: bool) -> str:
    try:
        raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{where}: cannot read ({exc}); is it really {'gzip-compressed' if gz else 'a file'}?") from exc
    try:
        return raw.decode("utf-8-sig")  # -sig: Excel writes a byte-order mark before CSV headers
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: not UTF-8 text (bad byte at offset {exc.start}); re-save it as UTF-8") from exc


def _parse_jsonl(text: str, where: str) -> tuple[list[Any], list[int]]:
    records, lines = [], []
    for lineno, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 may sit inside strings
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: line {lineno} is not valid JSON ({exc.msg} at column {exc.colno}); "
                            "fix or delete that line (JSONL holds one JSON object per line)") from None
        lines.append(lineno)
    return records, lines


def _parse_json(text: str, where: str, split: str) -> list[Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                        "a .json data file holds a list of records (use .jsonl for one record per line)") from None
    if isinstance(data, list):
        return data
    lists = {k: v for k, v in data.items() if isinstance(v, list)} if isinstance(data, dict) else {}
    if split in lists:
        return lists[split]
    if len(lists) == 1:
        return next(iter(lists.values()))
    raise DataError(f"{where}: expected a list of records, or one top-level key holding them "
                    f"(keys with lists: {', '.join(lists) or 'none'}); name the one to read with split=<key> (data.split)")


def _hf_rows(spec: str, split: str) -> Rows:
    import datasets  # heavy: imported only for hf: sources and directories

    local = Path(spec).expanduser()
    name, config = (spec, None) if local.is_dir() else (spec.partition(":")[0], spec.partition(":")[2] or None)
    where = f"hf:{spec} (split {split})"
    try:
        if local.is_dir() and any((local / f).exists() for f in ("state.json", "dataset_dict.json")):
            data = datasets.load_from_disk(str(local))  # saved with save_to_disk
            if isinstance(data, datasets.DatasetDict):
                if split not in data:
                    raise DataError(f"{where}: no split '{split}' (splits: {', '.join(data)}); set data.split")
                data = data[split]
        else:
            data = datasets.load_dataset(name, config, split=split)
    except DataError:
        raise
    except Exception as exc:  # hub, builder and split errors come in many types; keep their text
        raise DataError(f"{where}: could not load ({type(exc).__name__}: {exc}). Check the dataset id, config "
                        "and split; offline (HF_HUB_OFFLINE=1) it must already be in the local cache") from exc
    return Rows(where, f"{Path(name.rstrip('/')).name}-{split}", data)
