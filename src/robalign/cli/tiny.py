"""robalign tiny-model --out DIR --size nano|micro|mini --arch llama|gpt_neox|gpt2"""

from __future__ import annotations


def add_arguments(p) -> None:
    from robalign.models.tiny import ARCHITECTURES, SIZES

    p.add_argument("--out", required=True, help="directory to write (save_pretrained layout)")
    p.add_argument("--size", default="nano", choices=list(SIZES), help="nano ~0.8M, micro ~9M, mini ~27M params")
    p.add_argument("--arch", default="llama", choices=list(ARCHITECTURES))
    p.add_argument("--seed", type=int, default=0, help="weight-initialisation seed")


def run(args) -> int:
    import json

    from robalign.models.tiny import build_tiny_model

    out = build_tiny_model(args.out, size=args.size, arch=args.arch, seed=args.seed)
    info = json.loads((out / "robalign_tiny.json").read_text())
    print(f"wrote {info['arch']} {info['size']} model ({info['parameters']:,} parameters) to {out}")
    return 0
