"""Where robalign keeps what it computes once and reuses: the one definition of the cache root.

``$ROBALIGN_CACHE`` (default ``~/.cache/robalign``) holds ``models/`` (pulled packaged models),
``reference/`` (reference log-probs) and ``generations.sqlite`` (the response cache).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$ROBALIGN_CACHE``, or ``~/.cache/robalign`` when it is unset or empty."""
    return Path(os.environ.get("ROBALIGN_CACHE") or Path.home() / ".cache" / "robalign")
