"""Every bench module and every CLI command imports, the package table names every bench
module, and an HTTP-only bench loads neither torch nor transformers."""

from __future__ import annotations

import importlib
import pkgutil
import re
import subprocess
import sys

import pytest

import robalign.bench
from robalign.cli import COMMANDS

BENCH = sorted(f"robalign.bench.{m.name}" for m in pkgutil.iter_modules(robalign.bench.__path__))


def test_the_package_table_names_every_module():
    missing = [name for name in BENCH if not re.search(rf"\b{name.rsplit('.', 1)[1]}\b", robalign.bench.__doc__)]
    assert not missing, f"add {missing} to the module table in robalign/bench/__init__.py"


@pytest.mark.parametrize("name", BENCH)
def test_bench_module_imports(name):
    importlib.import_module(name)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_cli_command_imports(command):
    module = importlib.import_module(COMMANDS[command][0])
    assert callable(module.add_arguments) and callable(module.run)


def test_http_bench_path_imports_neither_torch_nor_transformers():
    code = ("import sys\nimport robalign.cli.bench, robalign.bench.clearbias, robalign.bench.harmful\n"
            "heavy = [m for m in ('torch', 'transformers', 'vllm') if m in sys.modules]\nassert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True)
