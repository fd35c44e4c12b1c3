"""The vllm backend: import-guarded; generates only where vllm and a CUDA GPU exist."""

from __future__ import annotations

import importlib.util

import pytest

from robalign.errors import UserError
from robalign.evaluation.backends import GenerationRequest, build_backend


def test_spec_builds_without_vllm_and_identity_needs_no_engine(nano_llama):
    backend = build_backend(f"vllm:{nano_llama}", gpu_memory_utilization=0.3)
    assert backend.identity()["backend"] == "vllm" and backend._llm is None
    assert backend.engine_args["enable_prefix_caching"] is True


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_missing_vllm_is_a_user_error_with_the_fix(nano_llama):
    backend = build_backend(f"vllm:{nano_llama}")
    with pytest.raises(UserError, match="pip install"):
        backend.generate([GenerationRequest([{"role": "user", "content": "hi"}])])


@pytest.mark.gpu
def test_vllm_generates_from_a_tiny_model(nano_llama):
    pytest.importorskip("vllm")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("vllm needs a CUDA GPU")
    backend = build_backend(f"vllm:{nano_llama}", gpu_memory_utilization=0.2, max_model_len=256)
    requests = [GenerationRequest([{"role": "user", "content": f"q{i}"}], max_new_tokens=8) for i in range(4)]
    greedy = backend.generate(requests)
    assert all(r.ok and 0 < r.completion_tokens <= 8 for r in greedy)
    hf = build_backend(f"hf:{nano_llama}").generate(requests)
    assert sum(a.text == b.text for a, b in zip(greedy, hf)) >= 3  # same greedy text, up to kernel noise


def test_dtype_is_in_the_identity(nano_llama):
    auto = build_backend(f"vllm:{nano_llama}").identity()
    half = build_backend(f"vllm:{nano_llama}", dtype="float16").identity()
    assert (auto["dtype"], half["dtype"]) == ("auto", "float16") and auto != half


@pytest.fixture(scope="module")
def bos_template_tokenizer(tiny_tokenizer, tmp_path_factory):
    """The tiny tokenizer made Llama-3-like: its chat template writes the BOS, and encoding
    with the default ``add_special_tokens=True`` prepends one as well."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    from robalign.models.tiny import BOS, CHAT_TEMPLATE

    path = tmp_path_factory.mktemp("bos_tok")
    tiny_tokenizer.save_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = "{{ bos_token }}" + CHAT_TEMPLATE
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.bos_token_id)])
    return tok


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who was late?"}]


def test_engine_inputs_are_token_ids_with_one_bos(bos_template_tokenizer):
    from robalign.evaluation.hf_backend import render_chat
    from robalign.evaluation.vllm_backend import engine_inputs

    tok, bos = bos_template_tokenizer, bos_template_tokenizer.bos_token_id
    text = render_chat(tok, MESSAGES)
    assert tok(text)["input_ids"][:2] == [bos, bos]  # what vLLM makes of the text: the double BOS
    requests = [GenerationRequest(MESSAGES, max_new_tokens=7), GenerationRequest(MESSAGES, temperature=0.7,
                                                                                 seed=3, sample_index=1)]
    prompts, params = engine_inputs(tok, requests)
    ids = prompts[0]["prompt_token_ids"]
    assert ids[0] == bos and ids[1] != bos and ids.count(bos) == 1
    assert ids == tok(text, add_special_tokens=False)["input_ids"]  # the ids the hf backend feeds its model
    assert params[0] == {"max_tokens": 7, "temperature": 0.0, "top_p": 1.0, "seed": None}
    assert params[1]["seed"] is not None and params[1]["seed"] != engine_inputs(tok, [GenerationRequest(
        MESSAGES, temperature=0.7, seed=3, sample_index=0)])[1][0]["seed"]


def test_generate_sends_the_engine_token_ids(nano_llama, monkeypatch):
    """vLLM cannot run on a CPU: a stand-in module records what the backend hands the engine."""
    import sys
    import types

    seen = {}

    class LLM:
        def __init__(self, **engine_args):
            seen["engine_args"] = engine_args

        def generate(self, prompts, params, use_tqdm=False):
            seen["prompts"], seen["params"] = prompts, params
            done = types.SimpleNamespace(text="ok", finish_reason="stop", token_ids=[1, 2])
            return [types.SimpleNamespace(outputs=[done], prompt_token_ids=p["prompt_token_ids"]) for p in prompts]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=dict))
    backend = build_backend(f"vllm:{nano_llama}")
    out = backend.generate([GenerationRequest(MESSAGES, max_new_tokens=5)])
    tok = backend._load_tokenizer()
    expected = tok(tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True),
                   add_special_tokens=False)["input_ids"]
    assert seen["prompts"] == [{"prompt_token_ids": expected}] and seen["params"][0]["max_tokens"] == 5
    assert out[0].ok and out[0].prompt_tokens == len(expected)
