"""One rank of the distributed NetAdapt test: prunes the chain model and saves the chosen ratios,
the history and the final masked weights (run by tests/test_nni_compat.py)."""

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
    from test_nni_compat import NETADAPT_CONFIG, X, _chain, netadapt_evaluator, netadapt_fine_tune

    from pruning_ir.compat.nni import NetAdaptPruner, folded_state

    model = _chain(11)
    p = NetAdaptPruner(model, NETADAPT_CONFIG, netadapt_fine_tune, netadapt_evaluator, sparsity_per_iteration=0.1,
                       dummy_input=X)
    p.compress()
    torch.save({"ratios": p.best_ratios, "history": p.history, "state": folded_state(model)}, f"{out}.{rank}.pt")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
