"""The reference log-prob cache is per sequence: a pair whose responses label noise swapped, or a
data set that shares pairs with an earlier one, reuses what was computed; the store is safe with
two processes writing at once."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest
import torch

from robalign.data.synthetic import synthetic_pairs
from robalign.data.tokenize import tokenize_pairs
from robalign.models.loading import load_causal_lm
from robalign.training import reference as ref
from robalign.training.reference import SequenceStore, compute_reference_logps, reference_logps, sequence_key


@pytest.fixture(scope="module")
def model_and_pairs(nano_llama, tiny_tokenizer):
    model = load_causal_lm(str(nano_llama))
    pairs = tokenize_pairs(synthetic_pairs(12, seed=3), tiny_tokenizer, 96, 64).pairs
    return model, pairs, tiny_tokenizer.pad_token_id


def swapped(pair):
    return replace(pair, chosen_ids=pair.rejected_ids, rejected_ids=pair.chosen_ids)


@pytest.fixture
def counted(monkeypatch):
    """Pairs run through the model by reference_logps (the module-level function it calls)."""
    seen: list[str] = []
    real = ref.compute_reference_logps

    def counting(model, pairs, *args, **kwargs):
        seen.extend(p.id for p in pairs)
        return real(model, pairs, *args, **kwargs)

    monkeypatch.setattr(ref, "compute_reference_logps", counting)
    return seen


def test_swapped_pairs_and_a_superset_reuse_the_stored_sequences(tmp_path, model_and_pairs, counted):
    model, pairs, pad = model_and_pairs
    first = reference_logps(model, pairs[:8], pad, "fp-a", cache_dir=tmp_path)
    assert (first.cache_hit, first.sequences_computed, first.sequences_cached) == (False, 16, 0)
    assert len(counted) == 8
    # the values are the model's, pair by pair (computed alone here: another batch, other padding)
    alone = compute_reference_logps(model, pairs[:1], pad)
    assert first.chosen[pairs[0].id] == pytest.approx(alone[0][pairs[0].id], abs=1e-4)

    # 3 of 8 pairs swapped (a flip at rate 0.375): another data set, the same 16 sequences
    noisy = [swapped(p) if i in (1, 4, 6) else p for i, p in enumerate(pairs[:8])]
    second = reference_logps(model, noisy, pad, "fp-a", cache_dir=tmp_path)
    assert second.cache_file != first.cache_file  # a new data-set table ...
    assert (second.cache_hit, second.sequences_computed, second.sequences_cached) == (True, 0, 16)  # ... no compute
    assert len(counted) == 8
    assert second.chosen[pairs[1].id] == first.rejected[pairs[1].id]
    assert second.rejected[pairs[4].id] == first.chosen[pairs[4].id]
    assert second.chosen[pairs[0].id] == first.chosen[pairs[0].id]

    # 12 pairs, 8 of them known: only the 4 new ones go through the model
    third = reference_logps(model, pairs, pad, "fp-a", cache_dir=tmp_path)
    assert (third.cache_hit, third.sequences_computed, third.sequences_cached) == (False, 8, 16)
    assert counted[8:] and sorted(counted[8:]) == sorted(p.id for p in pairs[8:])
    with SequenceStore(tmp_path / "reference_logps" / ref.STORE_FILE) as store:
        # one row per distinct (prompt, response): synthetic pairs can share a response to one prompt
        assert len(store) == len({(p.prompt_ids, r) for p in pairs for r in (p.chosen_ids, p.rejected_ids)})


def test_model_fingerprint_and_weight_dtype_are_in_the_key(tmp_path, model_and_pairs, counted):
    model, pairs, pad = model_and_pairs
    reference_logps(model, pairs[:4], pad, "fp-a", cache_dir=tmp_path)
    other = reference_logps(model, pairs[:4], pad, "fp-b", cache_dir=tmp_path)  # another model's weights
    assert not other.cache_hit and other.sequences_computed == 8
    double = reference_logps(load_causal_lm(str(model.name_or_path)).double(), pairs[:4], pad, "fp-a",
                             cache_dir=tmp_path)
    assert not double.cache_hit and double.sequences_computed == 8
    assert len(counted) == 12


def test_a_noisy_run_after_a_clean_one_computes_no_reference_logps(tmp_path, nano_llama, counted):
    """The sweep case: noise 0, then noise 0.4 on the same model and pairs. The flipped pairs are
    the clean run's sequences swapped, and the schedule reaches the same pair indices, so the
    second run computes nothing (its data-set tables are new: other token order)."""
    from robalign.config import TrainConfig, load_config
    from robalign.training.trainer import train

    def config(noise: float, name: str):
        return load_config(TrainConfig, None, [
            f"output_dir={tmp_path / name}", f"model.name_or_path={nano_llama}", "data.train=synthetic:60",
            "data.max_length=96", "data.max_prompt_length=64", "training.max_steps=2",
            "training.per_device_batch_size=4", "training.save_model=false", f"data.noise_rate={noise}"])

    train(config(0.0, "clean"))
    computed_clean = len(counted)
    assert computed_clean > 0
    noisy = train(config(0.4, "noisy"))
    info = json.loads((noisy.output_dir / "run_info.json").read_text())
    assert info["flipped_ids"] and info["reference_cache"]["train_hit"] and info["reference_cache"]["eval_hit"]
    clean_info = json.loads((tmp_path / "clean" / "run_info.json").read_text())
    assert info["reference_cache"]["train"] != clean_info["reference_cache"]["train"]
    assert len(counted) == computed_clean  # not one pair through the reference model
    assert noisy.steps == 2 and torch.isfinite(torch.tensor(noisy.final_metrics["loss"]))


WRITER = textwrap.dedent("""
    import sys
    from robalign.training.reference import SequenceStore
    path, worker = sys.argv[1], int(sys.argv[2])
    with SequenceStore(path) as store:
        for t in range(100):  # 100 small transactions, so the two writers interleave
            # keys 0..1499 for worker 0, 500..1999 for worker 1: 1,000 written by both
            base = worker * 500 + t * 15
            store.put_many("m", {i.to_bytes(16, "little"): float(i) for i in range(base, base + 15)})
""")


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    path = tmp_path / "store.sqlite"
    SequenceStore(path).close()  # create the schema first, so the writers only race on rows
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w)], stderr=subprocess.PIPE)
             for w in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    with SequenceStore(path) as store:
        assert len(store) == 2000
        got = store.get_many(i.to_bytes(16, "little") for i in range(2000))
    assert got == {i.to_bytes(16, "little"): float(i) for i in range(2000)}


def test_sequence_key_separates_prompt_from_response():
    # the same tokens split differently are different sequences: only response tokens are scored
    assert sequence_key("m", (1, 2), (3,)) != sequence_key("m", (1,), (2, 3))
    assert sequence_key("m", (1, 2), (3,)) == sequence_key("m", (1, 2), (3,))
    assert sequence_key("m", (1, 2), (3,)) != sequence_key("n", (1, 2), (3,))
