"""Every module imports (heavy optional SDKs are imported lazily inside functions), and the
tree passes ruff, including undefined-name checks (F821)."""

from __future__ import annotations

import importlib
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import robalign

REPO = Path(__file__).resolve().parents[1]
MODULES = sorted(m.name for m in pkgutil.walk_packages(robalign.__path__, "robalign.") if not m.name.endswith("__main__"))


NEEDS_EXTRA = {"robalign.interop._registry": "inspect_ai", "robalign.interop.inspect_tasks": "inspect_ai"}


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    if name in NEEDS_EXTRA:
        pytest.importorskip(NEEDS_EXTRA[name])  # the robalign[inspect] extra
    importlib.import_module(name)


def test_optional_sdks_are_not_imported_eagerly():
    code = "import sys, robalign.cli, robalign.evaluation.backends; print([m for m in ('vllm', 'ray', 'openai', 'wandb', 'inspect_ai') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_cli_command_has_a_module():
    from robalign.cli import COMMANDS

    for name, (module, _help) in COMMANDS.items():
        mod = importlib.import_module(module)
        assert callable(mod.add_arguments) and callable(mod.run), name


@pytest.mark.skipif(shutil.which("ruff", path=str(Path(sys.executable).parent)) is None, reason="ruff not installed")
def test_ruff_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    done = subprocess.run([ruff, "check", "src", "tests", "benchmarks", "experiments"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]


def test_export_inspect_without_the_extra_names_the_fix(tmp_path, monkeypatch, capsys):
    from robalign.cli import main

    monkeypatch.setitem(sys.modules, "inspect_ai", None)  # as if robalign[inspect] were not installed
    assert main(["bench", "export-inspect", str(tmp_path), "--out", str(tmp_path / "logs")]) == 2
    assert "pip install 'robalign[inspect]'" in capsys.readouterr().err
