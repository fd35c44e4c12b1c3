"""robalign validate FILE.yaml ... : parse and check configs without running anything.

The kind of config is told by its top-level keys: a ``judges:`` list is a judge-candidate
file (``robalign judge select``), ``grid`` / ``methods`` / ``lane`` a sweep, world keys a world
config; anything else is a training config. Names of shipped configs work as well as paths.
Validation loads no model, tokenizer or data and touches no network: a hub id such as
``EleutherAI/pythia-2.8b`` is checked as a string, so a GPU recipe validates on a machine
without its weights (tests/experiments/test_study_sweeps.py runs it with sockets refused).
"""

from __future__ import annotations

from pathlib import Path


def _validate_one(path: Path) -> None:
    import yaml

    from robalign.config import ConfigError, TrainConfig, load_config, validate_train_config

    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if isinstance(data, dict) and "judges" in data:
        from robalign.evaluation.selection import load_judge_list

        load_judge_list(path)
        return
    from robalign.experiments.sweep import is_sweep_config, load_sweep_config

    if is_sweep_config(data):  # its grid expanded, and every cell's training config checked
        load_sweep_config(path)
        return
    from robalign.world.config import is_world_config, load_world_config

    if is_world_config(data):
        load_world_config(path)
        return
    validate_train_config(load_config(TrainConfig, path))


def add_arguments(p) -> None:
    p.add_argument("files", nargs="+", help="YAML configs (directories are searched for *.yaml)")


def run(args) -> int:
    from robalign.errors import UserError
    from robalign.shipped_configs import resolve_config

    files, failed = [], 0
    for name in args.files:
        path = Path(name)
        if not path.exists():  # a shipped config by name (robalign configs list)
            try:
                path = resolve_config(name)
            except UserError as exc:
                failed += 1
                print(f"invalid {name}: {exc}")
                continue
        files.extend(sorted(path.rglob("*.yaml")) if path.is_dir() else [path])
    valid = 0
    for path in files:
        try:
            _validate_one(path)
            valid += 1
            print(f"ok      {path}")
        except UserError as exc:
            failed += 1
            print(f"invalid {path}: {exc}")
    print(f"{valid} valid, {failed} invalid")
    return 1 if failed else 0
