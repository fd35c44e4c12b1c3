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
