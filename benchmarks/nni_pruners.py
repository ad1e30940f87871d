"""NNI's pruners (pruning_ir.compat.nni) at equal MACs on the digits residual CNN, beside the Vitis-style
sensitivity allocation and LossAware + knapsack.

    python benchmarks/nni_pruners.py                  # 2 seeds, half the MACs
    python benchmarks/nni_pruners.py --seeds 3 --target 0.33

Per seed the CNN of examples/digits_cnn.py is trained 10 epochs. Every structured pruner gets the
seed's ``config_list`` form ``[{"sparsity": s, "op_types": ["Conv2d"]}]`` (``BatchNorm2d`` for
SlimPruner) with ``s`` bisected until the slim model's MACs are at most ``--target`` of the original
(AGP reuses the L1 pruner's ``s``; SimulatedAnnealing (14 candidates from T=1 to 0.05), NetAdapt
(steps of 0.15, each candidate fine-tuned one pass) and AutoCompress (2 rounds) bisect their
parameter sparsity; ADMM trains 2 x 1 passes with row 1e-2 under an SGD optimizer); then
``speedup()``; the slim model is measured right after pruning, after BN recalibration and after a
2-epoch fine-tune (the same for every row). Trainer-driven pruners get one pass over 8 training
batches (AGP's trainer also steps an optimizer: it trains between its iterations, so its "pruned"
column is after training). Beside them: the Vitis workflow (``ana`` + ``prune(removal_ratio)``) and
``LossAwareCriterion`` (``fisher_loss``) + ``joint_loss_scores`` + ``KnapsackLabelSelector`` under
the MACs budget. Fine-grained pruners (Level, LotteryTicket) do not change MACs and are not in this
table.

Exit status 1 when a row does not reach the target within 2 % of the MACs.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (puts the repository root on sys.path)
import torch
import torch.nn.functional as F
from _common import REPO, SeedRow, busy_warning, environment, finish, seed_table
from torch import nn

sys.path.insert(0, str(REPO / "examples"))

import digits_cnn as dc

from pruning_ir import KnapsackLabelSelector, LossAwareCriterion, MacsLatency, MacsModel, PruningIR, fisher_loss
from pruning_ir import joint_loss_scores as joint
from pruning_ir.compat import nni

STAGES = ("pruned", "bn_recal", "finetuned")


class Setup:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.split = dc.load_digits_split()
        self.calib = list(dc.batches(self.split.x_train, self.split.y_train, 64))[:8]
        self.x1 = self.split.x_test[:1]

    def trainer(self, model: nn.Module, optimizer: Any = None, criterion: Any = None, epoch: int = 0,
                callback: Any = None) -> None:
        """One pass over the calibration batches (a step only when given an optimizer)."""
        for x, y in self.calib:
            if optimizer is not None:
                optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            if callback is not None:
                callback()
            if optimizer is not None:
                optimizer.step()

    def evaluator(self, model: nn.Module) -> float:
        model.eval()
        return dc.evaluate(model, self.split.x_train[-256:], self.split.y_train[-256:])


def bisect(build: Callable[[float], nn.Module], base: int, target: float, x1: torch.Tensor,
           hi: float = 0.95) -> tuple[nn.Module, float]:
    lo, best = 0.0, None
    for _ in range(9):
        mid = (lo + hi) / 2
        try:
            slim = build(mid)
        except Exception:  # an over-pruned configuration the pruner refuses
            hi = mid
            continue
        if dc.macs(slim, x1) <= target * base:
            hi, best = mid, (slim, mid)
        else:
            lo = mid
    if best is None:
        raise RuntimeError(f"could not reach {target} of the MACs")
    return best


def run_seed(setup: Setup, target: float, rows: dict[str, SeedRow]) -> None:
    model = dc.make_model(setup.seed)
    dc.train(model, setup.split.x_train, setup.split.y_train, 10, seed=setup.seed, progress=False)
    model.eval()
    base = dc.macs(model, setup.x1)
    x = setup.split.x_train[:8]
    conv = [{"sparsity": 0.0, "op_types": ["Conv2d"]}]

    def config(s: float, kind: str = "Conv2d") -> list[dict[str, Any]]:
        return [{**conv[0], "sparsity": s, "op_types": [kind]}]

    def one_shot(cls: type, kind: str = "Conv2d", **kw: Any) -> Callable[[float], nn.Module]:
        def build(s: float) -> nn.Module:
            p = cls(copy.deepcopy(model), config(s, kind), dummy_input=x, **kw)
            p.compress()
            return p.speedup()
        return build

    def trainer_pruner(cls: type) -> Callable[[float], nn.Module]:
        def build(s: float) -> nn.Module:
            m = copy.deepcopy(model)
            p = cls(m, config(s), torch.optim.SGD(m.parameters(), lr=0.0), setup.trainer, None, dummy_input=x,
                    statistics_batch_num=8)
            p.compress()
            return p.speedup()
        return build

    builds: dict[str, Callable[[float], nn.Module]] = {
        "L1FilterPruner": one_shot(nni.L1FilterPruner), "L2FilterPruner": one_shot(nni.L2FilterPruner),
        "FPGMPruner": one_shot(nni.FPGMPruner), "SlimPruner (BN)": one_shot(nni.SlimPruner, "BatchNorm2d"),
        "ActivationAPoZRankFilterPruner": trainer_pruner(nni.ActivationAPoZRankFilterPruner),
        "ActivationMeanRankFilterPruner": trainer_pruner(nni.ActivationMeanRankFilterPruner),
        "TaylorFOWeightFilterPruner": trainer_pruner(nni.TaylorFOWeightFilterPruner),
    }

    def sa(s: float) -> nn.Module:
        p = nni.SimulatedAnnealingPruner(copy.deepcopy(model), [{"sparsity": s, "op_types": ["Conv2d"]}],
                                         setup.evaluator, start_temperature=1.0, stop_temperature=0.05,
                                         cool_down_rate=0.8, dummy_input=x, seed=setup.seed)
        p.compress()
        return p.speedup()

    slims: dict[str, nn.Module] = {}
    l1_sparsity = None
    for name, build in builds.items():
        slims[name], s = bisect(build, base, target, setup.x1)
        if name == "L1FilterPruner":
            l1_sparsity = s
    slims["SimulatedAnnealingPruner (l1)"], _ = bisect(sa, base, target, setup.x1, hi=0.9)

    def admm(s: float) -> nn.Module:
        m = copy.deepcopy(model)
        p = nni.ADMMPruner(m, config(s), setup.trainer, num_iterations=2, epochs_per_iteration=1, row=1e-2,
                           dummy_input=x, optimizer=torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9))
        p.compress()
        return p.speedup()

    def netadapt(s: float) -> nn.Module:
        def short_term(mm: nn.Module) -> None:
            mm.train()
            setup.trainer(mm, torch.optim.SGD(mm.parameters(), lr=1e-3, momentum=0.9))
            mm.eval()

        p = nni.NetAdaptPruner(copy.deepcopy(model), [{"sparsity": s, "op_types": ["Conv2d"]}], short_term,
                               setup.evaluator, sparsity_per_iteration=0.15, dummy_input=x)
        p.compress()
        return p.speedup()

    def autocompress(s: float) -> nn.Module:
        p = nni.AutoCompressPruner(model, [{"sparsity": s, "op_types": ["Conv2d"]}], setup.trainer, setup.evaluator,
                                   x, num_iterations=2, start_temperature=1.0, stop_temperature=0.3,
                                   cool_down_rate=0.7, admm_num_iterations=2, admm_training_epochs=1, row=1e-2,
                                   seed=setup.seed)
        return p.compress()

    slims["ADMMPruner (l1, 2 x 1 epochs)"], _ = bisect(admm, base, target, setup.x1)
    slims["NetAdaptPruner (l1, steps of 0.15)"], _ = bisect(netadapt, base, target, setup.x1, hi=0.9)
    slims["AutoCompressPruner (2 rounds)"], _ = bisect(autocompress, base, target, setup.x1, hi=0.9)
    m = copy.deepcopy(model)
    agp = nni.AGP_Pruner(m, config(l1_sparsity or 0.5), torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9),
                         setup.trainer, num_iterations=3, pruning_algorithm="l1", dummy_input=x)
    agp.compress()
    slims["AGP_Pruner (l1, L1's sparsity)"] = agp.speedup()

    from pruning_ir.workflows import get_pruning_runner

    with tempfile.TemporaryDirectory() as d:
        runner = get_pruning_runner(model, (x,), "iterative", cache_dir=Path(d), name=f"nni-{setup.seed}")
        val = [(setup.split.x_train[-256:], setup.split.y_train[-256:])]
        runner.ana(lambda mm, v: 100 * dc.evaluate(mm.eval(), v[0][0], v[0][1]), (val,))
        slims["Vitis ana + prune"] = runner.prune(removal_ratio=1 - target)
    ir = PruningIR(copy.deepcopy(model), example_inputs=(x,))
    gen = torch.Generator().manual_seed(setup.seed)
    with LossAwareCriterion(ir) as collect:
        for _ in range(2):
            for xb, _yb in setup.calib:
                fisher_loss(collect(xb), generator=gen).backward()
    ir.model.zero_grad(set_to_none=True)
    joint(ir, lambda mm: statistics.fmean(float(F.cross_entropy(mm(xb), yb)) for xb, yb in setup.calib[:4]))
    macs = MacsModel(ir)
    labels = KnapsackLabelSelector(target * macs.baseline(), MacsLatency((x,)), cost_model=macs,
                                   verbose=False).select(ir)
    slims["LossAware (fisher) + joint + knapsack"] = ir.prune(labels=labels).model
    for name, slim in slims.items():
        row = rows.setdefault(name, SeedRow(name, scale=100, digits=1))
        row.macs.setdefault(target, []).append(dc.macs(slim, setup.x1) / base)
        row.add(target, "pruned", dc.evaluate(slim.eval(), setup.split.x_test, setup.split.y_test))
        dc.recalibrate_bn(slim, [xb for xb, _ in setup.calib])
        row.add(target, "bn_recal", dc.evaluate(slim, setup.split.x_test, setup.split.y_test))
        dc.train(slim, setup.split.x_train, setup.split.y_train, 2, lr=1e-3, seed=setup.seed + 1, progress=False)
        row.add(target, "finetuned", dc.evaluate(slim.eval(), setup.split.x_test, setup.split.y_test))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="nni_pruners.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows: dict[str, SeedRow] = {}
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_seed(Setup(seed), args.target, rows)
        print(f"[seed {seed}] {time.perf_counter() - t0:.0f}s", flush=True)
    misses = [f"{name}: MACs {r.reached(args.target):.3f}" for name, r in rows.items()
              if r.reached(args.target) > args.target + 0.02]
    doc = ["# NNI's pruners at equal MACs (digits residual CNN)", "",
           f"`python benchmarks/nni_pruners.py {' '.join(argv or sys.argv[1:])}` ({environment()}); accuracy % "
           f"(mean ± std over {args.seeds} seeds) right after pruning, after BN recalibration, after a 2-epoch "
           f"fine-tune; {time.perf_counter() - t0:.0f} s.", ""]
    warn = busy_warning()
    if warn:
        doc += [f"> {warn}", ""]
    doc += [*seed_table(rows, [args.target], STAGES, None), ""]
    return finish(args.out, doc, misses, "every row within 2 % of the MACs target")


if __name__ == "__main__":
    sys.exit(main())
