"""robalign bench clear-bias | harmful | export-inspect

  robalign bench clear-bias --model hf:smollm2-135m-instruct --judge rule --out runs/bench/smollm2
  robalign bench clear-bias --model openai:m@http://127.0.0.1:8000/v1 --judge llm:openai:j@http://127.0.0.1:8001/v1 \\
      --data ../shared/data/clear_bias --second-pass llm:openai:j@http://127.0.0.1:8001/v1#misunderstanding --out RUN
  robalign bench harmful --dataset advbench --model hf:smollm2-135m-instruct --judge keyword --out runs/bench/adv
  robalign bench export-inspect runs/bench/adv --out runs/inspect-logs   # then: inspect view --log-dir runs/inspect-logs

Each subcommand lives in its own module (``bench_clearbias``, ``bench_harmful``).
"""

from __future__ import annotations

import importlib

SUBCOMMANDS = {
    "clear-bias": ("robalign.cli.bench_clearbias", "the CLEAR-Bias protocol: base prompts, gate, attacks, safety scores"),
    "harmful": ("robalign.cli.bench_harmful", "attack success rate on harmful-prompt sets, XSTest over-refusal"),
    "export-inspect": ("robalign.cli.bench_export_inspect", "write a bench run as an Inspect AI log (inspect view)"),
}


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="bench_command", metavar="SUBCOMMAND", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        q = sub.add_parser(name, help=help_text, description=help_text)
        q.set_defaults(_bench_module=module)
        importlib.import_module(module).add_arguments(q)


def run(args) -> int:
    return int(importlib.import_module(args._bench_module).run(args) or 0)
