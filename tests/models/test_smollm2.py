"""Smoke test on the real SmolLM2-135M-Instruct pulled by `make install` (skipped, with the
command to run, when it is not pulled). About 6 s: load 538 MB of fp32 weights, 8 tokens."""

from __future__ import annotations

from robalign.models import registry


def test_smollm2_loads_by_name_and_answers_greedily(smollm2):
    from robalign.evaluation.backends import GenerationRequest, build_backend

    record = registry.read_source(smollm2)
    assert record["sha256"] == registry.PACKAGED[smollm2].sha256 and record["parameters"] == 134_515_008
    backend = build_backend(f"hf:{smollm2}", threads=1)
    assert backend.render([{"role": "user", "content": "hi"}]).startswith("<|im_start|>system\n")
    request = GenerationRequest([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=8)
    (answer,) = backend.generate([request])
    assert answer.status == "answered" and "Paris" in answer.text, answer.text
