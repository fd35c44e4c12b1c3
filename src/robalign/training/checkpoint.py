"""Checkpoints that survive a kill: written under a temporary name and renamed when complete.

Layout of ``<output_dir>/checkpoints/step-000010/``: ``model.safetensors`` (every parameter,
shared tensors handled by safetensors), ``state.pt`` (optimizer, scheduler, RNG; loaded with
``weights_only=True``) and ``trainer_state.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

PREFIX = "step-"


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (a ``.partial`` directory is never listed)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(done, key=lambda p: int(p.name[len(PREFIX):]))


def save_checkpoint(output_dir: str | Path, step: int, model, optimizer, scheduler, extra: dict,
                    keep: int = 2) -> Path:
    root = Path(output_dir) / "checkpoints"
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f"{final.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state()}, tmp / "state.pt")
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **extra}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in checkpoint_dirs(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer, scheduler and RNG in place; return the trainer state."""
    path = Path(path)
    missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:  # tied heads are stored once
        raise RuntimeError(f"checkpoint {path} does not match the model: missing {missing}, unexpected {unexpected}")
    state = torch.load(path / "state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return json.loads((path / "trainer_state.json").read_text())
