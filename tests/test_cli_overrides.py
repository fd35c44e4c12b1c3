"""Dotted overrides may come anywhere on a command line, also after a flag."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from robalign.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_overrides_may_follow_a_flag(tmp_path, nano_llama):
    out = tmp_path / "run"
    # before: "robalign: error: unrecognized arguments: training.max_steps=1 ..."
    assert main(["train", "--config", str(REPO / "configs/train/dpo_tiny.yaml"), "--overwrite",
                 f"model.name_or_path={nano_llama}", f"output_dir={out}", "training.max_steps=1",
                 "data.train=synthetic:40"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["training"]["max_steps"] == 1 and saved["model"]["name_or_path"] == str(nano_llama)


def test_an_unknown_flag_is_still_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--bogus", "training.max_steps=1"])
    assert exc.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
