"""Run by test_ddp_shapo.py under `torchrun --nproc_per_node 2` (gloo, CPU): one ShaPO step on
each rank's half of 8 pairs, counting DDP's gradient all-reduces. Rank 0 saves the results.

    PYTHONPATH=tests/shapo torchrun --standalone --nproc_per_node 2 tests/shapo/ddp_worker.py MODEL_DIR OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from shapo_helpers import grads, make_setup, settings
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from robalign.data.tokenize import collate_pairs
from robalign.models.tiny import build_tokenizer
from robalign.training.shapo import shapo_step
from robalign.training.step import accumulate_gradients
from robalign.training.subspace import build_mask, resolve_parameter_mask


def main(model_dir: str, out_dir: str) -> None:
    accelerator = Accelerator(cpu=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    assert world == 2 and accelerator.distributed_type.value == "MULTI_CPU"
    setup = make_setup(model_dir, build_tokenizer())  # identical on both ranks (seeded)
    model = accelerator.prepare(setup.model)
    mask = resolve_parameter_mask(accelerator.unwrap_model(model),
                                  build_mask(accelerator.unwrap_model(model), 0.05, "random", seed=3))
    reductions = []

    def counting_hook(state, bucket):
        reductions.append(bucket.index())
        return allreduce_hook(None, bucket)

    model.register_comm_hook(None, counting_hook)
    local = setup.pairs[rank * 4 : (rank + 1) * 4]  # rank r holds pairs 4r .. 4r+3, two micro-batches of 2
    micro = [collate_pairs(local[i : i + 2], setup.pad) for i in (0, 2)]
    # DDP re-buckets its gradients after the first backward; count only once the buckets are final
    accumulate_gradients(model, micro, setup.reference, settings(), accelerator)
    results = {}
    for aggregation in ("mean", "drdpo"):
        model.zero_grad(set_to_none=True)
        reductions.clear()
        accumulate_gradients(model, micro, setup.reference, settings(aggregation), accelerator)
        plain_reductions = len(reductions)
        model.zero_grad(set_to_none=True)
        reductions.clear()
        metrics = shapo_step(model, micro, setup.reference, settings(aggregation), mask, 0.05, accelerator)
        results[aggregation] = {"metrics": metrics, "grads": grads(accelerator.unwrap_model(model)),
                                "plain_reductions": plain_reductions, "shapo_reductions": len(reductions)}
    if rank == 0:
        torch.save(results, Path(out_dir) / "ddp.pt")
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
