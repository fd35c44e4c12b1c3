"""Every evaluation module and CLI module imports, and the light ones stay light."""

from __future__ import annotations

import importlib
import pkgutil
import re
import subprocess
import sys

import pytest

import robalign.evaluation

# every module of the package, found on disk, so a new module is covered without a list to edit
EVALUATION = sorted(f"robalign.evaluation.{m.name}" for m in pkgutil.iter_modules(robalign.evaluation.__path__))
MODULES = [*EVALUATION, "robalign.provenance", "robalign.cli.judge", "robalign.cli.generate", "robalign.cli.serve"]


def test_the_package_table_names_every_module():
    """robalign/evaluation/__init__.py's table is where a reader looks first: it must not go stale."""
    table = robalign.evaluation.__doc__
    missing = [name for name in EVALUATION if not re.search(rf"\b{name.rsplit('.', 1)[1]}\b", table)]
    assert not missing, f"add {missing} to the module table in robalign/evaluation/__init__.py"


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
        "import robalign.evaluation.judging, robalign.evaluation.agreement_table, robalign.evaluation.options\n"
        "import robalign.evaluation.stereotypes, robalign.evaluation.generation, robalign.evaluation.tables\n"
        "heavy = [m for m in ('torch', 'transformers', 'vllm') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
