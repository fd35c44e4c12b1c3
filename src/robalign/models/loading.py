"""Load causal LMs and tokenizers from a local directory or the Hugging Face hub, and
fingerprint them for caches and run records."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from robalign.errors import UserError

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


class ModelNotFound(UserError):
    pass


def _looks_local(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else with a slash, or a leading ./ ~ /, is a path.
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep == "\\" and "\\" in name


def resolve_model_path(name_or_path: str) -> str:
    """A local directory, or a hub id; raise ModelNotFound with the fix for a missing path."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"model directory {path} has no config.json; is it a save_pretrained directory?")
        return str(path)
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if _looks_local(name_or_path) or offline or path.exists():
        raise ModelNotFound(
            f"model path '{name_or_path}' does not exist"
            + (" (and HF_HUB_OFFLINE is set, so it is not looked up on the hub)" if offline else "")
            + f". Build a tiny one with `robalign tiny-model --out {name_or_path}` or give a hub id."
        )
    return name_or_path


def load_tokenizer(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    source = resolve_model_path(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ModelNotFound(f"could not load a tokenizer from '{name_or_path}': {exc}") from None
    if tok.pad_token is None:  # Llama-family tokenizers ship without one; pads are masked anyway
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(name_or_path: str, revision: str | None = None, dtype: str = "float32",
                   trust_remote_code: bool = False):
    import torch
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise UserError(f"model.dtype '{dtype}' is not one of {', '.join(sorted(set(DTYPES.values())))}")
    source = resolve_model_path(name_or_path)
    try:
        return AutoModelForCausalLM.from_pretrained(
            source, revision=revision, dtype=getattr(torch, DTYPES[dtype]), trust_remote_code=trust_remote_code
        )
    except OSError as exc:
        raise ModelNotFound(f"could not load a causal LM from '{name_or_path}': {exc}") from None


def model_fingerprint(name_or_path: str, revision: str | None = None) -> str:
    """Stable id of a model's weights: for a local directory a hash over its config and the
    size plus first and last MiB of each weight file (fast on multi-GB checkpoints); for a hub
    id, the id and revision."""
    path = Path(name_or_path).expanduser()
    h = hashlib.sha256()
    if not path.is_dir():
        h.update(json.dumps([name_or_path, revision]).encode())
        return h.hexdigest()[:16]
    for f in sorted(path.iterdir()):
        if f.suffix in (".safetensors", ".bin") or f.name == "config.json":
            size = f.stat().st_size
            h.update(f"{f.name}:{size}".encode())
            with f.open("rb") as fh:
                h.update(fh.read(1 << 20))
                if size > 2 << 20:
                    fh.seek(-(1 << 20), os.SEEK_END)
                    h.update(fh.read())
    return h.hexdigest()[:16]
