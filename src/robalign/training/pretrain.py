"""Soft-label pre-training: a tiny Llama-style model trained from scratch, as a causal LM, on a
synthetic world's corpus (``DIR/corpus/train.jsonl``), so that its answers to the world's
prompts follow the soft labels the corpus was drawn from. Reads the world directory's files;
never imports ``robalign.world`` (DESIGN.md §4), nor ``robalign.evaluation``.

Tokenizer. ``models.tiny.build_tokenizer`` trained offline on its usual texts (stdlib docs for
a varied vocabulary) plus every distinct turn of the corpus, so the world's words are whole
tokens. It is built once, saved in every checkpoint, and read back from there on resume.

Rendering. A row's prompt is its turns before the last, rendered by the tokenizer's chat
template with ``add_generation_prompt=True`` and tokenised with no special tokens added: the
ids the hf generation backend feeds the model at answer time (``hf_backend.prompt_token_ids``).
The answer is the last (assistant) turn's text followed by EOS (``<|end|>``), the token that
ends generation; the template's newline after it is never generated, so it is not trained.

Loss on the answer tokens only. The soft label is a distribution over answers *given* the
prompt; the prompt carries no label, and a model that also learned to write the world's
prompts would spend a ~1M-parameter model's capacity on them (prompts are ~87 % of a default
world's tokens). It also makes the loss readable: its floor is the conditional entropy of
the answers, set by the soft labels, not by the prompt templates. The LM head runs on the
answer positions only, which halves a nano step (its 96 x 4096 head costs as much as its four
layers).

Batches. Rows are padded on the right to the longest row of the batch, with no attention mask:
attention is causal, so no real token ever attends to the pads after it, and SDPA keeps its
unmasked causal kernel. Packing several rows into one sequence was rejected: without a
block-diagonal mask an answer would attend to the previous row's answer (independent draws the
model could learn spurious links between), and on CPU there is no varlen kernel to make the
block mask cheap. Rows of similar length share a batch (``BatchPlan``: ~2 % padding where random
batches have ~64 %); the plan is a seeded function of the step, so a resumed run sees exactly the
batches an uninterrupted one would.

Optimiser. AdamW (β = 0.9, 0.95; weight decay 0.01), gradient norm clipped at 1.0. The learning
rate warms up linearly for ``warmup_steps``, then stays constant (default): a checkpoint at step
N is then the same model whatever ``steps`` the run was given, which is what a duration axis
needs, and a run can be extended with ``--resume --steps`` more. ``schedule="cosine"`` decays to
10 % of the peak at ``steps`` instead (its checkpoints depend on ``steps``; resume must keep it).

Cooldown. A constant LR leaves the model's answer frequencies noisy (each step moves them), so
``cooldown=C`` saves at every checkpoint step N not the constant-LR trunk but a branch off it:
the trunk's weights and AdamW state copied, trained C more steps on the batches the trunk sees
next with the LR falling linearly to 0 (warmup-stable-decay, one decay per checkpoint). The
trunk goes on unchanged, so checkpoints stay on one duration axis, at C extra steps each. On a
default world, 600 such steps after 4,800 at 3e-3 cut the mean |soft label - observed
frequency| from 0.063 to 0.042 and the off-template answers from 7.9 % to 4.2 %.

Checkpoints. ``DIR/models/step_<N>/`` is a ``save_pretrained`` model directory (safetensors,
tokenizer, chat template) plus ``robalign_pretrain.json`` ({"steps", "path", "tokens", "loss",
"seconds", "heldout_loss"}, with a cooldown also "cooldown", "cooldown_loss", "trunk_tokens";
``tokens`` and ``seconds`` count the checkpoint's own cooldown); the newest one also keeps
``optimizer.pt`` (AdamW state, removed from older ones: it is twice the weights) and, with a
cooldown, ``trunk.safetensors`` (the weights a resume continues from). Written under ``.partial``
and renamed, so a listed directory is complete. After every save, ``DIR/world.json``'s
``"checkpoints"`` is rewritten from the directories on disk. ``DIR/models/metrics.jsonl`` logs
loss, tokens, tokens/s and padding; ``DIR/models/pretrain.json`` the resolved config and provenance.

The check (``robalign pretrain --check``), what a checkpoint answers to the world's bias prompts
tabulated against the soft labels, is ``robalign.training.pretrain_check``.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from robalign.errors import UserError
from robalign.provenance import run_record, write_json_atomic
from robalign.training.metrics_log import MetricsLog

IGNORE = -100  # label of a token outside the loss (prompt tokens, pads)
CHECKPOINT_INFO = "robalign_pretrain.json"
OPTIMIZER_FILE = "optimizer.pt"
TRUNK_FILE = "trunk.safetensors"  # the constant-LR weights behind a cooled checkpoint (newest checkpoint only)
SCHEDULES = ("constant", "cosine")
# Peak learning rates: on the default world, nano reached a held-out answer loss of 1.40 nats
# after 200 steps at 3e-3 against 1.70 at 1e-3; a 10x larger model takes smaller steps.
DEFAULT_LR = {"nano": 3e-3, "micro": 1e-3}


@dataclass(frozen=True)
class PretrainConfig:
    world: str  # the world directory (``robalign world build --out``)
    steps: int  # optimizer steps to reach (a resumed run continues up to it)
    save_every: int  # checkpoint every K steps; the last step is always saved
    size: str = "nano"  # models.tiny.SIZES: nano ~0.8M, micro ~9M parameters
    seed: int = 0  # weight initialisation and data order
    batch_size: int = 32  # rows per step
    lr: float | None = None  # peak learning rate; None = DEFAULT_LR[size]
    warmup_steps: int = 20  # linear warm-up from lr / warmup_steps
    schedule: str = "constant"  # constant | cosine (to 10 % of lr at ``steps``)
    weight_decay: float = 0.01
    log_every: int = 10  # metrics.jsonl line every N steps (and at every checkpoint)
    heldout_rows: int = 256  # rows of corpus/heldout.jsonl scored at each checkpoint (0 = none)
    precision: str = "fp32"  # fp32 | bf16 (autocast, fp32 master weights: micro 1.75x faster on AMX, nano no faster)
    cooldown: int = 0  # each checkpoint = the trunk + this many steps of LR decaying linearly to 0 (0 = the trunk)
    device: str | None = None  # cpu | cuda; None = cuda when available
    # torch CPU threads while training; None = torch's default. On a busy 2-core machine 1 thread
    # ran nano at 11.3k tokens/s and 2 threads at 2.6k (OpenMP workers spin waiting for a core)
    threads: int | None = None


# the fields a resumed run must share with the run it continues (steps may grow)
_SAME_ON_RESUME = ("size", "seed", "batch_size", "lr", "warmup_steps", "schedule", "weight_decay", "precision",
                   "cooldown")
PRECISIONS = ("fp32", "bf16")


class Example(NamedTuple):
    input_ids: list[int]
    labels: list[int]  # IGNORE on prompt tokens, the token id on answer tokens (incl. the closing EOS)


class PretrainResult(NamedTuple):
    world: Path
    steps: int
    checkpoints: list[dict]  # as in world.json
    final_loss: float


# ---------------------------------------------------------------- data


def load_corpus(path: str | Path) -> list[dict]:
    """The rows of a corpus file, each checked to end with an assistant turn after a user turn."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no corpus file; build the world first (robalign world build --out DIR)")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            messages = row["messages"]
            ok = (len(messages) >= 2 and messages[-1]["role"] == "assistant" and messages[-2]["role"] == "user"
                  and all(isinstance(m["content"], str) for m in messages))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"{path}: line {lineno} is not a corpus row ({exc!r}); expected "
                            '{"messages": [{"role": "user", ...}, {"role": "assistant", ...}], ...}') from None
        if not ok:
            raise UserError(f"{path}: line {lineno}: messages must end with a user turn then an assistant turn")
        rows.append(row)
    if not rows:
        raise UserError(f"{path}: the corpus is empty")
    return rows


def corpus_tokenizer(rows: list[dict], vocab_size: int):
    """The offline BPE tokenizer trained on its usual texts plus every distinct turn of ``rows``."""
    from robalign.models.tiny import build_tokenizer, tokenizer_corpus

    turns = sorted({m["content"] for row in rows for m in row["messages"]})  # sorted: a reproducible order
    return build_tokenizer(vocab_size, texts=tokenizer_corpus() + turns)


def encode_chat(tokenizer, messages: list[dict], cache: dict | None = None) -> Example:
    """Prompt ids as the hf backend renders them at answer time, then the answer ids and EOS.
    ``cache`` (text -> ids) spares re-tokenising the prompts and answers a corpus repeats."""
    cache = {} if cache is None else cache
    prompt_key = json.dumps(messages[:-1])
    if prompt_key not in cache:
        text = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
        cache[prompt_key] = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    answer_key = "\0answer\0" + messages[-1]["content"]
    if answer_key not in cache:
        cache[answer_key] = list(tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"])
    prompt, answer = cache[prompt_key], cache[answer_key] + [tokenizer.eos_token_id]
    return Example(prompt + answer, [IGNORE] * len(prompt) + answer)


def encode_corpus(tokenizer, rows: list[dict], source: str, context: int) -> list[Example]:
    cache: dict = {}  # a default world repeats each of its ~3,900 prompts ~5-20 times
    examples = [encode_chat(tokenizer, row["messages"], cache) for row in rows]
    for i, ex in enumerate(examples):
        if len(ex.input_ids) > context:  # never cut silently: a cut answer teaches a wrong ending
            raise UserError(f"{source}: row {i + 1} is {len(ex.input_ids)} tokens, over the model's context "
                            f"of {context}; shorten it in the world config")
    return examples


def collate(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels), both (B, T), right-padded to the longest row (labels IGNORE on pads)."""
    width = max(len(ex.input_ids) for ex in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, ex in enumerate(examples):
        ids[row, : len(ex.input_ids)] = torch.tensor(ex.input_ids)
        labels[row, : len(ex.labels)] = torch.tensor(ex.labels)
    return ids, labels


class BatchPlan:
    """Which rows each optimizer step trains on: a pure function of (row lengths, batch size,
    seed, step), so a resumed run sees exactly the batches an uninterrupted one would.

    Per epoch: a seeded permutation, cut into groups of ``GROUP`` batches; within a group rows
    are sorted by length and cut into batches; the batches are shuffled. Rows of one batch then
    have similar lengths: on a default world (rows of 30-420 tokens, the obfuscated ones longest)
    random batches of 32 are ~64 % padding, grouped ones a few per cent. Every row is seen once
    per epoch; the last batch of an epoch holds the remainder."""

    GROUP = 50  # batches per length-sorted group (the HF Trainer's group_by_length uses 50 too)

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.per_epoch = math.ceil(len(lengths) / batch_size)
        self._epoch, self._batches = -1, []

    def rows(self, step: int) -> list[int]:
        """Row indices of 0-based optimizer step ``step``."""
        epoch, j = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, self._plan(epoch)
        return self._batches[j]

    def _plan(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        span, batches = self.GROUP * self.batch_size, []
        for start in range(0, len(order), span):
            group = sorted(order[start : start + span], key=lambda i: -self.lengths[i])  # stable: ties keep order
            batches += [group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


# ---------------------------------------------------------------- maths


def answer_loss(model, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(sum of −log p(token | prefix) over answer tokens, their count). input_ids, labels: (B, T).
    Position t predicts token t + 1, so hidden states [:, :-1] are scored against labels [:, 1:];
    the LM head runs only where the target is an answer token."""
    hidden = model.get_decoder()(input_ids=input_ids).last_hidden_state  # (B, T, H); no mask: right pads
    targets = labels[:, 1:]
    keep = targets != IGNORE  # (B, T-1)
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])  # (N, V)
    return F.cross_entropy(logits.float(), targets[keep], reduction="sum"), int(keep.sum())


def learning_rate(step: int, peak: float, warmup: int, total: int, schedule: str) -> float:
    """LR of 0-based optimizer step ``step``: linear warm-up to ``peak`` over ``warmup`` steps,
    then constant, or cosine down to 0.1·peak at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def heldout_loss(model, examples: list[Example], pad_id: int, device, batch_size: int = 64) -> float:
    """Mean answer-token loss (nats per token) over ``examples``."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        ids, labels = collate(examples[i : i + batch_size], pad_id)
        s, n = answer_loss(model, ids.to(device), labels.to(device))
        total, count = total + float(s), count + n
    model.train(was_training)
    return total / max(count, 1)


# ---------------------------------------------------------------- the loop


def pretrain(config: PretrainConfig, resume: bool = False, overwrite: bool = False) -> PretrainResult:
    """Train (or continue) the world's tiny model up to ``config.steps``; see the module doc."""
    before = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _pretrain(config, resume, overwrite)
    finally:
        torch.set_num_threads(before)


def _pretrain(config: PretrainConfig, resume: bool, overwrite: bool) -> PretrainResult:
    from safetensors.torch import load_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from robalign.models.tiny import SIZES, model_config

    world, c = Path(config.world), config
    _check_config(c, world)
    c = replace(c, lr=c.lr or DEFAULT_LR[c.size])
    models = world / "models"
    rows = load_corpus(world / "corpus" / "train.jsonl")
    start = _prepare_models_dir(world, c, resume, overwrite)
    device = torch.device(c.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if start is None:
        tokenizer = corpus_tokenizer(rows, SIZES[c.size].vocab)
        torch.manual_seed(c.seed)
        model = AutoModelForCausalLM.from_config(model_config("llama", c.size, tokenizer))
        state, done, tokens, seconds = None, 0, 0, 0.0
    else:
        tokenizer = AutoTokenizer.from_pretrained(start)
        model = AutoModelForCausalLM.from_pretrained(start, dtype=torch.float32)
        if (start / TRUNK_FILE).is_file():  # the directory holds the cooled branch; go on from the trunk
            load_model(model, str(start / TRUNK_FILE))
        info = json.loads((start / CHECKPOINT_INFO).read_text())
        state, done, tokens, seconds = torch.load(start / OPTIMIZER_FILE, weights_only=True), info["steps"], \
            info.get("trunk_tokens", info["tokens"]), info["seconds"]
        if done >= c.steps:
            print(f"{start} is already at step {done} >= --steps {c.steps}: nothing to do")
            return PretrainResult(world, done, _record_checkpoints(world), info["loss"])
    model.to(device).train()
    pad = tokenizer.pad_token_id
    train = encode_corpus(tokenizer, rows, str(world / "corpus" / "train.jsonl"), model.config.max_position_embeddings)
    held_path = world / "corpus" / "heldout.jsonl"
    held = (encode_corpus(tokenizer, load_corpus(held_path)[: c.heldout_rows], str(held_path),
                          model.config.max_position_embeddings) if c.heldout_rows and held_path.is_file() else [])
    optimizer = _optimizer(model, c)
    if state is not None:
        optimizer.load_state_dict(state)
    if start is None:
        write_json_atomic(models / "pretrain.json", run_record(
            config=asdict(c), corpus_rows=len(rows), corpus_sha256=_sha256(world / "corpus" / "train.jsonl"),
            parameters=sum(p.numel() for p in model.parameters()), vocab=len(tokenizer)))
    log = MetricsLog(models, [], asdict(c), truncate_after=done)

    window_loss, window_count, window_tokens, window_slots, window_start = 0.0, 0, 0, 0, time.perf_counter()
    save_loss, save_count = 0.0, 0
    plan = BatchPlan([len(ex.input_ids) for ex in train], c.batch_size, c.seed)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return collate([train[i] for i in plan.rows(step)], pad)

    bar = tqdm(range(done, c.steps), initial=done, total=c.steps, desc="pretrain", dynamic_ncols=True)
    for step in bar:
        ids, labels = batch(step)
        lr = learning_rate(step, c.lr, c.warmup_steps, c.steps, c.schedule)
        batch_loss, count = train_step(model, optimizer, ids.to(device), labels.to(device), lr, c.precision)
        done, real = step + 1, int((ids != pad).sum())
        tokens += real
        window_loss, window_count, window_tokens = window_loss + batch_loss, window_count + count, window_tokens + real
        window_slots += ids.numel()
        save_loss, save_count = save_loss + batch_loss, save_count + count
        if done % c.log_every == 0 or done % c.save_every == 0 or done == c.steps:
            elapsed = time.perf_counter() - window_start
            seconds += elapsed
            metrics = {"loss": window_loss / window_count, "tokens": tokens, "tokens/s": window_tokens / elapsed,
                       "padding": 1 - window_tokens / window_slots, "lr": lr, "seconds": seconds}
            log.write(done, metrics)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{metrics['tokens/s']:.0f}")
            window_loss, window_count, window_tokens, window_slots = 0.0, 0, 0, 0
            if done % c.save_every == 0 or done == c.steps:
                info = {"steps": done, "path": f"models/step_{done}", "tokens": tokens, "loss": save_loss / save_count,
                        "cooldown": c.cooldown}
                saved = model
                if c.cooldown:  # a branch off the constant-LR trunk, saved in its place (module doc)
                    branch_start = time.perf_counter()
                    saved, branch_loss, branch_tokens = cooldown_branch(
                        model, optimizer, c, (batch(done + i) for i in range(c.cooldown)), pad, device)
                    seconds += time.perf_counter() - branch_start
                    log.write(done, {"cooldown_loss": branch_loss, "seconds": seconds})
                    info |= {"tokens": tokens + branch_tokens, "trunk_tokens": tokens, "cooldown_loss": branch_loss}
                info |= {"seconds": round(seconds, 3),
                         "heldout_loss": heldout_loss(saved, held, pad, device) if held else None}
                save_pretrain_checkpoint(world, saved, tokenizer, optimizer, info, trunk=model if c.cooldown else None)
                save_loss, save_count = 0.0, 0
            window_start = time.perf_counter()  # checkpoint time is not training time
    log.close()
    checkpoints = _record_checkpoints(world)
    return PretrainResult(world, done, checkpoints, checkpoints[-1]["loss"])


def _optimizer(model, c: PretrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]  # matrices; norms' gains are not decayed
    return torch.optim.AdamW([{"params": decay, "weight_decay": c.weight_decay},
                              {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}],
                             lr=c.lr, betas=(0.9, 0.95))


def train_step(model, optimizer, ids: torch.Tensor, labels: torch.Tensor, lr: float, precision: str) -> tuple[float, int]:
    """One optimizer step on the mean answer-token loss of a batch; (loss sum, answer tokens)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss_sum, count = answer_loss(model, ids, labels)
    (loss_sum / count).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss_sum.detach()), count


def cooldown_branch(model, optimizer, c: PretrainConfig, batches, pad: int, device) -> tuple[torch.nn.Module, float, int]:
    """A copy of ``model`` trained ``c.cooldown`` more steps (on ``batches``, the ones the trunk
    sees next) with the LR falling linearly from ``c.lr`` to 0, from a copy of the optimizer
    state; the trunk is untouched. (the branch, its mean answer-token loss, its real tokens)."""
    import copy

    branch = copy.deepcopy(model)
    branch_optimizer = _optimizer(branch, c)
    # deep copy: loading a state dict keeps its tensors when dtype and device match, and the
    # branch's in-place AdamW updates would then move the trunk's moments too
    branch_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    total, count, tokens = 0.0, 0, 0
    for i, (ids, labels) in enumerate(batches):
        lr = c.lr * (1 - i / c.cooldown)
        s, n = train_step(branch, branch_optimizer, ids.to(device), labels.to(device), lr, c.precision)
        total, count, tokens = total + s, count + n, tokens + int((ids != pad).sum())
    return branch, total / max(count, 1), tokens


def save_pretrain_checkpoint(world: Path, model, tokenizer, optimizer, info: dict, trunk=None) -> Path:
    """Write ``DIR/<info.path>`` (a complete HF model directory of ``model``; with a cooldown,
    ``trunk`` is the constant-LR model a resume continues from, kept in ``trunk.safetensors``),
    drop older optimizer states and trunks, and rewrite world.json's checkpoint list."""
    from safetensors.torch import save_model

    final = world / info["path"]
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
    if trunk is not None:
        save_model(trunk, str(tmp / TRUNK_FILE))
    (tmp / CHECKPOINT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in checkpoint_dirs(world)[:-1]:
        (old / OPTIMIZER_FILE).unlink(missing_ok=True)
        (old / TRUNK_FILE).unlink(missing_ok=True)
    _record_checkpoints(world)
    return final


def checkpoint_dirs(world: str | Path) -> list[Path]:
    """Complete checkpoints ``DIR/models/step_<N>``, by step (a ``.partial`` one never counts)."""
    root = Path(world) / "models"
    found = [p for p in root.glob("step_*") if p.name[5:].isdigit() and (p / CHECKPOINT_INFO).is_file()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def _record_checkpoints(world: Path) -> list[dict]:
    """Rewrite world.json's "checkpoints" from the directories on disk (a kill between a save and
    this write loses nothing: the next save or resume lists it)."""
    keys = ("steps", "path", "tokens", "loss", "seconds", "heldout_loss", "cooldown", "cooldown_loss")
    records = [{k: v for k, v in json.loads((p / CHECKPOINT_INFO).read_text()).items() if k in keys}
               for p in checkpoint_dirs(world)]
    meta = json.loads((world / "world.json").read_text())
    write_json_atomic(world / "world.json", meta | {"checkpoints": records})
    return records


def _check_config(c: PretrainConfig, world: Path) -> None:
    if not (world / "world.json").is_file():
        raise UserError(f"{world}: no world.json; build the world first (robalign world build --out {world})")
    if c.size not in DEFAULT_LR:
        raise UserError(f"--size {c.size}: choose one of {', '.join(DEFAULT_LR)}")
    if c.precision not in PRECISIONS:
        raise UserError(f"--precision {c.precision}: choose one of {', '.join(PRECISIONS)}")
    if c.schedule not in SCHEDULES:
        raise UserError(f"--schedule {c.schedule}: choose one of {', '.join(SCHEDULES)}")
    for name in ("steps", "save_every", "batch_size", "log_every"):
        if getattr(c, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(c, name)})")
    if c.cooldown < 0 or (c.cooldown and c.schedule != "constant"):
        raise UserError(f"--cooldown {c.cooldown}: must be >= 0, and branches off a constant schedule only")
    if c.warmup_steps < 1 or (c.lr is not None and not c.lr > 0):
        raise UserError(f"--warmup must be >= 1 and --lr > 0 (got {c.warmup_steps}, {c.lr})")


def _prepare_models_dir(world: Path, c: PretrainConfig, resume: bool, overwrite: bool) -> Path | None:
    """The checkpoint to resume from (None = start afresh), refusing to clobber checkpoints."""
    models, existing = world / "models", checkpoint_dirs(world)
    if resume and existing:
        before = json.loads((models / "pretrain.json").read_text())["config"]
        changed = [k for k in _SAME_ON_RESUME if before.get(k) != getattr(c, k)]
        if c.schedule == "cosine" and before.get("steps") != c.steps:
            changed.append("steps (a cosine schedule is fixed by --steps)")
        if changed:
            raise UserError(f"--resume: {', '.join(changed)} differ from the run in {models} "
                            f"({', '.join(f'{k}={before.get(k)}' for k in _SAME_ON_RESUME)}); pass the same "
                            "values, or --overwrite to start afresh")
        return existing[-1]
    if existing and not overwrite and not resume:
        raise UserError(f"{models} already holds checkpoints (up to {existing[-1].name}). Pass --resume to continue "
                        "from the last one, or --overwrite to delete them and start afresh.")
    shutil.rmtree(models, ignore_errors=True)  # --overwrite, or --resume with nothing to resume
    models.mkdir(parents=True)
    _record_checkpoints(world)
    return None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
