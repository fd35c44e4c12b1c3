"""What the evaluation commands' shared flags turn into: backend options from repeated
``-o KEY=VALUE`` flags, and the response cache that ``--cache`` / ``--no-cache`` select.

``-o`` values are YAML scalars or flow collections, read by the same parser as the
training overrides (``robalign.config.parse_overrides``): ``-o concurrency=4`` gives the
int 4, ``-o 'extra_body={top_k: 20}'`` a mapping, ``-o name=`` the empty string. A key
that can only hold a secret (``api_key``, ``token``, ...) is refused: keys come from the
environment through ``api_key_env``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robalign.config import parse_overrides
from robalign.errors import UserError
from robalign.evaluation.cache import ResponseCache
from robalign.evaluation.specs import reject_secrets


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """``["batch_size=8", "concurrency=4"]`` -> {"batch_size": 8, "concurrency": 4}."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key = pair.split("=", 1)[0].strip()
        if "=" not in pair or not key:
            raise UserError(f"option '{key}' is not KEY=VALUE (e.g. -o concurrency=4)")
        try:
            options.update(parse_overrides([pair]))
        except UserError:  # the message would echo the value, which may be a secret
            raise UserError(f"-o {key}=...: the value is not valid YAML; quote it, e.g. -o '{key}=\"...\"'") from None
    reject_secrets(options, "-o option")
    return options


def open_cache(no_cache: bool = False, path: str | Path | None = None) -> ResponseCache | None:
    """The response cache (``path``, or the default file), or None with ``--no-cache``."""
    return None if no_cache else ResponseCache(path)
