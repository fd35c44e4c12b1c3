"""One worker of the store's concurrency tests, in a module of its own so that a spawned process
imports only this and the store (0.2 s), not the test module with pandas and pytest (0.6 s)."""

from __future__ import annotations

import json
import random
import traceback
from pathlib import Path

from robalign.experiments.store import Store

BARRIER_TIMEOUT_S = 60  # the workers meet after opening the store; a dead one must not hang the rest


def finish_cells(url: str, worker: str, cells: list[str], log: str, barrier, seed: int) -> None:
    """Open its own Store, take the cells in its own order, and log every successful claim to
    ``log``: the test counts claims from these logs, not from the store it checks. A worker that
    fails writes ``{"error": traceback}`` there instead (a spawned process's stderr is easily lost)
    and breaks the barrier, so that the others stop waiting for it."""
    try:
        claimed = _race(url, worker, cells, barrier, seed)
    except BaseException:
        Path(log).write_text(json.dumps({"error": f"{worker}: {traceback.format_exc()}"}))
        if barrier is not None:
            barrier.abort()
        raise
    Path(log).write_text(json.dumps(claimed))


def _race(url: str, worker: str, cells: list[str], barrier, seed: int) -> list[str]:
    store = Store(url)
    store.add_sweep("race", {"cells": len(cells)}, {"worker": worker})  # all workers at once: idempotent
    if barrier is not None:
        barrier.wait(timeout=BARRIER_TIMEOUT_S)
    order = list(cells)
    random.Random(seed).shuffle(order)
    claimed = []
    for cell in order:
        if store.claim("race", cell, {"cell": cell, "seed": 0}, worker):
            claimed.append(cell)
            store.finish("race", cell, run_dir=f"cells/{cell}", provenance={"worker": worker},
                         metrics={"worker": float(seed), "cell/number": float(cell[1:]),
                                  "safety": {"value": 0.5, "low": 0.4, "high": 0.6, "n": 10}},
                         samples=[{"benchmark": "b", "prompt_id": str(i), "answer": worker} for i in range(3)])
    store.close()
    return claimed
