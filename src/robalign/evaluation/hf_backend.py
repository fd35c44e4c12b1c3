"""Hugging Face transformers backend: batched chat generation with left padding.

A chat request is rendered by the model's chat template; a raw-prompt request
(``GenerationRequest.raw_prompt``) is tokenised exactly as written (``raw_prompt_token_ids``).

Requests with equal decoding parameters are generated together, longest prompts first
(similar lengths share a batch, so little compute goes to padding). Left padding keeps
every prompt's last token at the same position, which batched decoder-only generation
needs. Greedy when ``temperature == 0``; otherwise each row samples from its own
``torch.Generator`` seeded by (seed, sample_index) (``RowSampler``), so a sampled answer
does not depend on which other requests share its batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Sequence
from pathlib import Path

from robalign.data.formats import render_prompt
from robalign.errors import UserError
from robalign.evaluation.backends import GenerationRequest, GenerationResponse, OnResponse
from robalign.evaluation.labels import STATUS_FAILED
from robalign.models.loading import load_causal_lm, load_tokenizer, model_fingerprint, resolve_model_path
from robalign.models.registry import lookup as lookup_packaged


def row_seed(seed: int, sample_index: int, prompt_ids: Sequence[int]) -> int:
    """A 63-bit generator seed from (seed, sample_index, the prompt's token ids). The prompt is in
    it so that sample j of two prompts draws independent random numbers: with (seed, j) alone,
    every prompt's j-th answer reused one stream, and at temperature 1 the answers of a set
    (60 prompts x 20 samples) came out correlated (S/CS/D/R 286/85/408/421 against 448/131/332/289
    with per-prompt streams). Cache keys of sampled requests carry ``SAMPLER`` for that reason."""
    head = f"{int(seed)}:{int(sample_index)}:".encode()
    digest = hashlib.sha256(head + ",".join(map(str, prompt_ids)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def template_hash(template: str | None) -> str:
    return hashlib.sha256((template or "<no chat template>").encode()).hexdigest()[:16]


def local_chat_template(path: Path) -> str | None:
    """The chat template saved with a tokenizer (transformers 5 writes chat_template.jinja)."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    config = path / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text()).get("chat_template")
        return json.dumps(template) if template is not None and not isinstance(template, str) else template
    return None


def model_identity(backend: str, model: str, revision: str | None, tokenizer_loader, dtype: str,
                   device: str) -> dict[str, str]:
    """The model part of the cache key. A local directory is named by its content fingerprint
    alone, not its path, so a copied or moved directory keeps its cached answers; reading it
    loads no weights. A hub id keeps its name; its fingerprint covers the offline commit sha.
    ``dtype`` and ``device`` (a device type: cpu, cuda, mps) are in it because the same weights
    answer differently in bfloat16 than in float32, and on a GPU than on a CPU."""
    path = Path(model).expanduser()
    if not path.is_dir() and lookup_packaged(model) is not None:
        path = Path(resolve_model_path(model))  # hf:NAME and hf:<its directory> share cached answers
    numerics = {"dtype": str(dtype), "device": str(device)}
    if path.is_dir():
        return {
            "backend": backend, "model": "local", "revision": model_fingerprint(str(path), revision),
            "base_url": "", "template": template_hash(local_chat_template(path)), **numerics,
        }
    tokenizer = tokenizer_loader()
    return {
        "backend": backend, "model": model, "revision": model_fingerprint(model, revision),
        "base_url": "", "template": template_hash(getattr(tokenizer, "chat_template", None)), **numerics,
    }


def device_type(device: str | None) -> str:
    """``"cuda:1"`` -> ``"cuda"``; None -> the device ``HFBackend`` would pick (cuda when available)."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return torch.device(device).type
    except RuntimeError:
        raise UserError(f"hf backend: device '{device}' is not a torch device; use cpu, cuda, cuda:N or mps") from None


def render_chat(tokenizer, messages: list[dict[str, str]], prompt_format: str = "auto") -> str:
    """The chat as the model reads it: its chat template, or for a tokenizer without one the
    conversation format training uses (``robalign.data.formats``; HH transcript by default)."""
    return render_prompt(messages, tokenizer, prompt_format).text


def prompt_token_ids(tokenizer, messages: list[dict[str, str]], prompt_format: str = "auto") -> list[int]:
    """The rendered chat as token ids, with no special tokens added on top: a chat template
    writes its own BOS (Llama 3's starts with ``<|begin_of_text|>``), and encoding the text
    with the tokenizer's default ``add_special_tokens=True`` would put a second one before
    it. The ids ``HFBackend`` feeds its model, and the ones the vllm backend sends."""
    rendered = render_prompt(messages, tokenizer, prompt_format)
    # a transcript format gets the tokenizer's BOS as training gives it; a chat template wrote its own
    return list(tokenizer(rendered.text, add_special_tokens=not rendered.templated)["input_ids"])


def raw_prompt_token_ids(tokenizer, text: str) -> list[int]:
    """A raw prompt (``GenerationRequest.raw_prompt``) as token ids: exactly ``text``, no chat
    template, with the tokenizer's own special tokens added (``add_special_tokens=True``: the BOS
    of Llama-style tokenizers), as ``tokenizer(text)`` and vLLM's text prompts give them, which
    is how guard classifiers' reference scripts feed their prompts. One exception: a text that
    already starts with the BOS token written out gets no second one."""
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (isinstance(bos, str) and bos and text.startswith(bos))
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])


class RowSampler:
    """Logits processor that samples each row with its own generator (temperature + top-p),
    then masks every other token so the surrounding greedy search keeps the sample."""

    def __init__(self, generators, temperature: float, top_p: float):
        self.generators, self.temperature, self.top_p = generators, temperature, top_p

    def __call__(self, input_ids, scores):
        import torch

        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            # drop tokens once the mass *before* them reaches top_p (the top token always stays)
            drop = (sorted_p.cumsum(-1) - sorted_p) >= self.top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        picked = torch.stack(
            [torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(self.generators)]
        )
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(scores.shape[0]), picked] = 0.0
        return out


class HFBackend:
    """``hf:PATH_OR_HUB_ID``. Options: revision, dtype (float32|bfloat16|float16),
    batch_size, device (default cuda when available), trust_remote_code, threads (CPU
    intra-op threads while generating; None = torch's default. On a busy 2-core machine a
    nano model ran a 4-prompt batch in 0.02 s with 1 thread and 0.5-9 s with 2, because
    OpenMP workers spin while waiting for a core)."""

    def __init__(self, model: str, revision: str | None = None, dtype: str = "float32", batch_size: int = 16,
                 device: str | None = None, trust_remote_code: bool = False, threads: int | None = None):
        resolve_model_path(model)  # a missing directory fails here, with the fix, not at first use
        self.model_name, self.revision, self.dtype = model, revision, dtype
        self.batch_size, self.device, self.trust_remote_code = int(batch_size), device, trust_remote_code
        self.threads = int(threads) if threads else None
        self._model = self._tokenizer = None
        self._lock = threading.Lock()  # the local test server calls generate from several threads

    def identity(self) -> dict[str, str]:
        return model_identity("hf", self.model_name, self.revision, self._load_tokenizer, self.dtype,
                              device_type(self.device))

    def _load_tokenizer(self):
        if self._tokenizer is None:
            tok = load_tokenizer(self.model_name, self.revision, self.trust_remote_code)
            tok.padding_side = "left"  # batched decoder-only generation: every prompt ends at the same column
            self._tokenizer = tok
        return self._tokenizer

    def _load(self):
        if self._model is None:
            import torch
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            model = load_causal_lm(self.model_name, self.revision, self.dtype, self.trust_remote_code)
            self._model = model.to(self.device).eval()
        return self._model, self._load_tokenizer()

    def render(self, messages: list[dict[str, str]]) -> str:
        return render_chat(self._load_tokenizer(), messages)

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The token ids fed to the model: the raw prompt as is, or the chat rendered by its
        template (the template writes its own special tokens, so none are added on top)."""
        tok = self._load_tokenizer()
        if request.raw_prompt is not None:
            return raw_prompt_token_ids(tok, request.raw_prompt)
        return list(tok(self.render(request.messages), add_special_tokens=False)["input_ids"])

    def generate(self, requests: Sequence[GenerationRequest], on_response: OnResponse | None = None
                 ) -> list[GenerationResponse]:
        if not requests:
            return []
        with self._lock, _torch_threads(self.threads):
            results: list[GenerationResponse | None] = [None] * len(requests)
            ids = [self.prompt_ids(r) for r in requests]
            for i, reason in self._unusable(requests, ids).items():
                results[i] = GenerationResponse(status=STATUS_FAILED, reason=reason, attempts=0)
                if on_response:
                    on_response(i, results[i])
            todo = [i for i in range(len(requests)) if results[i] is None]
            for sub in self._batches([requests[i] for i in todo], [ids[i] for i in todo]):
                batch = [todo[j] for j in sub]
                for i, response in zip(batch, self._generate_batch([requests[i] for i in batch],
                                                                   [ids[i] for i in batch])):
                    results[i] = response
                    if on_response:
                        on_response(i, response)
            return results  # type: ignore[return-value]

    def _unusable(self, requests: Sequence[GenerationRequest], ids: list[list[int]]) -> dict[int, str]:
        """Requests that cannot run, failed with a reason: an empty prompt, or one whose prompt +
        max_new_tokens exceed the model's context (never silently truncated: cutting a judge
        prompt drops its instructions)."""
        model, _ = self._load()
        context = getattr(model.config, "max_position_embeddings", None)
        out = {}
        for i, (x, r) in enumerate(zip(ids, requests)):
            if not x:
                out[i] = "empty prompt: no tokens to generate from"
            elif context and len(x) + r.max_new_tokens > context:
                out[i] = f"prompt too long: {len(x)} tokens + max_new_tokens {r.max_new_tokens} > context {context}"
        return out

    def _batches(self, requests: Sequence[GenerationRequest], ids: list[list[int]]) -> list[list[int]]:
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.max_new_tokens, r.temperature, r.top_p), []).append(i)
        batches = []
        for members in groups.values():
            members.sort(key=lambda i: -len(ids[i]))  # similar lengths share a batch: little padding
            batches += [members[s : s + self.batch_size] for s in range(0, len(members), self.batch_size)]
        return batches

    def _generate_batch(self, requests: list[GenerationRequest], ids: list[list[int]]) -> list[GenerationResponse]:
        import torch

        model, tok = self._load()
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        attention = torch.zeros((len(ids), width), dtype=torch.long)
        for row, x in enumerate(ids):  # left padding: every prompt ends at the last column
            input_ids[row, width - len(x):] = torch.tensor(x, dtype=torch.long)
            attention[row, width - len(x):] = 1
        enc = {"input_ids": input_ids.to(self.device), "attention_mask": attention.to(self.device)}
        first = requests[0]
        kwargs = dict(max_new_tokens=first.max_new_tokens, do_sample=False, pad_token_id=pad,
                      eos_token_id=tok.eos_token_id, temperature=None, top_p=None, top_k=None)
        if first.temperature > 0:
            from transformers import LogitsProcessorList

            gens = [torch.Generator(device=self.device).manual_seed(row_seed(r.seed, r.sample_index, x))
                    for r, x in zip(requests, ids)]
            kwargs["logits_processor"] = LogitsProcessorList([RowSampler(gens, first.temperature, first.top_p)])
        with torch.inference_mode():
            out = model.generate(**enc, **kwargs)
        new = out[:, width:]
        responses = []
        for row, mask in zip(new, enc["attention_mask"]):
            ends = (row == tok.eos_token_id).nonzero()
            n = int(ends[0]) + 1 if len(ends) else len(row)  # count the eos token, like the OpenAI API
            responses.append(GenerationResponse(
                text=tok.decode(row[:n], skip_special_tokens=True),
                finish_reason="stop" if len(ends) else "length",
                prompt_tokens=int(mask.sum()), completion_tokens=n,
            ))
        return responses


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    """Set torch's intra-op thread count for the block, then restore it (process-wide)."""
    if not threads:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)

