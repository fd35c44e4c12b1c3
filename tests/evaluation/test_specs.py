"""Model and judge spec strings."""

from __future__ import annotations

import pytest

from robalign.errors import UserError
from robalign.evaluation.backends import DEFAULT_OPENAI_URL, build_backend, parse_model_spec, spec_label
from robalign.evaluation.judges import judge_label, parse_judge_spec


def test_hf_spec_plain_and_with_revision(tmp_path):
    assert parse_model_spec("hf:runs/tiny/model").to_dict() == {"backend": "hf", "model": "runs/tiny/model"}
    spec = parse_model_spec("hf:org/name@v1.2")
    assert (spec.model, spec.options) == ("org/name", {"revision": "v1.2"})
    local = tmp_path / "odd@dir"
    local.mkdir()
    assert parse_model_spec(f"hf:{local}").model == str(local)  # an existing path keeps its "@"


def test_openai_spec_splits_model_and_base_url():
    spec = parse_model_spec("openai:deepseek-chat@https://api.deepseek.com")
    assert (spec.backend, spec.model, spec.options["base_url"]) == ("openai", "deepseek-chat", "https://api.deepseek.com")
    assert parse_model_spec("openai:gpt-4o-mini").options["base_url"] == DEFAULT_OPENAI_URL
    assert spec_label("openai:m@http://127.0.0.1:9/v1") == "openai:m@http://127.0.0.1:9/v1"


def test_mapping_and_yaml_block_forms():
    block = "{backend: openai, model: m, base_url: 'http://127.0.0.1:1/v1', api_key_env: MY_KEY, concurrency: 3}"
    spec = parse_model_spec(block)
    assert spec.options == {"base_url": "http://127.0.0.1:1/v1", "api_key_env": "MY_KEY", "concurrency": 3}
    multi = "backend: hf\nmodel: some/dir\nbatch_size: 4\n"
    assert parse_model_spec(multi).to_dict() == {"backend": "hf", "model": "some/dir", "batch_size": 4}
    backend = build_backend(block)
    assert backend.concurrency == 3 and backend.api_key_env == "MY_KEY"


@pytest.mark.parametrize("bad", ["nope", "foo:bar", "hf:", "{backend: hf}", "openai:m@ftp://x"])
def test_bad_model_specs_are_user_errors(bad):
    with pytest.raises(UserError):
        build_backend(bad)


def test_unknown_backend_option_is_a_user_error():
    with pytest.raises(UserError, match="bad option"):
        build_backend("openai:m@http://127.0.0.1:1/v1", concurrencyy=3)


def test_missing_local_model_dir_names_the_fix(tmp_path):
    with pytest.raises(UserError, match="tiny-model"):
        build_backend(f"hf:{tmp_path / 'missing'}")


def test_judge_specs():
    assert parse_judge_spec("rule") == {"type": "rule"}
    assert parse_judge_spec("keyword") == {"type": "keyword"}
    assert parse_judge_spec("llm:openai:deepseek-chat@https://api.deepseek.com") == {
        "type": "llm", "model": "openai:deepseek-chat@https://api.deepseek.com", "template": "bias"}
    assert parse_judge_spec("llm:hf:runs/judge#md-judge")["template"] == "md-judge"
    assert judge_label("llm:openai:m@http://h:1/v1#harmbench") == "llm:openai:m@http://h:1/v1#harmbench"
    assert parse_judge_spec({"type": "llm", "model": "hf:x", "samples": 3})["samples"] == 3
    for bad in ["llm", "regex", {"type": "llm"}, 3]:
        with pytest.raises(UserError):
            parse_judge_spec(bad)


@pytest.mark.parametrize("command", ["judge", "generate"])
def test_invalid_yaml_spec_is_a_clear_error_from_the_cli(command, tmp_path, capsys):
    from robalign.cli import main

    data = tmp_path / "rows.csv"
    data.write_text("prompt,response\nq,a\n")
    bad = "{type: llm, model: 'openai:m@http://127.0.0.1:1/v1', api_key_env: sk-not-shown"  # no closing brace
    if command == "judge":
        argv = ["judge", "run", "--judge", bad, "--data", data, "--out", tmp_path / "v.csv"]
    else:
        argv = ["generate", "--model", bad, "--data", data, "--out", tmp_path / "g.csv"]
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    what = "judge spec" if command == "judge" else "model spec"
    assert f"{what} is not valid YAML" in err and "line 1, column" in err
    assert "sk-not-shown" not in err and "127.0.0.1:1" not in err and "Traceback" not in err  # the text is not echoed: it may hold a key
    assert ("{type: llm, model:" if command == "judge" else "{backend: openai, model:") in err  # the fix: an example


def test_model_and_judge_specs_share_one_yaml_reader():
    for parse, what in ((parse_model_spec, "model spec"), (parse_judge_spec, "judge spec")):
        with pytest.raises(UserError, match=f"^{what} is not valid YAML"):
            parse("{a: [1, 2}")
        with pytest.raises(UserError, match=f"^{what} must be a mapping"):
            parse("- a\n- b\n")
    assert parse_judge_spec("{type: llm, model: 'hf:x'}\n") == {"type": "llm", "model": "hf:x"}


def test_each_label_and_yaml_spec_parser_is_defined_once():
    """One FAILED, one UNPARSED, one CLEAR-Bias label tuple (labels.py) and one YAML spec
    reader (specs.load_spec): a second definition drifts (backends once said 'failed' where
    parsers said 'FAILED')."""
    import re
    from pathlib import Path

    import robalign

    src = Path(robalign.__file__).parent
    defs = {"FAILED": [], "UNPARSED": [], "bias tuple": [], "yaml spec reader": []}
    for path in sorted(src.rglob("*.py")):
        text, name = path.read_text(), str(path.relative_to(src))
        for label in ("FAILED", "UNPARSED"):
            if re.search(rf"^\s*(\w+\s*,\s*)*{label}\s*(,\s*\w+\s*)*=", text, re.MULTILINE):
                defs[label].append(name)
        if re.search(r"""\(\s*["']S["'],\s*["']CS["'],\s*["']D["'],\s*["']R["']\s*\)""", text):
            defs["bias tuple"].append(name)
        if "spec" in name or "backends" in name or "judges" in name:
            if "yaml.safe_load(spec" in text:
                defs["yaml spec reader"].append(name)
    assert defs == {"FAILED": ["evaluation/labels.py"], "UNPARSED": ["evaluation/labels.py"],
                    "bias tuple": ["labels.py"], "yaml spec reader": ["evaluation/specs.py"]}
