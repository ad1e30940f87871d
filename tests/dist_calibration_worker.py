"""Worker for tests/test_criteria.py's distributed test (run as a script, one process per rank).

``python dist_calibration_worker.py OUT RANK WORLD PORT CRITERION``: every rank builds the same
model and IR, calibrates on its share of the batches (rank r takes batches r, r+WORLD, ...),
and writes the scores it holds after exit to ``OUT``. With ``WORLD=1`` and no process group it
calibrates on every batch: the single-process reference.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))

from criteria_models import ResidualMLP

from pruning_ir import APoZCriterion, LossAwareCriterion, PruningIR


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(123)
    return [(torch.randn(8, 12, generator=gen), torch.randint(0, 5, (8,), generator=gen)) for _ in range(6)]


def main() -> None:
    out, rank, world, port, which = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = ResidualMLP()
    data = batches()
    ir = PruningIR(model, example_inputs=(data[0][0],))
    crit = LossAwareCriterion if which == "loss_aware" else APoZCriterion
    with crit(ir) as collect:
        for x, y in data[rank::world]:
            logits = collect(x)
            if which == "loss_aware":
                F.cross_entropy(logits, y).backward()
    torch.save({gid: s for gid, s in ir.snapshot().scores.items()}, out)
    if world > 1:
        dist.barrier()  # neither rank tears gloo down while the other still talks to it
        dist.destroy_process_group()
        sys.stdout.flush()
        # gloo's threads can abort the interpreter's teardown ('terminate called without an active
        # exception', seen under load): everything is written, so leave without it
        os._exit(0)


if __name__ == "__main__":
    main()
