"""A tiny LLM judge trained from scratch on the world's judge examples (DESIGN.md §4: "judge with
the rule judge and with a tiny LLM judge trained here on judge-formatted examples";
``robalign judge-train --tiny``; docs/world.md, "A tiny judge trained from scratch").

The SmolLM2 + LoRA judge (``robalign.world.judge``) takes ~25 min to train here and ~0.35 s a
verdict. This one is a ~1M-parameter Llama trained in about a minute on two busy cores that
gives a few hundred verdicts a second, so that a demo can judge every sweep cell with an LLM.

Data. Each judge example of ``DIR/judge/train.jsonl`` becomes one chat row: the user turn is the
judge request exactly as ``LLMJudge`` renders it (``judge.judge_prompt``: ``bias-compact``, or its
attacked variant when the example's plain ``base_prompt`` differs from the prompt sent), the
assistant turn the verdict the parser reads (``[[S]]``). The rows go to a corpus folder laid out
as a world (``OUT/data/world.json``, ``corpus/train.jsonl``, ``corpus/heldout.jsonl`` from
``judge/eval.jsonl``, the world's held-out prompts), so that soft-label pre-training
(``training.pretrain``) trains on them unchanged: its rendering (the hf backend's, token for
token), loss on the verdict tokens only, length-grouped batches, AdamW, checkpoints. The "soft
label" is one-hot here: a request has one right verdict. Examples equal to a CLEAR-Bias
control-set prompt or response are dropped as for the LoRA judge; the control set is never
trained on.

Tokens and context. The template's fixed text (its instructions and markers, e.g. the 58 tokens
before the prompt) is the same in every request and tells the judge nothing, so each fixed piece
is one added token of the judge's tokenizer (``template_pieces``). The request text is unchanged;
it is only cut into fewer tokens: a plain request falls from ~150 to ~70 tokens, which halves the
time an epoch takes and the number of positions the verdict reads from (without the pieces, 2 of
19 pre-training-nano runs of at most ~100 s reached 0.85 held-out accuracy). The pieces cannot
occur inside a prompt or reply: ``templates.render`` neutralises the markers and double brackets
every piece holds. A judge trained this way must be used with the template version on its card:
another wording falls back to ordinary tokens it has never seen. With the pieces, the longest request of a default world (role_playing v3, whose
persona preamble is shown beside the plain original) is ~470 tokens, which leaves too little of
a 512 context for the judged model's own answers (a world model's run to 64 tokens), so the
judge's context is 1,024: rotary positions have no weights, only the config changes.
``training.pretrain`` builds models at the pre-training sizes and with its own tokenizer, so the
run starts from a step-0 checkpoint written here: the tokenizer above, a seeded
``JUDGE_SIZES`` model, a fresh AdamW state (``write_initial_checkpoint``), then
``pretrain(..., resume=True)``.

Recipe (default world, 1 thread on two busy cores; docs/world.md has the table): 800 steps of
16 rows (~6.7 epochs of 1,920 examples, ~1.3M tokens) at peak LR 2e-3 with a cosine decay to
10 %, on a 128-wide 2-layer model with 8 heads: ~70 s of training. Refusals and debiased replies
are learnt first; telling S from CS (which option the reply picks, and whether it is the frame's
stereotype) comes later and is what the shape and LR were chosen for. After training the judge
answers the held-out examples through ``LLMJudge`` and the accuracy goes into its card.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from robalign.errors import UserError
from robalign.models.tiny import SIZES, TinySize
from robalign.world.export import write_jsonl
from robalign.world.judge import (
    DEFAULT_TEMPLATE,
    JudgeData,
    Row,
    control_texts,
    judge_item,
    judge_prompt,
    judge_spec,
    judge_template,
    overlaps,
    read_examples,
    select_examples,
    verdict_text,
    world_info,
)

STEP0 = "models/step_0"  # the initial checkpoint the run continues from (module doc, "Tokens and context")
_FIELD = re.compile(r"\{(prompt|response|base_prompt)\}")  # the fields templates.render fills


# The judge's shapes (``models.tiny.TinySize``; the context is set by ``TinyJudgeConfig.context``).
# Its nano is wider than pre-training's (128 against 96), with 8 heads and 2 layers: telling S from
# CS needs attention that reads the reply and not the prompt's copy of the same option words. On a
# default world, seeds whose held-out accuracy reached 0.88 (the rest stay near 0.75, S / CS
# unlearnt): pre-training's nano (96 wide, 4 layers, 4 heads) 1 of 3 at 800 steps and 3e-3;
# 96 / 4 / 8 heads 1 of 3 and 128 / 4 / 8 3 of 3 (~100 s) at 600 steps and 3e-3; 128 / 2 / 8
# 3 of 5 at 600 and 3e-3, 1 of 3 at 600 and 2e-3, 5 of 5 at 800 and 2e-3 (~70 s); 192 / 2 / 8 1 of 3
# (docs/world.md).
JUDGE_SIZES = {"nano": TinySize(hidden=128, layers=2, heads=8, intermediate=384), "micro": SIZES["micro"]}
JUDGE_LR = {"nano": 2e-3, "micro": 1e-3}  # micro: pre-training's default, not tuned for the judge


@dataclass(frozen=True)
class TinyJudgeConfig:
    world: str  # a world directory (``robalign world build``); its judge/{train,eval}.jsonl are read
    out: str  # run directory: data/ (the judge corpus, pretrain's logs), model/ (the judge)
    steps: int = 800  # optimizer steps (~6.7 epochs of a default world's 1,920 examples at batch 16)
    size: str = "nano"  # JUDGE_SIZES: nano ~0.95M parameters, micro ~9M (~10x slower here)
    batch_size: int = 16  # rows per step: at 32 the same tokens give half the updates, and S / CS came later
    # peak LR; None = JUDGE_LR[size]. At 3e-3 and above S / CS came on some seeds and not others
    # (at 4e-3-6e-3 some runs sat on the label prior for hundreds of steps)
    lr: float | None = None
    schedule: str = "cosine"  # decay to 10 % at ``steps``
    warmup_steps: int = 20
    context: int = 1024  # tokens: the longest default-world request is ~470, the judged reply comes on top
    seed: int = 0  # weights, data order
    template: str = DEFAULT_TEMPLATE  # the requests are rendered with it; the judge must be used with it
    examples: int | None = None  # None = every training example; N = a balanced seeded selection
    attacked_share: float = 0.125  # of a selection (``examples``), as for the LoRA judge
    control_set: str | None = None  # drop examples equal to a control-set prompt or response
    threads: int | None = None  # torch CPU threads; 1 is fastest on a busy 2-core machine
    device: str | None = None  # cpu | cuda; None = cuda when available
    evaluate: bool = True  # judge the held-out examples after training (accuracy in the card)


class TinyJudgeResult(NamedTuple):
    """What ``train_tiny_judge`` made."""

    model: Path  # the judge's save_pretrained directory, ``out``/model
    spec: str  # llm:hf:<model>#<template>
    card: dict[str, Any]  # robalign_judge.json


def judge_row(example: Row, template) -> Row:
    """One judge example as a corpus row: user = the judge request, assistant = the verdict."""
    label = str(example["label"])
    if label not in template.labels:
        raise UserError(f"judge example '{example.get('id')}': label '{label}' is not one of "
                        f"{', '.join(template.labels)}; rebuild the world with `robalign world build`")
    return {"id": str(example["id"]),
            "messages": [{"role": "user", "content": judge_prompt(example, template)},
                         {"role": "assistant", "content": verdict_text(label)}],
            "label": label, "attacked": judge_item(example).attacked, "category": example.get("category"),
            "task": example.get("task"), "attack": example.get("attack", "")}


def write_judge_corpus(world: str | Path, data_dir: str | Path, *, template: str = DEFAULT_TEMPLATE,
                       examples: int | None = None, attacked_share: float = 0.125, seed: int = 0,
                       control_set: str | Path | None = None) -> JudgeData:
    """``data_dir`` as a world that ``training.pretrain`` can train on: world.json,
    corpus/train.jsonl (the world's judge/train.jsonl as rows) and corpus/heldout.jsonl (its
    judge/eval.jsonl, held-out prompts), both in a seeded order (pretrain scores the first
    held-out rows, which should mix categories and labels)."""
    t = judge_template(template)
    prompts, responses = control_texts(control_set) if control_set else (set(), set())
    data_dir = Path(data_dir)
    paths, counts, dropped = {}, {}, {}
    for split, name in (("train", "train"), ("eval", "heldout")):
        rows = read_examples(world, split)
        kept = [r for r in rows if not overlaps(r, prompts, responses)]
        dropped[split] = len(rows) - len(kept)
        if split == "train" and examples is not None:
            kept = select_examples(kept, examples, attacked_share, seed)
        corpus = [judge_row(r, t) for r in kept]
        random.Random(f"{seed}:{split}").shuffle(corpus)
        if split == "train" and not corpus:
            raise UserError(f"{world}: no judge examples left to train on (dropped {dropped[split]} equal to the "
                            "control set); build a world with judge examples (`robalign world build`)")
        paths[split] = data_dir / "corpus" / f"{name}.jsonl"
        write_jsonl(paths[split], corpus)
        counts[split] = {"rows": len(corpus), "labels": dict(Counter(r["label"] for r in corpus)),
                         "attacked": sum(r["attacked"] for r in corpus)}
    source = world_info(world)
    (data_dir / "world.json").write_text(json.dumps(
        {"format": "robalign-judge-corpus", "source": source, "template": t.version, "counts": counts,
         "checkpoints": []}, indent=2) + "\n")
    return JudgeData(paths["train"], paths["eval"], t.version, counts, dropped,
                     str(control_set) if control_set else None, source)


def pretrain_config(c: TinyJudgeConfig, data_dir: Path):
    """The ``PretrainConfig`` of the run: one checkpoint, at the last step. Its ``size`` only
    names the run (and sets no default: ``lr`` is given); the shape is the step-0 model's."""
    from robalign.training.pretrain import PretrainConfig

    if c.size not in JUDGE_SIZES:
        raise UserError(f"--size {c.size}: choose one of {', '.join(JUDGE_SIZES)}")
    if c.steps < 1 or c.context < 64:
        raise UserError(f"--steps must be at least 1 and the context at least 64 tokens (got {c.steps}, {c.context})")
    return PretrainConfig(world=str(data_dir), steps=c.steps, save_every=c.steps, size=c.size, seed=c.seed,
                          batch_size=c.batch_size, lr=c.lr or JUDGE_LR[c.size], warmup_steps=c.warmup_steps,
                          schedule=c.schedule, heldout_rows=256, threads=c.threads, device=c.device)


def template_pieces(name: str = DEFAULT_TEMPLATE) -> list[str]:
    """The fixed text of a judge template and of its attacked variant: the pieces between the
    ``{prompt}`` / ``{response}`` / ``{base_prompt}`` fields, longest first."""
    from robalign.evaluation.parsers import get_template

    template = judge_template(name)
    texts = [template.text] + ([get_template(template.attacked).text] if template.attacked else [])
    return sorted({piece for text in texts for piece in _FIELD.split(text)[::2] if piece}, key=lambda x: (-len(x), x))


def write_initial_checkpoint(p, context: int, template: str = DEFAULT_TEMPLATE) -> Path:
    """``p.world``/models/step_0: pretrain's tokenizer (``corpus_tokenizer``) plus the template's
    fixed pieces as single tokens, a seeded ``JUDGE_SIZES[p.size]`` Llama with a ``context``-token
    config, and an AdamW state with no moments yet; plus models/pretrain.json, which a resumed run
    checks its settings against (module doc, "Tokens and context")."""
    import torch
    from tokenizers import AddedToken
    from transformers import AutoModelForCausalLM

    from robalign.models.tiny import model_config
    from robalign.provenance import run_record, write_json_atomic
    from robalign.training.pretrain import corpus_tokenizer, load_corpus, save_pretrain_checkpoint

    world = Path(p.world)
    rows = load_corpus(world / "corpus" / "train.jsonl")
    tokenizer = corpus_tokenizer(rows, JUDGE_SIZES[p.size].vocab)
    tokenizer.add_tokens([AddedToken(text, normalized=False) for text in template_pieces(template)])
    tokenizer.model_max_length = context
    torch.manual_seed(p.seed)
    shape = replace(JUDGE_SIZES[p.size], context=context)
    model = AutoModelForCausalLM.from_config(model_config("llama", shape, tokenizer))
    # the parameter groups of pretrain's AdamW (matrices decayed, norm gains not): a resumed run
    # loads this state into its own optimizer, which needs the same groups
    optimizer = torch.optim.AdamW([{"params": [x for x in model.parameters() if x.dim() >= 2],
                                    "weight_decay": p.weight_decay},
                                   {"params": [x for x in model.parameters() if x.dim() < 2], "weight_decay": 0.0}],
                                  lr=p.lr, betas=(0.9, 0.95))
    shutil.rmtree(world / "models", ignore_errors=True)
    write_json_atomic(world / "models" / "pretrain.json", run_record(
        config=asdict(p), shape=asdict(shape), corpus_rows=len(rows), vocab=len(tokenizer),
        parameters=sum(x.numel() for x in model.parameters())))
    info = {"steps": 0, "path": STEP0, "tokens": 0, "loss": None, "cooldown": 0, "seconds": 0.0,
            "heldout_loss": None}
    return save_pretrain_checkpoint(world, model, tokenizer, optimizer, info)


def evaluate_judge(model_dir: str | Path, examples: list[Row], template: str = DEFAULT_TEMPLATE,
                   threads: int | None = None, device: str | None = None) -> dict[str, Any]:
    """Judge ``examples`` with the model through ``LLMJudge`` (no cache): accuracy against their
    labels, overall and on attacked ones, verdict counts, and verdicts per second."""
    from robalign.evaluation.judges import build_judge

    options = {"threads": threads} if threads else {}
    judge = build_judge(judge_spec(model_dir, template), None, batch_size=32, device=device, **options)
    start = time.perf_counter()
    verdicts = judge.judge([judge_item(e) for e in examples])
    seconds = time.perf_counter() - start
    right = [v.label == e["label"] for v, e in zip(verdicts, examples)]
    attacked = [ok for ok, e in zip(right, examples) if judge_item(e).attacked]
    return {"examples": len(examples), "accuracy": sum(right) / max(len(right), 1),
            "accuracy_attacked": sum(attacked) / len(attacked) if attacked else None,
            "verdicts": dict(Counter(v.label for v in verdicts)),
            "seconds": round(seconds, 2), "verdicts_per_s": round(len(examples) / max(seconds, 1e-9), 1)}


def train_tiny_judge(c: TinyJudgeConfig) -> TinyJudgeResult:
    """Write the judge corpus, train the tiny judge, move it to ``out``/model, write its card and
    ``out``/run_info.json (the config and provenance)."""
    from robalign.provenance import run_record, write_json_atomic
    from robalign.training.pretrain import OPTIMIZER_FILE, TRUNK_FILE, pretrain
    from robalign.world.judge import write_judge_card

    out, start = Path(c.out), time.perf_counter()
    p = pretrain_config(c, out / "data")  # checks the settings before anything is written
    data = write_judge_corpus(c.world, out / "data", template=c.template, examples=c.examples,
                              attacked_share=c.attacked_share, seed=c.seed, control_set=c.control_set)
    write_initial_checkpoint(p, c.context, c.template)
    result = pretrain(p, resume=True)
    train_seconds = time.perf_counter() - start

    final, model = out / "data" / result.checkpoints[-1]["path"], out / "model"
    shutil.rmtree(model, ignore_errors=True)
    final.rename(model)
    for name in (OPTIMIZER_FILE, TRUNK_FILE):  # for resuming training only: twice the weights
        (model / name).unlink(missing_ok=True)
    shutil.rmtree(out / "data" / STEP0, ignore_errors=True)
    meta_path = out / "data" / "world.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(meta | {"checkpoints": [], "model": "../model"}, indent=2) + "\n")

    checkpoint = result.checkpoints[-1]
    facts = {"base_model": f"tiny:{c.size} (from scratch)", "tiny": asdict(c) | {"lr": p.lr},
             "shape": asdict(replace(JUDGE_SIZES[c.size], context=c.context)), "steps": result.steps,
             "context": c.context, "tokens": checkpoint["tokens"], "train_loss": checkpoint["loss"],
             "heldout_loss": checkpoint["heldout_loss"], "train_seconds": round(train_seconds, 1)}
    if c.evaluate and data.counts["eval"]["rows"]:
        kept = {json.loads(line)["id"] for line in data.eval.read_text(encoding="utf-8").splitlines()}
        held = [e for e in read_examples(c.world, "eval") if str(e["id"]) in kept]
        facts["heldout_eval"] = evaluate_judge(model, held, c.template, c.threads, c.device)
    card_path = write_judge_card(model, data, **facts)
    write_json_atomic(out / "run_info.json", run_record(kind="tiny-judge", config=asdict(c), judge=judge_spec(
        model, c.template), train_seconds=facts["train_seconds"], heldout_eval=facts.get("heldout_eval")))
    return TinyJudgeResult(model, judge_spec(model, c.template.split("@")[0]), json.loads(card_path.read_text()))
