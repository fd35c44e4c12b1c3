"""Config: YAML + dotted overrides, clear errors, every shipped YAML validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from robalign.cli import main
from robalign.config import ConfigError, TrainConfig, load_config, validate_train_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_overrides_parse_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss:\n  beta: 0.1\ntraining:\n  learning_rate: 1e-4\n")
    cfg = load_config(TrainConfig, path, ["loss.beta=0.25", "loss.losses={dpo: 1.0, sft: 0.1}",
                                          "training.report_to=[tensorboard]", "data.limit=null"])
    assert cfg.loss.beta == 0.25 and cfg.loss.losses == {"dpo": 1.0, "sft": 0.1}
    assert cfg.training.learning_rate == 1e-4  # YAML 1.1 reads 1e-4 as a string; coerced to float
    assert cfg.training.report_to == ["tensorboard"] and cfg.data.limit is None


def test_unknown_key_names_file_and_suggests(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("loss:\n  betta: 0.2\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml.*betta.*Did you mean 'beta'"):
        load_config(TrainConfig, path)


def test_wrong_type_and_bad_override():
    with pytest.raises(ConfigError, match="training.max_steps.*expected int"):
        load_config(TrainConfig, None, ["training.max_steps=many"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(TrainConfig, None, ["loss.beta"])


def test_unknown_loss_name_suggests_closest():
    cfg = load_config(TrainConfig, None, ["loss.losses={dpoo: 1.0}"])
    with pytest.raises(ConfigError, match="unknown loss 'dpoo'.*Did you mean 'dpo'"):
        validate_train_config(cfg)


def test_every_shipped_config_validates(capsys):
    files = sorted(CONFIGS.rglob("*.yaml"))
    assert files
    assert main(["validate", str(CONFIGS)]) == 0
    assert f"{len(files)} valid, 0 invalid" in capsys.readouterr().out


def test_validate_checks_a_sweep_config_and_its_cells(capsys, tmp_path):
    bad = tmp_path / "sweep.yaml"
    bad.write_text("name: s\nlane: world\nmethods: {dpo: {}}\ngrid: {method: [dpo], data.noise_rte: [0.1]}\n")
    assert main(["validate", str(bad)]) == 1
    assert "noise_rte" in capsys.readouterr().out


def test_validate_takes_shipped_names_of_every_kind(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here: the names resolve to the package's copies
    assert main(["validate", "world/default", "judges/local", "dpo_tiny"]) == 0
    assert "3 valid, 0 invalid" in capsys.readouterr().out
    assert main(["validate", "dpo_tiny", "no_such_config"]) == 1
    out = capsys.readouterr().out
    assert "invalid no_such_config" in out and "1 valid, 1 invalid" in out



def test_validate_reports_invalid(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("loss:\n  aggregation: median\n")
    (tmp_path / "judges.yaml").write_text("judges:\n  - nonsense-judge\n")
    assert main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "aggregation" in out and "judges[0]" in out and "0 valid, 2 invalid" in out
