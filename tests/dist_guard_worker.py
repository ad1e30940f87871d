"""One rank of the test that distributed searches refuse ranks whose IRs differ (run by
tests/test_workflows.py): ``python dist_guard_worker.py OUT RANK WORLD PORT order|weights``.

``order``: every rank builds the same two-branch model, but rank 1's forward runs the branches the
other way round (as a forward that iterates a Python set does under another PYTHONHASHSEED), so its
IR numbers the groups the other way round; then the composed pruner with ``Annealing``.
``weights``: rank 1's model holds other weights; then the sensitivity analysis. ``search``: the same,
then the one-step search. ``readback``: both ranks run the analysis of one model, then rank 0 alone
reads it back (no collective call: it must not wait for rank 1). Writes ``OUT.RANK``: ``refused:
<message>`` or ``ran``."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))


class Branches(nn.Module):
    def __init__(self, reverse: bool) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
        self.b = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 4))
        self.reverse = reverse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = (self.b, self.a) if self.reverse else (self.a, self.b)
        y = first(x)
        return y + second(x)


def main() -> None:
    out, rank, world, port, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    from gloo import finish, start

    start(rank, world, port)
    from pruning_ir import L1NormCriterion
    from pruning_ir.errors import InvalidInputError

    torch.manual_seed(0)
    try:
        if mode == "order":
            from pruning_ir.compose import Annealing, Channels, Params, Pruner

            x = torch.randn(5, 6)
            ann = Annealing(lambda m: -float(m(x).square().mean()), start_temperature=1.0, stop_temperature=0.5,
                            cool_down_rate=0.7, population=2, seed=1)
            Pruner(Channels(), L1NormCriterion, ann, objective=Params(0.3)).run(Branches(reverse=rank == 1), x)
        elif mode == "search":
            from workflow_models import Fidelity, calib_batches, calibration_fn, data, make_bn_model

            from pruning_ir.workflows import get_pruning_runner

            model, x = make_bn_model(), data()
            if rank == 1:
                with torch.no_grad():
                    next(model.parameters()).add_(1.0)
            one = get_pruning_runner(model, (x,), "one_step", cache_dir=f"{out}.cache")
            one.search(calibration_fn=calibration_fn, calib_args=(calib_batches(),), eval_fn=Fidelity(model, x),
                       eval_args=(x,), num_subnet=4, removal_ratio=0.5, strategy="random")
        else:
            from workflow_models import Fidelity, data, make_model

            from pruning_ir.workflows import get_pruning_runner

            model, x = make_model(), data()
            if rank == 1 and mode == "weights":
                with torch.no_grad():
                    next(model.parameters()).add_(1.0)
            runner = get_pruning_runner(model, (x,), "iterative", cache_dir=f"{out}.cache")
            first = runner.ana(Fidelity(model, x), (x,), ratios=(0.5,))
            if mode == "readback" and world > 1:
                import torch.distributed as dist

                dist.barrier()  # the file is written
                if rank == 0:
                    assert runner.ana(Fidelity(model, x), (x,), ratios=(0.5,)) == first
        Path(f"{out}.{rank}").write_text("ran")
    except InvalidInputError as exc:
        Path(f"{out}.{rank}").write_text(f"refused: {exc}")
    finish(world)


if __name__ == "__main__":
    main()
