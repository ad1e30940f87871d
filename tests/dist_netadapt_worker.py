"""One rank of the distributed NetAdapt test: prunes the chain model and saves the chosen ratios,
the history and the final masked weights (run by tests/test_nni_compat.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    out, rank, world, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    from gloo import finish, start

    start(rank, world, port)
    from test_nni_compat import NETADAPT_CONFIG, X, _chain, netadapt_evaluator, netadapt_fine_tune

    from pruning_ir.compat.nni import NetAdaptPruner, folded_state

    model = _chain(11)
    p = NetAdaptPruner(model, NETADAPT_CONFIG, netadapt_fine_tune, netadapt_evaluator, sparsity_per_iteration=0.1,
                       dummy_input=X)
    p.compress()
    torch.save({"ratios": p.best_ratios, "history": p.history, "state": folded_state(model)}, f"{out}.{rank}.pt")
    finish(world)


if __name__ == "__main__":
    main()
