"""vLLM offline-engine backend (GPU extra: ``pip install robalign[vllm]``).

``vllm`` is imported only when the first request is generated, so this module imports
anywhere. The whole request list goes to the engine in one call (vLLM schedules its own
continuous batches) with prefix caching on: CLEAR-Bias prompts share long instruction
prefixes. Each request carries its own ``SamplingParams`` seed derived from
(seed, sample_index) like the ``hf`` backend, so samples do not depend on batch company.

Prompts go to the engine as token ids (``engine_inputs``), the same ids the ``hf`` backend
feeds its model: given text, vLLM tokenizes it with the tokenizer's special tokens, and a
chat template that writes its own BOS (Llama 3) would get a second one in front. A raw-prompt
request (``GenerationRequest.raw_prompt``) goes as the ids of exactly that text, with the
tokenizer's special tokens as the ``hf`` backend adds them (``raw_prompt_token_ids``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from robalign.errors import UserError
from robalign.evaluation.backends import GenerationRequest, GenerationResponse, OnResponse
from robalign.evaluation.hf_backend import model_identity, prompt_token_ids, raw_prompt_token_ids, row_seed
from robalign.models.loading import load_tokenizer, resolve_model_path
from robalign.models.registry import lookup as lookup_packaged


def engine_inputs(tokenizer, requests: Sequence[GenerationRequest]) -> tuple[list[dict], list[dict[str, Any]]]:
    """(prompts, sampling parameters) for ``LLM.generate``, one each per request: prompts as
    ``{"prompt_token_ids": [...]}`` (a vLLM ``TokensPrompt``), parameters as the keyword
    arguments of ``SamplingParams``. Pure: needs the tokenizer, not vllm."""
    prompts = [{"prompt_token_ids": raw_prompt_token_ids(tokenizer, r.raw_prompt) if r.raw_prompt is not None
                else prompt_token_ids(tokenizer, r.messages)} for r in requests]
    params = [
        dict(max_tokens=int(r.max_new_tokens), temperature=float(r.temperature), top_p=float(r.top_p),
             seed=row_seed(r.seed, r.sample_index, x["prompt_token_ids"]) if r.temperature > 0 else None)
        for r, x in zip(requests, prompts)
    ]
    return prompts, params


class VLLMBackend:
    """``vllm:PATH_OR_HUB_ID``. Options: revision, dtype (auto), tensor_parallel_size,
    gpu_memory_utilization, max_model_len, enable_prefix_caching, trust_remote_code."""

    def __init__(self, model: str, revision: str | None = None, dtype: str = "auto", tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.9, max_model_len: int | None = None,
                 enable_prefix_caching: bool = True, trust_remote_code: bool = False):
        local = resolve_model_path(model)  # a missing directory fails here, with the fix, not in the engine
        self.model_name, self.revision = model, revision
        self.engine_args = dict(
            model=local if lookup_packaged(model) else model,  # vLLM reads a packaged name's pulled directory
            revision=revision, dtype=dtype, tensor_parallel_size=int(tensor_parallel_size),
            gpu_memory_utilization=float(gpu_memory_utilization), max_model_len=max_model_len,
            enable_prefix_caching=bool(enable_prefix_caching), trust_remote_code=trust_remote_code,
        )
        self._llm = None
        self._tokenizer = None

    def identity(self) -> dict[str, str]:
        # vLLM runs on CUDA only; dtype "auto" follows the checkpoint's config, itself fingerprinted
        return model_identity("vllm", self.model_name, self.revision, self._load_tokenizer,
                              self.engine_args["dtype"], "cuda")

    def _load_tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.model_name, self.revision, self.engine_args["trust_remote_code"])
        return self._tokenizer

    def _engine(self):
        if self._llm is None:
            try:
                import vllm
            except ImportError:
                raise UserError(
                    "the vllm backend needs the vllm package (GPU only; no CPU wheel on PyPI): "
                    "pip install 'robalign[vllm]' on a CUDA machine, or use hf:PATH on CPU"
                ) from None
            self._llm = vllm.LLM(**{k: v for k, v in self.engine_args.items() if v is not None})
        return self._llm

    def generate(self, requests: Sequence[GenerationRequest], on_response: OnResponse | None = None
                 ) -> list[GenerationResponse]:
        llm = self._engine()
        from vllm import SamplingParams

        prompts, params = engine_inputs(self._load_tokenizer(), requests)
        outputs = llm.generate(prompts, [SamplingParams(**p) for p in params], use_tqdm=False)
        results = []
        for i, out in enumerate(outputs):
            completion = out.outputs[0]
            response = GenerationResponse(
                text=completion.text, finish_reason=str(completion.finish_reason or ""),
                prompt_tokens=len(out.prompt_token_ids or []), completion_tokens=len(completion.token_ids),
            )
            results.append(response)
            if on_response:
                on_response(i, response)
        return results
