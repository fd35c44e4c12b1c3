"""The YAML configs that ship inside the package, and how a ``--config`` argument finds one.

The example configs live in ``robalign/configs/<kind>/<name>.yaml`` (kinds: ``train``,
``sweep``, ``judge``, ``judges``, ``world``) and are installed with the wheel as package
data, so a user who ran ``pip install robalign`` has them without a checkout. In a checkout,
``configs`` at the repository root links to the same folder, so every documented path
``configs/train/dpo_tiny.yaml`` still works.

A shipped config's *name* is its path below the configs folder without ``.yaml``
(``train/dpo_tiny``); its *kind* is the first folder. :func:`resolve_config` turns a
``--config`` argument into a file, in this order (as torchtune's ``tune run`` does with its
recipe configs):

1. an existing file wins, so a user's own ``dpo_tiny.yaml`` in the working directory is
   never shadowed by the shipped one;
2. otherwise a shipped name: ``dpo_tiny``, ``train/dpo_tiny``, either with ``.yaml``, or a
   documented path ``configs/train/dpo_tiny.yaml`` run outside a checkout. A bare name that
   two kinds share is an error listing both;
3. otherwise an error naming the closest shipped names and ``robalign configs list``.

The files are read through :mod:`importlib.resources`, so this works from a wheel, an
editable install and a checkout alike. This module sits at the config layer: it imports
nothing from robalign but the error type.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from robalign.errors import UserError

KINDS = ("train", "sweep", "judge", "judges", "world")
SUFFIX = ".yaml"


@dataclass(frozen=True)
class ShippedConfig:
    """One packaged YAML file."""

    name: str  # path below the configs folder without .yaml, e.g. "train/dpo_tiny"
    kind: str  # the first folder: train, sweep, judge, judges or world
    description: str  # the file's first comment line, "" when it has none

    @property
    def stem(self) -> str:
        return self.name.rsplit("/", 1)[-1]


def configs_root() -> Traversable:
    """The packaged configs folder (a plain directory for every ordinary install)."""
    return resources.files("robalign") / "configs"


def _walk(folder: Traversable, prefix: str):
    for entry in folder.iterdir():
        if entry.is_dir():
            yield from _walk(entry, f"{prefix}{entry.name}/")
        elif entry.name.endswith(SUFFIX):
            yield f"{prefix}{entry.name[:-len(SUFFIX)]}", entry


def _description(text: str) -> str:
    """The first comment line: every shipped YAML opens with ``# what this config is``."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            return stripped.lstrip("#").strip()
        if stripped:  # content before any comment: no description
            return ""
    return ""


def list_configs(kind: str | None = None) -> list[ShippedConfig]:
    """Every shipped config (of ``kind`` if given), sorted by name."""
    if kind is not None and kind not in KINDS:
        raise UserError(f"unknown config kind '{kind}'; kinds: {', '.join(KINDS)}")
    root, found = configs_root(), []
    if not root.is_dir():  # an install built without its package data: nothing ships
        return found
    for name, entry in _walk(root, ""):
        if "/" not in name:  # a YAML loose at the top has no kind; none ships
            continue
        this_kind = name.split("/", 1)[0]
        if kind is None or this_kind == kind:
            found.append(ShippedConfig(name, this_kind, _description(entry.read_text(encoding="utf-8"))))
    return sorted(found, key=lambda c: c.name)


def _normalise(arg: str) -> str:
    """``./configs/train/dpo_tiny.yaml`` -> ``train/dpo_tiny``; ``dpo_tiny.yml`` -> ``dpo_tiny``."""
    name = arg.replace("\\", "/").strip()
    while name.startswith("./"):
        name = name[2:]
    if name.startswith("configs/"):  # a documented checkout path, used where there is no checkout
        name = name[len("configs/"):]
    for suffix in (".yaml", ".yml"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def shipped_name(arg: str, kind: str | None = None) -> str:
    """The shipped config ``arg`` names (``dpo_tiny``, ``train/dpo_tiny``, ``configs/train/dpo_tiny.yaml``).

    Raises UserError when no shipped config fits (listing the closest names) or when a bare
    name fits several kinds (listing them: give ``kind/name``).
    """
    shipped = list_configs(kind)
    names = [c.name for c in shipped]
    name = _normalise(str(arg))
    if kind is not None and "/" not in name:
        name = f"{kind}/{name}"
    if name in names:
        return name
    if "/" not in name:
        candidates = [c.name for c in shipped if c.stem == name]
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            raise UserError(f"config '{arg}' is ambiguous: {' or '.join(candidates)}; give the kind as well, "
                            f"e.g. --config {candidates[0]}")
    raise UserError(_not_found(str(arg), name, shipped, kind))


def _not_found(arg: str, name: str, shipped: list[ShippedConfig], kind: str | None) -> str:
    # match against full names and bare stems, so both `dpo_tny` and `train/dpo_tny` find train/dpo_tiny
    by_key: dict[str, str] = {}
    for c in shipped:
        by_key.setdefault(c.name, c.name)
        by_key.setdefault(c.stem, c.name)
    close = difflib.get_close_matches(name, list(by_key), n=5, cutoff=0.6)
    suggestions = list(dict.fromkeys(by_key[k] for k in close))
    what = f"a shipped {kind} config" if kind else "a shipped config"
    hint = f" Did you mean {', '.join(suggestions)}?" if suggestions else ""
    return (f"config {arg} does not exist: it is neither a file nor {what}.{hint} "
            f"`robalign configs list` shows the shipped configs.")


def shipped_text(name: str) -> str:
    """The YAML text of a shipped config, given any form :func:`shipped_name` accepts."""
    name = shipped_name(name)
    return (configs_root() / f"{name}{SUFFIX}").read_text(encoding="utf-8")


def resolve_config(arg: str | Path, kind: str | None = None) -> Path:
    """The file a ``--config`` argument means: an existing file first, else a shipped config.

    ``kind`` narrows the shipped configs searched (``train``, ``world``, ...); a file path is
    taken whatever it holds. Raises UserError naming close matches when neither fits.
    """
    path = Path(arg)
    if path.is_file():
        return path
    name = shipped_name(str(arg), kind)
    packaged = configs_root() / f"{name}{SUFFIX}"
    if not isinstance(packaged, Path):  # a zipped install: the text is readable, but there is no file
        raise UserError(f"config {arg}: robalign is installed without files on disk; "
                        f"copy it first with `robalign configs cp {name} .`")
    return packaged


def copy_config(name: str, dest: str | Path, force: bool = False) -> Path:
    """Write shipped config ``name`` to ``dest`` (a folder: ``dest/<stem>.yaml``) to be edited.

    Refuses to replace an existing file unless ``force``; returns the file written.
    """
    full = shipped_name(name)
    as_folder = str(dest).endswith(("/", "\\"))  # Path() drops the trailing slash
    dest = Path(dest)
    if as_folder or dest.is_dir():
        dest = dest / f"{full.rsplit('/', 1)[-1]}{SUFFIX}"
    if dest.exists() and not force:
        raise UserError(f"{dest} already exists; pass --force to overwrite it, or give another DEST")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text((configs_root() / f"{full}{SUFFIX}").read_text(encoding="utf-8"), encoding="utf-8")
    return dest
