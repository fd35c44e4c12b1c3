"""The hf backend on the nano Llama model (~0.8M parameters, random weights)."""

from __future__ import annotations

import shutil

from robalign.evaluation.backends import GenerationRequest, build_backend
from robalign.evaluation.cache import SAMPLER, CachedBackend, ResponseCache, _key_payload
from robalign.evaluation.hf_backend import HFBackend, RowSampler, row_seed

PROMPTS = ["Hi", "Who was late to the meeting, the young intern or the older colleague?", "Fill the blank: ___",
           "Tell me a story about a nurse and an engineer who worked together in a small town hospital."]


def requests(**kw) -> list[GenerationRequest]:
    return [GenerationRequest([{"role": "user", "content": p}], max_new_tokens=12, **kw) for p in PROMPTS]


def test_batched_greedy_equals_one_at_a_time_with_left_padding(nano_llama):
    backend = build_backend(f"hf:{nano_llama}", batch_size=4)
    batched = backend.generate(requests())
    assert backend._tokenizer.padding_side == "left"
    single = [backend.generate([r])[0] for r in requests()]
    assert [r.text for r in batched] == [r.text for r in single]
    assert all(r.completion_tokens <= 12 and r.prompt_tokens > 0 for r in batched)
    assert len({r.prompt_tokens for r in batched}) > 1  # prompts really differ in length: padding was needed


def test_chat_template_is_applied(nano_llama):
    backend = HFBackend(str(nano_llama))
    text = backend.render([{"role": "user", "content": "question"}])
    assert text.startswith("<|user|>\nquestion<|end|>") and text.endswith("<|assistant|>\n")


def test_seeded_sampling_is_per_request_and_batch_invariant(nano_llama):
    backend = HFBackend(str(nano_llama), batch_size=4)
    sampled = requests(temperature=1.0, seed=7)
    first = backend.generate(sampled)
    reordered = backend.generate(sampled[::-1])[::-1]
    alone = [backend.generate([r])[0] for r in sampled]
    assert [r.text for r in first] == [r.text for r in reordered] == [r.text for r in alone]
    greedy = backend.generate(requests())
    other_seed = backend.generate(requests(temperature=1.0, seed=8))
    other_sample = backend.generate(requests(temperature=1.0, seed=7, sample_index=1))
    assert [r.text for r in first] != [r.text for r in greedy]
    assert [r.text for r in first] != [r.text for r in other_seed]
    assert [r.text for r in first] != [r.text for r in other_sample]


def test_sample_j_of_different_prompts_draws_independent_streams(nano_llama):
    """A random-weight model's next-token distributions are nearly the same for every prompt, so
    answers that shared one random stream per (seed, sample index) came out alike across prompts
    (seeded with (seed, j) alone, 8 of these 8 prompts gave one identical answer)."""
    backend = HFBackend(str(nano_llama), batch_size=8)
    prompts = [f"Question {i}: who is to blame?" for i in range(8)]
    answers = backend.generate([GenerationRequest([{"role": "user", "content": p}], max_new_tokens=8,
                                                  temperature=1.0, seed=3) for p in prompts])
    assert len({a.text for a in answers}) == len(prompts)
    assert row_seed(3, 0, [1, 2]) != row_seed(3, 0, [1, 3]) != row_seed(3, 1, [1, 3])
    assert row_seed(3, 0, [1, 2]) == row_seed(3, 0, (1, 2))


def test_sampled_keys_carry_the_sampler_version_for_local_backends_only():
    sampled = GenerationRequest([{"role": "user", "content": "x"}], temperature=1.0)
    greedy = GenerationRequest([{"role": "user", "content": "x"}])
    assert _key_payload({"backend": "hf"}, sampled)["sampler"] == SAMPLER
    assert "sampler" not in _key_payload({"backend": "hf"}, greedy)  # greedy answers were never stale
    assert "sampler" not in _key_payload({"backend": "openai"}, sampled)  # paid answers stay cached


def test_row_sampler_top_p_keeps_only_the_nucleus():
    import torch

    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 200))
    gens = [torch.Generator().manual_seed(i) for i in range(200)]
    out = RowSampler(gens, temperature=1.0, top_p=0.7)(None, scores)
    picked = out.argmax(-1)
    assert set(picked.tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.7; tokens 2 and 3 are cut
    assert torch.isinf(out).sum(-1).eq(3).all()


def test_identity_is_cheap_follows_the_weights_not_the_path(nano_llama, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(nano_llama, model_dir)
    backend = HFBackend(str(model_dir))
    identity = backend.identity()
    assert backend._model is None  # no weights were loaded to compute it
    assert identity == HFBackend(str(nano_llama)).identity()  # a copy keeps its cache key
    assert identity["model"] == "local" and len(identity["template"]) == 16
    weights = model_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # "re-trained in place"
    weights.write_bytes(bytes(data))
    assert HFBackend(str(model_dir)).identity()["revision"] != identity["revision"]


def test_cached_rerun_never_loads_the_model(nano_llama, tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    CachedBackend(HFBackend(str(nano_llama)), cache).generate(requests())
    fresh = HFBackend(str(nano_llama))
    wrapper = CachedBackend(fresh, cache)
    out = wrapper.generate(requests())
    assert fresh._model is None and wrapper.summary.cache_hits == len(PROMPTS) and all(r.cached for r in out)


def test_finish_reason_and_token_counts(nano_llama):
    out = HFBackend(str(nano_llama)).generate(requests())
    for r in out:
        assert r.finish_reason in ("stop", "length")
        assert r.completion_tokens == 12 if r.finish_reason == "length" else r.completion_tokens <= 12


def test_prompt_longer_than_the_context_fails_with_a_reason(nano_llama):
    backend = HFBackend(str(nano_llama))
    long = GenerationRequest([{"role": "user", "content": "word " * 600}], max_new_tokens=8)
    out = backend.generate([requests()[0], long])
    assert out[0].ok and out[1].status == "failed" and out[1].reason.startswith("prompt too long")


def test_threads_option_applies_only_while_generating(nano_llama):
    import torch

    torch.set_num_threads(2)
    seen = []
    backend = HFBackend(str(nano_llama), threads=1)
    backend._generate_batch = lambda reqs, prompts: seen.append(torch.get_num_threads()) or []
    backend.generate(requests()[:1])
    assert seen == [1] and torch.get_num_threads() == 2


def test_dtype_and_device_are_in_the_cache_key(nano_llama, tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    CachedBackend(HFBackend(str(nano_llama)), cache).generate(requests()[:1])
    same = CachedBackend(HFBackend(str(nano_llama), device="cpu"), cache)  # default device here is the CPU
    same.generate(requests()[:1])
    assert same.summary.cache_hits == 1
    half = CachedBackend(HFBackend(str(nano_llama), dtype="bfloat16"), cache)
    half.generate(requests()[:1])
    assert half.summary.cache_misses == 1 and half.summary.answered == 1  # generated again, in bf16
    identities = [HFBackend(str(nano_llama), device=d).identity() for d in ("cpu", "cpu:0", "cuda", "cuda:1")]
    assert [i["device"] for i in identities] == ["cpu", "cpu", "cuda", "cuda"]
    assert identities[0] != identities[2]  # GPU kernels answer differently: a separate cache entry
