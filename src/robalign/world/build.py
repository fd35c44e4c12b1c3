"""``build_world``: write a world directory (layout in ``docs/world.md`` and the package doc).

One pass, top to bottom: prompts and requests, their attacked versions, the CLEAR-Bias
export, the request table, the corpus (shuffled), pairs, judge examples, soft labels, and
last ``world.json``. Everything is written into ``DIR.partial`` and renamed to ``DIR`` at the
end, so a directory named DIR is always a whole world. The same config and seed give
byte-identical files, except ``build_seconds`` in world.json. At the defaults (200 base
prompts, 3,600 attacked, ~26k corpus rows) a build takes about a second.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robalign.bench.attacks import ATTACKS, attacked_prompts
from robalign.bench.prompts import AttackedPrompt, PromptSet
from robalign.errors import UserError
from robalign.provenance import write_json_atomic
from robalign.world.config import WorldConfig, attack_selection, resolved, resolved_soft_labels
from robalign.world.export import write_clear_bias, write_jsonl, write_requests
from robalign.world.prompts import bias_prompts, requests
from robalign.world.records import corpus_rows, judge_examples, preference_pairs

FORMAT = "robalign-world/1"
SPLITS = {"corpus": ("train", "heldout"), "pairs": ("train", "eval"), "judge": ("train", "eval")}


@dataclass
class WorldSummary:
    out: Path
    files: dict[str, int]  # path relative to ``out`` -> rows (data rows of a CSV, lines of a JSONL)
    seconds: float
    notes: list[str] = field(default_factory=list)


def build_world(cfg: WorldConfig, out: str | Path, *, overwrite: bool = False) -> WorldSummary:
    """Write the world of ``cfg`` to ``out`` (see the module doc); ``overwrite`` replaces an
    existing world directory (its checkpoints included)."""
    start = time.perf_counter()
    out = Path(out)
    _check_target(out, overwrite)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)  # a build that died half way
    tmp.mkdir(parents=True)

    prompts = bias_prompts(cfg.prompts.per_category, cfg.prompts.heldout_fraction, cfg.seed)
    reqs = requests(cfg.requests.per_category, cfg.requests.heldout_fraction, cfg.seed)
    base = [p.prompt for p in prompts]
    selection = attack_selection(cfg)
    attacked, notes = attacked_prompts(PromptSet("world", base), base, selection)
    by_base: dict[str, list[AttackedPrompt]] = {}
    for a in attacked:
        by_base.setdefault(a.base.id, []).append(a)
    soft_labels = resolved_soft_labels(cfg)

    files = write_clear_bias(tmp / "clear_bias", base, attacked)
    files["harmful/prompts.csv"] = write_requests(tmp / "harmful" / "prompts.csv", reqs)
    corpus = corpus_rows(prompts, by_base, reqs, soft_labels, cfg)
    records = {"corpus": corpus, "pairs": preference_pairs(prompts, by_base, reqs, cfg),
               "judge": judge_examples(prompts, by_base, cfg)}
    for name, rows in records.items():
        train, held = SPLITS[name]
        parts = {train: [r for r in rows if not r["heldout"]], held: [r for r in rows if r["heldout"]]}
        for split, part in parts.items():
            if name == "corpus":  # pre-training reads in order: mix prompts, categories and kinds
                random.Random(f"{cfg.seed}:shuffle:{name}/{split}").shuffle(part)
            files[f"{name}/{split}.jsonl"] = write_jsonl(tmp / name / f"{split}.jsonl",
                                                         ({k: v for k, v in r.items() if k != "heldout"} for r in part))
    write_json_atomic(tmp / "soft_labels.json", soft_labels)

    chosen = {a for a, _ in selection}
    world = {
        "format": FORMAT,
        "seed": cfg.seed,
        "config": resolved(cfg),
        "soft_labels": soft_labels,
        "attacks": {"included": [f"{a}:{v}" for a, v in selection],
                    "left_out": {name: ("needs a translator backend; the world writes only attacks it can generate"
                                        if attack.needs_translator else "not in prompts.attacks")
                                 for name, attack in ATTACKS.items() if name not in chosen}},
        "counts": {"bias_prompts": len(base), "heldout_bias_prompts": sum(p.heldout for p in prompts),
                   "attacked_prompts": len(attacked),
                   "requests": dict(Counter(q.kind for q in reqs)),
                   "heldout_requests": sum(q.heldout for q in reqs),
                   "corpus_types": _type_counts(corpus), "files": dict(sorted(files.items()))},
        "heldout": {"bias": [p.prompt.id for p in prompts if p.heldout], "requests": [q.id for q in reqs if q.heldout]},
        "notes": notes,
        "fingerprint": _fingerprint(tmp),
        "robalign_version": _version(),
        "build_seconds": None,
        "checkpoints": [],
    }
    seconds = time.perf_counter() - start
    world["build_seconds"] = round(seconds, 3)
    write_json_atomic(tmp / "world.json", world)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return WorldSummary(out, dict(sorted(files.items())), seconds, notes)


def _check_target(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory for the world")
    if not any(out.iterdir()):
        return
    if not (out / "world.json").is_file():
        raise UserError(f"--out {out} is a non-empty directory that holds no world (no world.json); "
                        "choose a new or empty directory")
    if not overwrite:
        raise UserError(f"--out {out} already holds a world; pass --overwrite to replace it "
                        "(everything in it goes, pre-trained checkpoints included)")


def _type_counts(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, int]]]:
    """category -> base | attacked -> type -> corpus rows (train and held out): the realised soft labels."""
    counts: dict[str, dict[str, Counter]] = {}
    for r in rows:
        if r["kind"] == "bias":
            side = "attacked" if r["attack"] else "base"
            counts.setdefault(r["category"], {"base": Counter(), "attacked": Counter()})[side][r["type"]] += 1
    return {c: {side: dict(sorted(n.items())) for side, n in sides.items()} for c, sides in counts.items()}


def _fingerprint(root: Path) -> str:
    """sha256 over every file's relative path and bytes (world.json is written after it)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _version() -> str | None:
    try:
        return importlib.metadata.version("robalign")
    except importlib.metadata.PackageNotFoundError:
        return None
