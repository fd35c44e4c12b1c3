"""robalign validate FILE.yaml ... : parse and check configs without running anything."""

from __future__ import annotations

from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("files", nargs="+", help="YAML configs (directories are searched for *.yaml)")


def run(args) -> int:
    from robalign.config import ConfigError, TrainConfig, load_config, validate_train_config

    files = []
    for name in args.files:
        path = Path(name)
        files.extend(sorted(path.rglob("*.yaml")) if path.is_dir() else [path])
    failed = 0
    for path in files:
        try:
            validate_train_config(load_config(TrainConfig, path))
            print(f"ok      {path}")
        except ConfigError as exc:
            failed += 1
            print(f"invalid {path}: {exc}")
    print(f"{len(files) - failed} valid, {failed} invalid")
    return 1 if failed else 0
