"""Metrics sinks: a JSONL file always, tensorboard / wandb when ``training.report_to`` asks."""

from __future__ import annotations

import json
from pathlib import Path

from robalign.errors import UserError


class MetricsLog:
    def __init__(self, output_dir: Path, report_to: list[str], config: dict, enabled: bool = True,
                 truncate_after: int | None = None):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.sinks = []
        if not enabled:
            return
        if truncate_after is not None and self.path.exists():
            # A resumed run replays the steps after its checkpoint: drop their old lines.
            keep = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= truncate_after]
            self.path.write_text("".join(line + "\n" for line in keep))
        for sink in report_to:
            self.sinks.append(_open_sink(sink, Path(output_dir), config))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled or not metrics:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps({"step": step, **metrics}) + "\n")
        for kind, handle in self.sinks:
            if kind == "tensorboard":
                for key, value in metrics.items():
                    handle.add_scalar(key, value, step)
            else:
                handle.log(metrics, step=step)

    def close(self) -> None:
        for kind, handle in self.sinks:
            handle.close() if kind == "tensorboard" else handle.finish()
        self.sinks = []


def _open_sink(kind: str, output_dir: Path, config: dict):
    try:
        if kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            return kind, SummaryWriter(log_dir=str(output_dir / "tensorboard"))
        import wandb

        return kind, wandb.init(config=config, dir=str(output_dir))
    except ImportError as exc:
        raise UserError(f"training.report_to={kind} needs the '{exc.name}' package: pip install {exc.name}") from None
