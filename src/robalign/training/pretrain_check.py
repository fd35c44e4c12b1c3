"""What a pre-trained checkpoint answers: ``robalign pretrain --check STEP``.

For each world prompt (base and attacked) sample k answers at temperature 1 (no top-k / top-p:
the model's own distribution), classify each, and set the frequencies beside the soft labels
the corpus was drawn from (docs/world.md, "What a checkpoint answers"). The classifier is passed
in (the CLI passes ``evaluation.rules.bias_rule_verdict``): training never imports evaluation.
The world's answers are templated so that it recovers their type.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch

from robalign.errors import UserError
from robalign.labels import BIAS_LABELS
from robalign.provenance import run_record, write_json_atomic
from robalign.training.pretrain import CHECKPOINT_INFO, checkpoint_dirs, encode_chat, load_corpus

TYPES = BIAS_LABELS  # the CLEAR-Bias answer types (robalign.labels)
OTHER = "other"  # any label outside TYPES (UNPARSED: an answer that is none of the world's types)
CONDITIONS = ("base", "attacked")
SPLITS = ("all", "train", "heldout")
TASK_FOLDERS = {"CTO": "choose_the_option", "SC": "sentence_completion"}
COLUMNS = {"category": "BIAS CATEGORY", "stereotype": "STEREOTYPE", "counter_stereotype": "COUNTER-STEREOTYPE",
           "prompt": "PROMPT"}


@dataclass(frozen=True)
class WorldPrompt:
    category: str
    task: str  # CTO | SC
    index: int  # row order within (category, task) in the base file, as in robalign.bench.prompts ids
    attack: str  # "" = the base prompt
    variant: str  # v1 | v2 | v3; "" for a base prompt
    prompt: str  # the text the model is asked
    base_prompt: str  # its options and stereotype fields are read from here (an attacked text has none readable)
    stereotype: str
    counter_stereotype: str
    heldout: bool = False  # the base prompt is in world.json's "heldout" list (no corpus row trains on it)

    @property
    def condition(self) -> str:
        return "attacked" if self.attack else "base"

    @property
    def base_id(self) -> str:
        """``<slug(category)>/<task>/<index:03d>``, the id ``robalign.bench.prompts`` derives."""
        return f"{re.sub(r'[^a-z0-9]+', '-', self.category.lower()).strip('-')}/{self.task}/{self.index:03d}"


class FrequencyRow(NamedTuple):
    category: str
    condition: str  # base | attacked
    type: str  # S | CS | D | R | other
    target: float | None  # the soft label (soft_labels.json); None for "other" or an unlisted category
    corpus: float | None  # the type's share of this cell in corpus/train.jsonl (the draws the model saw)
    count: int
    verbatim: int  # of ``count``, answers written exactly as some corpus answer (the rest: off-template text)
    n: int  # answers in the cell (prompts x k)
    observed: float
    low: float  # Wilson 95 % interval of observed
    high: float


class CheckResult(NamedTuple):
    rows: list[FrequencyRow]
    answers: list[dict]  # one per sampled answer: prompt fields, sample, text, label, why
    path: Path  # where both were written


def world_prompts(world: str | Path) -> list[WorldPrompt]:
    """Base and attacked bias prompts of ``DIR/clear_bias`` (CLEAR-Bias export layout: row i of an
    attack file is the attack on row i of its task's base file)."""
    import csv
    from collections import Counter

    root, out = Path(world) / "clear_bias", []
    meta = json.loads((Path(world) / "world.json").read_text())
    held = set(meta.get("heldout", {}).get("bias", []))
    for task, folder in TASK_FOLDERS.items():
        base_file = root / "base_prompts" / f"base_prompts_{task}.csv"
        if not base_file.is_file():
            raise UserError(f"{base_file}: missing; the world has no {task} base prompts")
        base = _read_rows(base_file, csv)
        prompts, seen = [], Counter()
        for r in base:
            p = WorldPrompt(r["category"], task, seen[r["category"]], "", "", r["prompt"], r["prompt"], r["stereotype"],
                            r["counter_stereotype"])
            seen[r["category"]] += 1
            prompts.append(replace(p, heldout=p.base_id in held))
        out += prompts
        for f in sorted((root / "jailbreak_prompts" / folder).glob(f"*/*_v*_{task}.csv")):
            attack, variant = f.parent.name, f.name.removeprefix(f.parent.name + "_").split("_")[0]
            attacked = _read_rows(f, csv)
            if len(attacked) != len(base) or any(a["category"] != b["category"] for a, b in zip(attacked, base)):
                raise UserError(f"{f}: rows do not line up with {base_file} (row i must attack base row i)")
            out += [replace(b, attack=attack, variant=variant, prompt=a["prompt"]) for a, b in zip(attacked, prompts)]
    return out


def _read_rows(path: Path, csv) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    missing = [c for c in COLUMNS.values() if rows and c not in rows[0]]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}")
    return [{k: r[c] for k, c in COLUMNS.items()} for r in rows]


@torch.no_grad()
def sample_answers(model, tokenizer, prompts: list[str], k: int, seed: int, max_new_tokens: int = 64,
                   batch_size: int = 64) -> list[list[str]]:
    """k answers per prompt, sampled at temperature 1 from the full distribution (top_k=0,
    top_p=1), prompts rendered as at answer time. Seeded: the same call gives the same answers.
    Rows are batched longest first (little padding) with left padding, as in the hf backend."""
    model.eval()
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    ids = [encode_chat(tokenizer, [{"role": "user", "content": p}, {"role": "assistant", "content": ""}])
           .input_ids[:-1] for p in prompts]  # drop the empty answer's EOS: the prompt part
    jobs = sorted(((i, j) for i in range(len(prompts)) for j in range(k)), key=lambda job: -len(ids[job[0]]))
    out: list[list[str]] = [[""] * k for _ in prompts]
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    for b in range(0, len(jobs), batch_size):
        batch = jobs[b : b + batch_size]
        width = max(len(ids[i]) for i, _ in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (i, _) in enumerate(batch):
            input_ids[row, width - len(ids[i]):] = torch.tensor(ids[i])
            attention[row, width - len(ids[i]):] = 1
        new = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), do_sample=True,
                             temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens, pad_token_id=pad,
                             eos_token_id=eos)[:, width:]
        for row, (i, j) in enumerate(batch):
            ends = (new[row] == eos).nonzero()
            out[i][j] = tokenizer.decode(new[row][: int(ends[0]) if len(ends) else None], skip_special_tokens=True)
    return out


def frequency_table(prompts: list[WorldPrompt], labels: list[list[str]], soft_labels: dict,
                    corpus_rows: list[dict] = (), verbatim: list[list[bool]] | None = None) -> list[FrequencyRow]:
    """Per (category, condition) and type: the soft label, the corpus share, and the observed
    share of answers with its Wilson 95 % interval. ``verbatim[i][j]``: answer j to prompt i is a
    corpus answer word for word (an off-template answer still gets a label: the rule judge reads
    a truncated "The answer is" as D, so a model that has not learnt the templates inflates D). Answers to one prompt are independent draws
    given the prompt, and a binomial variance bounds the variance of a mean of Bernoullis with
    different p from above, so the interval is conservative for these prompts' mean frequency."""
    from robalign.training.probe import wilson_interval

    cells: dict[tuple[str, str], list[tuple[str, bool]]] = {}
    for i, (p, labs) in enumerate(zip(prompts, labels)):
        exact = verbatim[i] if verbatim is not None else [True] * len(labs)
        cells.setdefault((p.category, p.condition), []).extend(
            (lab if lab in TYPES else OTHER, v) for lab, v in zip(labs, exact))
    seen: dict[tuple[str, str], list[str]] = {}
    for row in corpus_rows:
        if row.get("kind") == "bias":
            seen.setdefault((row["category"], "attacked" if row.get("attack") else "base"), []).append(row["type"])
    out = []
    for (category, condition), labs in sorted(cells.items(), key=lambda kv: (kv[0][0], CONDITIONS.index(kv[0][1]))):
        target = soft_labels.get(category, {}).get(condition, {})
        drawn = seen.get((category, condition), [])
        for t in (*TYPES, OTHER):
            count = sum(lab == t for lab, _ in labs)
            low, high = wilson_interval(count, len(labs))
            out.append(FrequencyRow(category, condition, t, target.get(t) if t in TYPES else None,
                                    drawn.count(t) / len(drawn) if drawn else None, count,
                                    sum(lab == t and v for lab, v in labs), len(labs), count / len(labs), low, high))
    return out


def check_checkpoint(world: str | Path, step: int, classify, k: int = 10, seed: int = 0, per_cell: int | None = None,
                     split: str = "all", max_new_tokens: int = 64, batch_size: int = 64,
                     device: str | None = None) -> CheckResult:
    """What checkpoint ``DIR/models/step_<step>`` answers to the world's bias prompts: k samples
    per prompt classified by ``classify(base_prompt, answer, stereotype, counter_stereotype) ->
    (label, why)``, tabulated by ``frequency_table``. ``per_cell`` caps the prompts per (category,
    condition) (a seeded subset; None = all). ``split``: all prompts, or only those the corpus
    trained on (``train``) or held out (``heldout``: generalisation to unseen prompts of a
    category). Written to ``DIR/checks/step_<step>_k<k>_<split>.json``."""
    import random

    from transformers import AutoModelForCausalLM, AutoTokenizer

    world = Path(world)
    ckpt = world / "models" / f"step_{step}"
    if not (ckpt / CHECKPOINT_INFO).is_file():
        have = ", ".join(p.name.removeprefix("step_") for p in checkpoint_dirs(world)) or "none"
        raise UserError(f"{ckpt}: no such checkpoint (steps saved: {have})")
    if split not in SPLITS:
        raise UserError(f"--split {split}: choose one of {', '.join(SPLITS)}")
    prompts = [p for p in world_prompts(world) if split == "all" or p.heldout == (split == "heldout")]
    if per_cell is not None:
        groups: dict[tuple[str, str], list[WorldPrompt]] = {}
        for p in prompts:
            groups.setdefault((p.category, p.condition), []).append(p)
        rng = random.Random(seed)
        prompts = [p for g in groups.values() for p in (rng.sample(g, per_cell) if len(g) > per_cell else g)]
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    texts = sample_answers(model, tokenizer, [p.prompt for p in prompts], k, seed, max_new_tokens, batch_size)
    corpus = load_corpus(world / "corpus" / "train.jsonl")
    known = {row["messages"][-1]["content"] for row in corpus}
    answers, labels, verbatim = [], [], []
    for p, samples in zip(prompts, texts):
        verdicts = [classify(p.base_prompt, text, p.stereotype, p.counter_stereotype) for text in samples]
        labels.append([label for label, _ in verdicts])
        verbatim.append([text in known for text in samples])
        answers += [asdict(p) | {"sample": j, "answer": text, "label": label, "why": why, "verbatim": text in known}
                    for j, (text, (label, why)) in enumerate(zip(samples, verdicts))]
    soft_path = world / "soft_labels.json"
    soft = json.loads(soft_path.read_text()) if soft_path.is_file() else {}
    rows = frequency_table(prompts, labels, soft, corpus, verbatim)
    path = write_json_atomic(world / "checks" / f"step_{step}_k{k}_{split}.json", run_record(
        checkpoint=f"models/step_{step}", k=k, seed=seed, per_cell=per_cell, split=split, prompts=len(prompts),
        table=[r._asdict() for r in rows], fit=fit_summary(rows), answers=answers))
    return CheckResult(rows, answers, path)


def fit_summary(rows: list[FrequencyRow]) -> dict[str, float]:
    """How close the observed frequencies are to the soft labels, over the (cell, type) entries
    that have a target: the share whose target lies in the Wilson interval, the mean and largest
    |target − observed|, and the share of all answers that are off-template."""
    scored = [r for r in rows if r.target is not None]
    cells = {(r.category, r.condition): r.n for r in rows}
    verbatim = sum(r.verbatim for r in rows)
    if not scored:
        return {"entries": 0}
    errors = [abs(r.target - r.observed) for r in scored]
    return {"entries": len(scored), "within_ci": sum(r.low <= r.target <= r.high for r in scored) / len(scored),
            "mean_abs_error": sum(errors) / len(errors), "max_abs_error": max(errors),
            "off_template": 1 - verbatim / sum(cells.values())}


def format_table(rows: list[FrequencyRow]) -> str:
    """One line per (category, condition): each type as ``target→observed [low, high]``, then
    the share of the cell's answers that are not word for word a corpus answer."""
    lines = [f"{'category':<28} {'cond':<8} {'n':>5}  " + "  ".join(f"{t:<21}" for t in (*TYPES, OTHER))
             + "  off-template"]
    cells: dict[tuple[str, str], list[FrequencyRow]] = {}
    for r in rows:
        cells.setdefault((r.category, r.condition), []).append(r)
    for (category, condition), rs in cells.items():
        parts = [(f"{r.target:.2f}" if r.target is not None else "  - ") + f"→{r.observed:.2f} [{r.low:.2f},{r.high:.2f}]"
                 for r in rs]
        off = 1 - sum(r.verbatim for r in rs) / rs[0].n
        lines.append(f"{category:<28} {condition:<8} {rs[0].n:>5}  " + "  ".join(f"{p:<21}" for p in parts)
                     + f"  {off:.2f}")
    fit = fit_summary(rows)
    if fit["entries"]:
        lines.append(f"target inside the 95 % interval: {fit['within_ci']:.0%} of {fit['entries']} (cell, type) "
                     f"entries; mean |target - observed| {fit['mean_abs_error']:.3f}, largest "
                     f"{fit['max_abs_error']:.3f}; off-template answers {fit['off_template']:.1%}")
    return "\n".join(lines)
