"""One rank of the distributed annealing test: the composed pruner with Annealing(population=3) on the
residual model; saves the search history and the slim model's weights (run by tests/test_compose.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    out, rank, world, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    from gloo import finish, start

    start(rank, world, port)
    from test_compose import XR, _res, annealing_evaluator

    from pruning_ir import L1NormCriterion
    from pruning_ir.compose import Annealing, Channels, Params, Pruner

    ann = Annealing(annealing_evaluator, start_temperature=1.0, stop_temperature=0.3, cool_down_rate=0.7,
                    population=3, seed=4)
    slim = Pruner(Channels(), L1NormCriterion, ann, objective=Params(0.3)).run(_res(10), XR)
    torch.save({"history": ann.history, "best": ann.best, "state": slim.state_dict()}, f"{out}.{rank}.pt")
    finish(world)


if __name__ == "__main__":
    main()
