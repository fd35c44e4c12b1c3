"""Load causal LMs and tokenizers from a local directory or the Hugging Face hub, and
fingerprint them for caches and run records.

One fingerprint serves the trainer (run records, the reference log-prob cache, probe and
mask provenance) and the evaluation engine (the response cache key).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from robalign.errors import UserError

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# generation_config.json holds defaults generate() applies when a caller does not override
# them (e.g. repetition_penalty), so it changes outputs like config.json does
CONFIG_FILES = ("config.json", "generation_config.json")
SAMPLE_BLOCK = 16 << 10  # 16 KiB
SAMPLE_BLOCKS = 256  # 4 MiB read per weight file, whatever its size
_HEX40 = set("0123456789abcdef")


class ModelNotFound(UserError):
    pass


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _looks_local(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else with a slash, or a leading ./ ~ /, is a path.
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep == "\\" and "\\" in name


def _hub_cache_dir(model_id: str) -> Path | None:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:
        return None
    return Path(HF_HUB_CACHE) / f"models--{model_id.replace('/', '--')}"


def _packaged_dir(name: str) -> Path | None:
    """The pulled directory of a registered packaged model (``robalign models list``); None
    when ``name`` is not registered; ModelNotFound with the pull command when not pulled."""
    from robalign.models.registry import pulled_path

    try:
        return pulled_path(name)
    except UserError as exc:
        raise ModelNotFound(str(exc)) from None


def resolve_model_path(name_or_path: str) -> str:
    """A local directory, a registered packaged model's pulled directory, or a hub id; raise
    ModelNotFound with the fix for a missing path or an unpulled packaged model. A local
    directory wins over a packaged model of the same name. With HF_HUB_OFFLINE set, a hub id
    must already be in the local HF cache."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"model directory {path} has no config.json; is it a save_pretrained directory?")
        return str(path)
    packaged = _packaged_dir(name_or_path)
    if packaged is not None:
        return str(packaged)
    cached = _hub_cache_dir(name_or_path)
    offline_miss = _offline() and not (cached and cached.is_dir())
    if _looks_local(name_or_path) or offline_miss or path.exists():
        raise ModelNotFound(
            f"model path '{name_or_path}' does not exist"
            + (" (and HF_HUB_OFFLINE is set, so it is not looked up on the hub, and it is not in the local "
               "HF cache)" if _offline() else "")
            + f". Build a tiny one with `robalign tiny-model --out {name_or_path}`, name a packaged model "
            "(`robalign models list`), or give a hub id."
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
        raise UserError(f"dtype '{dtype}' is not one of {', '.join(sorted(set(DTYPES.values())))}")
    source = resolve_model_path(name_or_path)
    try:
        return AutoModelForCausalLM.from_pretrained(
            source, revision=revision, dtype=getattr(torch, DTYPES[dtype]), trust_remote_code=trust_remote_code
        )
    except OSError as exc:
        raise ModelNotFound(f"could not load a causal LM from '{name_or_path}': {exc}") from None


def hub_revision(model_id: str, revision: str | None) -> str:
    """A commit sha when one is known without network access (pinned, or the local HF cache's
    ref); else the revision name (pin ``@<sha>`` for a strict fingerprint of a hub model)."""
    revision = revision or "main"
    if len(revision) == 40 and set(revision) <= _HEX40:
        return revision
    cached = _hub_cache_dir(model_id)
    ref = cached / "refs" / revision if cached else None
    return ref.read_text().strip() if ref and ref.is_file() else revision


def model_fingerprint(name_or_path: str, revision: str | None = None) -> str:
    """A 16-hex id of a model's weights, cheap on multi-GB checkpoints and independent of
    where the directory lives (a copy keeps its response cache and reference log-probs).

    Local directory: sha256 over config.json and generation_config.json, and for each weight
    file (*.safetensors, *.bin, *.pt, *.pth) its name, size and content: whole files up to
    4 MiB, else 256 blocks of 16 KiB evenly spaced from the first byte to the last (4 MiB
    read per file). Retraining rewrites whole matrices, so the sampled blocks change; an
    edit confined to bytes between two blocks of a large file is not seen: give a
    ``revision`` label, which is hashed in, to force a new id. Modification times are not
    used. Packaged model name: its pulled directory, so the name and the path give one id.
    Hub id: the id and ``hub_revision`` (the commit sha when known offline)."""
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        path = _packaged_dir(name_or_path) or path
    h = hashlib.sha256()
    if not path.is_dir():
        h.update(json.dumps([name_or_path, hub_revision(name_or_path, revision)]).encode())
        return h.hexdigest()[:16]
    h.update(json.dumps(["local", revision]).encode())
    for name in CONFIG_FILES:
        config = path / name
        h.update(f"{name}:".encode() + (config.read_bytes() if config.is_file() else b"-"))
    for f in sorted(path.iterdir()):
        if f.suffix in WEIGHT_SUFFIXES and f.is_file():
            size = f.stat().st_size
            h.update(f"{f.name}:{size}:".encode())
            _hash_sample(f, size, h)
    return h.hexdigest()[:16]


def _hash_sample(path: Path, size: int, h) -> None:
    with path.open("rb") as fh:
        if size <= SAMPLE_BLOCK * SAMPLE_BLOCKS:
            h.update(fh.read())
            return
        span = size - SAMPLE_BLOCK
        for i in range(SAMPLE_BLOCKS):
            fh.seek(span * i // (SAMPLE_BLOCKS - 1))
            h.update(fh.read(SAMPLE_BLOCK))
