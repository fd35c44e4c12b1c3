"""Token lengths of a world's corpus rows under a chat tokenizer, grouped by attack: does
every row fit the model's context?

A row's length is its user turn rendered with the chat template and the generation prompt,
plus its reply and the closing end token: exactly the tokens a pre-training step sees, since
the tiny template's special tokens split the text, so the two parts tokenise apart. Each
distinct prompt and reply is tokenised once (a default world has ~3,900 prompts and a few
thousand distinct replies for its ~23k rows).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def group_of(row: dict[str, Any]) -> str:
    """"base" (plain bias prompt), "<attack>:<variant>", "harmful" or "harmless"."""
    if row["kind"] != "bias":
        return row["kind"]
    return f"{row['attack']}:{row['variant']}" if row["attack"] else "base"


def token_lengths(rows: Iterable[dict[str, Any]], tokenizer, context: int = 512) -> dict[str, dict[str, Any]]:
    """group -> rows, prompt_max, prompt_mean, reply_max, total_max, over_context (rows longer than ``context``)."""
    prompt_tokens: dict[str, int] = {}
    reply_tokens: dict[str, int] = {}
    end = (tokenizer.eos_token or "") + "\n"
    stats: dict[str, dict[str, Any]] = {}
    for row in rows:
        prompt, reply = row["messages"][0]["content"], row["messages"][1]["content"]
        if prompt not in prompt_tokens:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                 tokenize=False)
            prompt_tokens[prompt] = len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        if reply not in reply_tokens:
            reply_tokens[reply] = len(tokenizer(reply + end, add_special_tokens=False, verbose=False)["input_ids"])
        p, r = prompt_tokens[prompt], reply_tokens[reply]
        s = stats.setdefault(group_of(row), {"rows": 0, "prompt_sum": 0, "prompt_max": 0, "reply_max": 0,
                                             "total_max": 0, "over_context": 0})
        s["rows"] += 1
        s["prompt_sum"] += p
        s["prompt_max"], s["reply_max"], s["total_max"] = max(s["prompt_max"], p), max(s["reply_max"], r), \
            max(s["total_max"], p + r)
        s["over_context"] += p + r > context
    return {group: {"rows": s["rows"], "prompt_max": s["prompt_max"], "prompt_mean": round(s["prompt_sum"] / s["rows"], 1),
                    "reply_max": s["reply_max"], "total_max": s["total_max"], "over_context": s["over_context"]}
            for group, s in sorted(stats.items())}


def read_corpus(world: str | Path) -> list[dict[str, Any]]:
    """Every corpus row of a world directory (train, then held out)."""
    rows = []
    for split in ("train", "heldout"):
        with (Path(world) / "corpus" / f"{split}.jsonl").open(encoding="utf-8") as fh:
            rows += [json.loads(line) for line in fh]
    return rows


def measure_world(world: str | Path, context: int = 512) -> dict[str, Any]:
    """Lengths of a world's corpus under two offline tokenizers (``robalign.models.tiny``):
    ``tiny``, the default one (CPython docs + the small synthetic set), and ``tiny+world``, the
    same trained with every distinct corpus text added (what a pre-training run can build);
    the second spends its merges on the world's words and so shortens the long wrappers."""
    from robalign.models.tiny import build_tokenizer, tokenizer_corpus

    rows = read_corpus(world)
    texts = sorted({m["content"] for r in rows for m in r["messages"]})
    tokenizers = {"tiny": build_tokenizer(), "tiny+world": build_tokenizer(texts=tokenizer_corpus() + texts)}
    return {"context": context, **{name: token_lengths(rows, tok, context) for name, tok in tokenizers.items()}}
