"""Every evaluation module and CLI module imports, and the light ones stay light."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

MODULES = [
    "robalign.evaluation.backends", "robalign.evaluation.cache", "robalign.evaluation.hf_backend",
    "robalign.evaluation.openai_backend", "robalign.evaluation.vllm_backend", "robalign.evaluation.server",
    "robalign.evaluation.templates", "robalign.evaluation.parsers", "robalign.evaluation.rules",
    "robalign.evaluation.judges", "robalign.evaluation.agreement", "robalign.evaluation.tables",
    "robalign.evaluation.workflows", "robalign.evaluation.selection", "robalign.evaluation.labels",
    "robalign.evaluation.specs",
    "robalign.cli.judge", "robalign.cli.generate", "robalign.cli.serve",
]


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    module = importlib.import_module(name)
    if name.startswith("robalign.cli."):
        assert callable(module.add_arguments) and callable(module.run)


def test_http_judging_path_imports_neither_torch_nor_vllm():
    code = (
        "import sys\n"
        "import robalign.evaluation.judges, robalign.evaluation.openai_backend, robalign.evaluation.server\n"
        "import robalign.evaluation.vllm_backend, robalign.evaluation.agreement\n"
        "heavy = [m for m in ('torch', 'transformers', 'vllm') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
