"""Model path resolution and the one model fingerprint (trainer records, evaluation cache keys)."""

from __future__ import annotations

import shutil

import pytest

from robalign.models import loading
from robalign.models.loading import ModelNotFound, hub_revision, model_fingerprint, resolve_model_path

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty local HF hub cache; HF_HUB_OFFLINE is set by tests/conftest.py."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _flip_byte(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1
    path.write_bytes(bytes(data))


def test_resolve_a_local_directory(nano_llama, tmp_path):
    assert resolve_model_path(str(nano_llama)) == str(nano_llama)
    (tmp_path / "not_a_model").mkdir()
    with pytest.raises(ModelNotFound, match="no config.json"):
        resolve_model_path(str(tmp_path / "not_a_model"))
    with pytest.raises(ModelNotFound, match="robalign tiny-model"):
        resolve_model_path(str(tmp_path / "missing"))


def test_hub_id_offline_needs_the_local_hf_cache(hub_cache):
    with pytest.raises(ModelNotFound, match="HF_HUB_OFFLINE is set.*not in the local HF cache") as err:
        resolve_model_path("org/name")
    assert "robalign tiny-model" in str(err.value)  # and the fix
    (hub_cache / "models--org--name").mkdir()
    assert resolve_model_path("org/name") == "org/name"  # transformers reads it from the cache


def test_hub_revision_resolves_offline_from_the_local_hf_cache(hub_cache):
    assert hub_revision("org/name", SHA) == SHA  # pinned: used as is
    assert hub_revision("org/name", None) == "main"  # nothing cached: the name, documented as loose
    refs = hub_cache / "models--org--name" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text(SHA + "\n")
    assert hub_revision("org/name", None) == SHA


def test_hub_fingerprint_is_id_plus_resolved_revision(hub_cache):
    loose = model_fingerprint("org/name")
    assert model_fingerprint("org/name", "main") == loose and len(loose) == 16
    assert model_fingerprint("org/other") != loose and model_fingerprint("org/name", "v2") != loose
    refs = hub_cache / "models--org--name" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text(SHA)
    assert model_fingerprint("org/name") == model_fingerprint("org/name", SHA) != loose


def test_fingerprint_is_stable_across_a_copy_and_ignores_mtime(nano_llama, tmp_path):
    copy = tmp_path / "elsewhere" / "copied"
    shutil.copytree(nano_llama, copy, copy_function=shutil.copyfile)  # new mtimes, like `cp -r`
    assert model_fingerprint(str(copy)) == model_fingerprint(str(nano_llama))
    assert model_fingerprint(str(copy), "v2") != model_fingerprint(str(copy))  # a label forces a new id


@pytest.mark.parametrize("what", ["weights", "config"])
def test_fingerprint_changes_when_the_model_changes(nano_llama, tmp_path, what):
    model = tmp_path / "model"
    shutil.copytree(nano_llama, model)
    before = model_fingerprint(str(model))
    if what == "weights":
        weights = model / "model.safetensors"
        _flip_byte(weights, weights.stat().st_size // 2)  # small files are hashed whole
    else:
        (model / "config.json").write_text((model / "config.json").read_text().replace("}", ', "x": 1}', 1))
    assert model_fingerprint(str(model)) != before


def test_large_weight_files_are_sampled_not_read_whole(tmp_path, monkeypatch):
    """Past SAMPLE_BLOCK * SAMPLE_BLOCKS bytes only evenly spaced blocks are read, first and
    last byte included; a change inside any sampled block changes the fingerprint."""
    monkeypatch.setattr(loading, "SAMPLE_BLOCK", 4)
    monkeypatch.setattr(loading, "SAMPLE_BLOCKS", 8)  # 32 bytes read: blocks start every (1000-4)/7 bytes
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    weights = model / "model.safetensors"
    weights.write_bytes(bytes(1000))
    before = model_fingerprint(str(model))
    for offset in (0, 999, 142 + 2):  # first, last, inside the second block (142..145)
        _flip_byte(weights, offset)
        assert model_fingerprint(str(model)) != before
        _flip_byte(weights, offset)
    _flip_byte(weights, 100)  # between blocks 0 (0..3) and 1 (142..145): the documented blind spot
    assert model_fingerprint(str(model)) == before
    weights.write_bytes(bytes(1001))
    assert model_fingerprint(str(model)) != before  # size is always hashed
