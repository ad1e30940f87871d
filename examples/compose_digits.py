"""Pruners composed from parts (target x metric x allocation x schedule x objective) on the bundled digits.

Three compositions of ``pruning_ir.compose`` on one trained residual CNN:

1. NNI's ``L1FilterPruner`` with a MACs objective: every convolution's output channels, L1 norms, the
   same fraction of each group, one shot, half the MACs;
2. the library's recipe: every group, LossAware scores calibrated with ``fisher_loss`` (re-scored
   on each step's slim model), one global ranking by score per MAC saved, three AGP steps with an
   epoch of fine-tuning after each, half the MACs;
3. then fine-grained: 70 % of the remaining weights of (2) zeroed by one global L1 threshold in two
   linear steps (``torch.nn.utils.prune`` masks on the slim model).

About a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import itertools

import torch
from digits_cnn import batches, evaluate, load_digits_split, macs, make_model, train
from torch import nn

from pruning_ir import L1NormCriterion, LossAwareCriterion, fisher_loss
from pruning_ir.compose import (
    AGP,
    Channels,
    Elements,
    Global,
    Linear,
    Macs,
    OneShot,
    Pruner,
    Ratio,
    Uniform,
    calibrated,
)
from pruning_ir.sparsity import sparsity_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = load_digits_split()
    model = make_model(0)
    train(model, data.x_train, data.y_train, args.epochs, progress=not args.quiet)
    x1 = data.x_test[:1]
    base = macs(model, x1)
    print(f"trained: test accuracy {100 * evaluate(model, data.x_test, data.y_test):.2f}%, {base} MACs")

    def finetune(m: nn.Module, step: int) -> None:
        train(m, data.x_train, data.y_train, 1, lr=1e-3, seed=100 + step, progress=False)

    def report(name: str, pruner: Pruner, slim: nn.Module) -> None:
        steps = ", ".join(f"{s.reached:.3f}" for s in pruner.history)
        print(f"{name}: MACs {macs(slim, x1) / base:.3f} of the original (after each step: {steps}), "
              f"test accuracy {100 * evaluate(slim, data.x_test, data.y_test):.2f}%")

    # 1. NNI's L1FilterPruner, at a MACs objective
    nni_l1 = Pruner(Channels([nn.Conv2d]), L1NormCriterion, Uniform(), OneShot(), Macs(0.5))
    slim1 = nni_l1.run(model, x1)
    report("L1 filters, uniform, one shot", nni_l1, slim1)
    finetune(slim1, 0)
    print(f"  after one epoch of fine-tuning: {100 * evaluate(slim1, data.x_test, data.y_test):.2f}%")

    # 2. LossAware (fisher_loss calibration), global per MAC, AGP with fine-tuning between steps
    calib = list(itertools.islice(batches(data.x_train, data.y_train, 64, shuffle=True, seed=2), 8))
    gen = torch.Generator().manual_seed(0)
    metric = calibrated(LossAwareCriterion, calib, lambda out, _y: fisher_loss(out, generator=gen))
    ours = Pruner(Channels(), metric, Global(), AGP(3), Macs(0.5), finetune=finetune)
    slim2 = ours.run(model, x1)
    report("LossAware(fisher), global per MAC, AGP(3) + fine-tune", ours, slim2)

    # 3. then 70 % of the slim model's remaining weights, one global threshold, two steps
    fine = Pruner(Elements(), "l1", Global(), Linear(2), Ratio(0.7), finetune=finetune)
    sparse = fine.run(slim2)  # a masked copy: slim2 stays dense
    print(f"then fine-grained: sparsity {sparsity_report(sparse).sparsity:.3f} of the weights, "
          f"test accuracy {100 * evaluate(sparse, data.x_test, data.y_test):.2f}%")


if __name__ == "__main__":
    main()
