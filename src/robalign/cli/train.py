"""robalign train --config configs/train/dpo_tiny.yaml [section.key=value ...] [--resume]"""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--config", help="YAML config (see configs/train/); omitted = built-in defaults")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. loss.beta=0.2")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in output_dir")


def run(args) -> int:
    import json

    from robalign.config import TrainConfig, load_config, validate_train_config
    from robalign.training.trainer import train

    config = load_config(TrainConfig, args.config, args.overrides)
    validate_train_config(config)
    result = train(config, resume=args.resume, overwrite=args.overwrite)
    print(json.dumps({"output_dir": str(result.output_dir), "steps": result.steps, **result.eval_metrics}, indent=2))
    return 0
