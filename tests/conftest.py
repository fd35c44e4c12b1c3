"""Shared fixtures: tiny models built offline once per session, and the shared real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP workers
# spin for a core (a nano batch: 0.02 s with 1 thread, 0.5-9 s with 2 under load). Subprocesses
# (resume, torchrun) inherit the variable.
os.environ["OMP_NUM_THREADS"] = "1"

try:  # property tests: no per-example deadline (a busy 2-core CI box is slow), and fixed
    # examples under CI so a run there can never turn red on a newly drawn input
    from hypothesis import settings as _hyp_settings

    _hyp_settings.register_profile("robalign", deadline=None)
    _hyp_settings.register_profile("ci", deadline=None, derandomize=True)
    _hyp_settings.load_profile("ci" if os.environ.get("CI") else "robalign")
except ImportError:
    pass

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ROBALIGN_SHARED_DATA", REPO.parent / "shared" / "data"))
# Read before the autouse fixture below points ROBALIGN_CACHE at a per-test directory: this is
# where `make install` pulled the real models.
REAL_MODELS = Path(os.environ.get("ROBALIGN_CACHE") or Path.home() / ".cache" / "robalign") / "models"
SMOLLM2 = "smollm2-135m-instruct"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real public data sets; not committed). Skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set ROBALIGN_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from robalign.models.tiny import build_tokenizer

    return build_tokenizer()


def _build(tmp_path_factory, tokenizer, arch: str, size: str = "nano") -> Path:
    from robalign.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp(f"{arch}_{size}") / "model", size, arch, tokenizer=tokenizer)


@pytest.fixture(scope="session")
def nano_llama(tmp_path_factory, tiny_tokenizer) -> Path:
    """Directory of a ~0.8M-parameter Llama-style model with the offline tokenizer."""
    return _build(tmp_path_factory, tiny_tokenizer, "llama")


@pytest.fixture(scope="session")
def nano_gpt_neox(tmp_path_factory, tiny_tokenizer) -> Path:
    return _build(tmp_path_factory, tiny_tokenizer, "gpt_neox")


@pytest.fixture(scope="session")
def nano_gpt2(tmp_path_factory, tiny_tokenizer) -> Path:
    return _build(tmp_path_factory, tiny_tokenizer, "gpt2")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own robalign cache directory."""
    monkeypatch.setenv("ROBALIGN_CACHE", str(tmp_path / "robalign_cache"))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The directory of the real pulled SmolLM2-135M-Instruct (for module-scoped fixtures, which
    cannot see a test's cache). Skips, with the command to run, when it is not pulled."""
    real = REAL_MODELS / SMOLLM2
    if not (real / "robalign_source.json").is_file():
        pytest.skip(f"{SMOLLM2} is not pulled in {REAL_MODELS}; run `make install` or "
                    f"`robalign models pull {SMOLLM2}`")
    return real


@pytest.fixture
def smollm2(smollm2_dir, _isolated_cache) -> str:
    """The real pulled SmolLM2-135M-Instruct, reachable by its registered name from this
    test's isolated cache (a symlink to the pulled directory). Skips when it is not pulled."""
    models = Path(os.environ["ROBALIGN_CACHE"]) / "models"
    models.mkdir(parents=True, exist_ok=True)
    (models / SMOLLM2).symlink_to(smollm2_dir, target_is_directory=True)
    return SMOLLM2
