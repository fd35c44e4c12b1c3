"""What every run records about how it was made, and how its JSON records are written.

``run_record`` is the one record for every command (training, probes, ``generate``,
``judge``): creation time, the command line, the parsed CLI arguments when given, git
commit and dirty flag, Python, platform and package versions. ``write_json_atomic`` is the
one writer of JSON results: through a temporary file and a rename, so a reader never sees
half a file.

Arguments and command lines can carry secrets (a key in a URL's user info or query). This
module sits below training and evaluation and knows no URL syntax, so a caller whose
arguments may hold URLs passes ``redact`` (the evaluation CLIs pass
``robalign.evaluation.specs.redact_value``); it is applied to every argument and to the
command line before they are stored.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

PACKAGES = ("robalign", "torch", "transformers", "accelerate", "peft", "datasets", "tokenizers", "trl", "vllm")


def git_state(cwd: str | Path | None = None) -> dict:
    """Commit hash and whether the tree had uncommitted changes; None outside a git checkout."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty if commit else None}


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_record(args=None, redact: Callable[[Any], Any] | None = None, **extra) -> dict:
    """The provenance record; ``args`` is an ``argparse.Namespace`` (private ``_`` fields
    dropped) stored under ``"args"``; ``extra`` fields are added at the top level."""
    redact = redact or (lambda value: value)
    record = {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": redact([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "git": git_state(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": package_versions(),
    }
    if args is not None:
        record["args"] = {k: redact(v) for k, v in vars(args).items() if not k.startswith("_")}
    return record | extra


def write_json_atomic(path: str | Path, data) -> Path:
    """Write JSON (UTF-8, non-ASCII kept) through a temporary file and a rename, creating the
    parent folder; values JSON cannot hold (paths, dates) are written as their ``str``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
