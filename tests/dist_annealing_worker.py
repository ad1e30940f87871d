"""One rank of the distributed annealing test: the composed pruner with Annealing(population=3) on the
residual model; saves the search history and the slim model's weights (run by tests/test_compose.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    out, rank, world, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    from test_compose import XR, _res, annealing_evaluator

    from pruning_ir import L1NormCriterion
    from pruning_ir.compose import Annealing, Channels, Params, Pruner

    ann = Annealing(annealing_evaluator, start_temperature=1.0, stop_temperature=0.3, cool_down_rate=0.7,
                    population=3, seed=4)
    slim = Pruner(Channels(), L1NormCriterion, ann, objective=Params(0.3)).run(_res(10), XR)
    torch.save({"history": ann.history, "best": ann.best, "state": slim.state_dict()}, f"{out}.{rank}.pt")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
