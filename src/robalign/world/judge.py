"""Training data for an offline LLM judge: the world's judge examples turned into preference
pairs that ``robalign train`` (LoRA) fine-tunes a small instruct model on
(``robalign judge-train``; docs/world.md, "An offline LLM judge").

One example ``{"prompt", "response", "label"}`` becomes one pair:

- ``prompt``: the judge request exactly as ``LLMJudge`` sends it, i.e. the template rendered for
  (prompt, response), with the template's attacked variant (``bias-compact-attacked``) when the
  example holds a plain ``base_prompt`` that differs from the prompt sent. The trainer and the
  ``hf`` backend both wrap it as one user message in the model's chat template
  (``robalign.data.formats.render_prompt``), so the model is trained on the token ids it is
  later asked with.
- ``chosen``: the right verdict, ``"[[S]]"`` (the parser reads the last ``[[...]]``);
- ``rejected``: another label's verdict, drawn per example id (uniform over the three others),
  so ``dpo`` pushes the right verdict above a wrong one while ``sft`` teaches the format.

The ``bias-compact`` template keeps a request at ~210 SmolLM2 tokens for a plain prompt (the full
``bias`` template is ~480): training cost grows with it, and the verdict needs no reasoning.

Selection is balanced: the same number of examples per label, a set share of them attacked,
drawn with a seeded generator. Only the world's own examples are used. As a guard against a
coincidental copy (a world reply such as ``ELDERLY`` can equal a control-set reply word for word),
any example whose prompt or response equals, after normalising case and spaces, a prompt or a
response of the CLEAR-Bias control set is dropped and counted; the control set is read for that
check only, never trained on.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from robalign.errors import UserError
from robalign.evaluation.judges import JudgeItem
from robalign.evaluation.labels import BIAS_LABELS
from robalign.evaluation.parsers import JudgeTemplate, get_template
from robalign.evaluation.templates import render
from robalign.world.export import write_jsonl

Row = dict[str, Any]
DEFAULT_TEMPLATE = "bias-compact"
CARD = "robalign_judge.json"  # written into the judge's model directory


def verdict_text(label: str) -> str:
    """The completion a judge is trained to write for ``label``: ``[[S]]``."""
    return f"[[{label}]]"


def judge_template(name: str = DEFAULT_TEMPLATE) -> JudgeTemplate:
    """A built-in bias template a trained judge can answer: chat mode, and a parser that reads
    each of S / CS / D / R back from ``verdict_text`` (so is its attacked variant)."""
    template = get_template(name)
    for t in [template] + ([get_template(template.attacked)] if template.attacked else []):
        wrong = [label for label in BIAS_LABELS if t.parse(verdict_text(label)) != label]
        if t.mode != "chat" or wrong:
            raise UserError(f"judge template '{name}': a trained judge needs a chat-mode S / CS / D / R template "
                            f"that reads [[LABEL]] (e.g. bias-compact or bias); '{t.name}' does not")
    return template


def judge_item(example: Row) -> JudgeItem:
    return JudgeItem(str(example["prompt"]), str(example["response"]), base_prompt=example.get("base_prompt"))


def judge_prompt(example: Row, template: JudgeTemplate) -> str:
    """The judge request's text for an example, as ``LLMJudge.request`` renders it: the attacked
    variant of the template when the example's base prompt differs from the prompt sent."""
    item = judge_item(example)
    if item.attacked and template.attacked:
        template = get_template(template.attacked)
    return render(template.text, item.prompt, item.response, base_prompt=item.base_prompt or item.prompt)


def example_pair(example: Row, template: JudgeTemplate, seed: int = 0) -> Row:
    """One judge example as a preference pair (module doc); ``meta`` keeps where it came from."""
    label = str(example["label"])
    if label not in BIAS_LABELS:
        raise UserError(f"judge example '{example.get('id')}': label '{label}' is not one of "
                        f"{', '.join(BIAS_LABELS)}; rebuild the world with `robalign world build`")
    wrong = random.Random(f"{seed}:rejected:{example['id']}").choice([x for x in BIAS_LABELS if x != label])
    return {"id": str(example["id"]), "prompt": judge_prompt(example, template),
            "chosen": verdict_text(label), "rejected": verdict_text(wrong),
            "meta": {"label": label, "rejected_label": wrong, "template": template.name,
                     "attacked": judge_item(example).attacked, "category": example.get("category"),
                     "task": example.get("task"), "attack": example.get("attack", "")}}


def select_examples(rows: list[Row], n: int, attacked_share: float, seed: int = 0) -> list[Row]:
    """``n`` examples, ``n // 4`` per label (the remainder to the first labels in S, CS, D, R
    order), of which ``round(per_label * attacked_share)`` attacked where there are enough;
    in a seeded random order. Fewer than asked when the data runs out."""
    if not 0.0 <= attacked_share <= 1.0:
        raise UserError(f"attacked share must lie in [0, 1], got {attacked_share}")
    rng = random.Random(f"{seed}:select")
    chosen: list[Row] = []
    for k, label in enumerate(BIAS_LABELS):
        quota = n // len(BIAS_LABELS) + (k < n % len(BIAS_LABELS))
        pool = [r for r in rows if r["label"] == label]
        attacked = [r for r in pool if judge_item(r).attacked]
        plain = [r for r in pool if not judge_item(r).attacked]
        take_attacked = min(len(attacked), round(quota * attacked_share))
        chosen += rng.sample(attacked, take_attacked)
        chosen += rng.sample(plain, min(len(plain), quota - take_attacked))
    rng.shuffle(chosen)
    return chosen


def _norm(text: Any) -> str:
    return re.sub(r"\s+", " ", str(text)).strip().lower()


def control_texts(control_set: str | Path) -> tuple[set[str], set[str]]:
    """The CLEAR-Bias control set's prompts and responses, normalised (case, spaces)."""
    from robalign.evaluation.tables import load_control_set

    df = load_control_set(control_set)
    return set(map(_norm, df["PROMPT"])), set(map(_norm, df["RESPONSE"]))


def overlaps(example: Row, prompts: set[str], responses: set[str]) -> bool:
    """Whether the example's prompt, base prompt or response equals a control-set text."""
    texts = [example.get("prompt"), example.get("base_prompt")]
    return any(_norm(t) in prompts for t in texts if t) or _norm(example.get("response", "")) in responses


@dataclass
class JudgeData:
    """What ``write_judge_data`` wrote: pair files and the counts the judge card records."""

    train: Path
    eval: Path
    template: str  # template version, e.g. bias-compact@1a2b3c4d
    counts: dict[str, Any]  # per split: pairs, per label, attacked
    dropped_overlap: dict[str, int]  # per split: examples dropped for equalling a control-set text
    control_set: str | None
    world: dict[str, Any] = field(default_factory=dict)  # world dir, fingerprint, seed

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def read_examples(world: str | Path, split: str) -> list[Row]:
    path = Path(world) / "judge" / f"{split}.jsonl"
    if not path.is_file():
        raise UserError(f"{path} not found: --world must be a directory written by `robalign world build`")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}: line {n} is not JSON; rebuild the world with `robalign world build`") from None
        missing = [k for k in ("id", "prompt", "response", "label") if k not in row]
        if missing:
            raise UserError(f"{path}: line {n} lacks {', '.join(missing)}; rebuild the world with `robalign world build`")
        rows.append(row)
    return rows


def write_judge_data(world: str | Path, out: str | Path, *, examples: int = 384, eval_examples: int = 32,
                     attacked_share: float = 0.125, template: str = DEFAULT_TEMPLATE, seed: int = 0,
                     control_set: str | Path | None = None) -> JudgeData:
    """Select examples from ``world``'s judge/train.jsonl and judge/eval.jsonl (held-out prompts),
    drop control-set look-alikes (when ``control_set`` is given), and write them as pairs to
    ``out``/train.jsonl and ``out``/eval.jsonl."""
    t = judge_template(template)
    prompts, responses = control_texts(control_set) if control_set else (set(), set())
    out = Path(out)
    written, counts, dropped = {}, {}, {}
    for split, n in (("train", examples), ("eval", eval_examples)):
        rows = read_examples(world, split)
        kept = [r for r in rows if not overlaps(r, prompts, responses)]
        dropped[split] = len(rows) - len(kept)
        pairs = [example_pair(r, t, seed) for r in select_examples(kept, n, attacked_share, seed)]
        written[split] = out / f"{split}.jsonl"
        write_jsonl(written[split], pairs)
        counts[split] = {"pairs": len(pairs), "labels": dict(Counter(p["meta"]["label"] for p in pairs)),
                         "attacked": sum(p["meta"]["attacked"] for p in pairs)}
    return JudgeData(written["train"], written["eval"], t.version, counts, dropped,
                     str(control_set) if control_set else None, world_info(world))


def world_info(world: str | Path) -> dict[str, Any]:
    """The world's directory, fingerprint and seed (from world.json; sha256 of the judge files otherwise)."""
    world = Path(world)
    meta = world / "world.json"
    if meta.is_file():
        data = json.loads(meta.read_text(encoding="utf-8"))
        return {"dir": str(world), "fingerprint": data.get("fingerprint"), "seed": data.get("seed")}
    digest = hashlib.sha256()
    for split in ("train", "eval"):
        path = world / "judge" / f"{split}.jsonl"
        digest.update(path.read_bytes() if path.is_file() else b"")
    return {"dir": str(world), "fingerprint": digest.hexdigest(), "seed": None}


def judge_spec(model_dir: str | Path, template: str = DEFAULT_TEMPLATE) -> str:
    """The judge spec that uses a trained judge: ``llm:hf:DIR#bias-compact``."""
    return f"llm:hf:{model_dir}#{template}"


def write_judge_card(model_dir: str | Path, data: JudgeData, **facts: Any) -> Path:
    """``model_dir``/robalign_judge.json: the spec to use, the template version it was trained
    with, the world and the pairs it saw, plus ``facts`` (base model, steps, wall time...). The
    model's fingerprint ignores this file (config and weights only), so cached verdicts stay valid."""
    from robalign.provenance import write_json_atomic

    template = data.template.split("@")[0]
    card = {"spec": judge_spec(model_dir, template), "template": data.template, **data.to_dict(), **facts}
    return write_json_atomic(Path(model_dir) / CARD, card)
