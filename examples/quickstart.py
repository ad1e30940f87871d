"""Quickstart: train, prune to half the MACs, recover, verify, save. About half a minute on 2 CPU cores.

Run:  python examples/quickstart.py [--quiet]

Needs the ``examples`` extra (scikit-learn, tqdm); the data is scikit-learn's bundled
``digits`` (8x8 grey images, 10 classes), nothing is downloaded.

1. train a small residual CNN (:mod:`digits_cnn`) on digits;
2. trace it into a PruningIR (the residual adds couple channels into shared label groups);
3. score the labels (loss-aware criterion calibrated with ``fisher_loss``, then measured joint
   loss curves) and remove the labels with the lowest score per MAC saved over the whole model
   until the slim model has half the MACs;
4. prune: a physically smaller model of the same classes; check slim == original with the
   removed labels masked to zero;
5. recover accuracy: BN recalibration, then a short fine-tune;
6. compare accuracy, parameters, MACs and CPU latency; save the slim model (safetensors + JSON)
   and load it back into its own classes.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from digits_cnn import (
    batches,
    evaluate,
    latency_ms,
    load_digits_split,
    macs,
    make_model,
    n_params,
    recalibrate_bn,
    train,
)

from pruning_ir import (
    LossAwareCriterion,
    PruningIR,
    fisher_loss,
    joint_loss_scores,
    load_pruned,
    save_pruned,
    verify_pruning,
)
from pruning_ir.compose import Channels, Global, Macs, Pruner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    ap.add_argument("--finetune-epochs", type=int, default=3, help="fine-tuning epochs after pruning (default 3)")
    ap.add_argument("--calibration-batches", type=int, default=8, help="batches of 64 for the scores (default 8)")
    ap.add_argument("--target", type=float, default=0.5, help="MACs of the slim model / original (default 0.5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a busy machine a multi-threaded op waits for free cores)")
    args = ap.parse_args()
    progress = not args.quiet
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    # 1. data and a trained model
    data = load_digits_split(seed=args.seed)
    model = make_model(args.seed)
    t0 = time.perf_counter()
    train(model, data.x_train, data.y_train, args.epochs, seed=args.seed, progress=progress)
    acc_before = evaluate(model, data.x_test, data.y_test)
    print(f"{data}: trained {type(model).__name__} for {args.epochs} epochs in {time.perf_counter() - t0:.1f} s, "
          f"test accuracy {100 * acc_before:.2f}%")

    # 2. trace (eval mode: BatchNorm uses its running statistics, as at inference)
    ir = PruningIR(model.eval(), example_inputs=(data.x_train[:16],))
    print(repr(ir))
    with torch.no_grad():
        reference = model(data.x_test)

    # 3. score every label: expected change of the model's predictions when it is removed, from backward
    #    passes of fisher_loss (classes sampled from the model's own tempered predictions: a trained model
    #    fits its training batches, where the gradient of the task loss nearly vanishes) on a few training
    #    batches (eval mode: BatchNorm statistics are left alone) ...
    calib = list(itertools.islice(batches(data.x_train, data.y_train, 64, shuffle=True, seed=args.seed + 2),
                                  args.calibration_batches))
    gen = torch.Generator().manual_seed(args.seed)
    with LossAwareCriterion(ir, progress=progress) as collect:
        for _ in range(2):
            for xb, _yb in calib:
                fisher_loss(collect(xb), generator=gen).backward()
    model.zero_grad(set_to_none=True)
    print(f"{collect!r} scored {len(ir.prunable_label_groups())} prunable groups")

    #    ... then measure what removing each group's lowest-scored labels together costs (the loss on 4
    #    calibration batches with 1/8, 2/8, ... 7/8 of a group masked): scores become joint losses
    def calibration_loss(m: torch.nn.Module) -> float:
        with torch.no_grad():
            return sum(float(F.cross_entropy(m(xb), yb)) for xb, yb in calib[:4]) / 4

    curves = joint_loss_scores(ir, calibration_loss)
    print(f"joint loss curves: {sum(len(c) for c in curves.curves.values())} masked evaluations")

    #    and pick labels for half the MACs: one ranking of every label by its score per MAC saved (scores in
    #    units of loss, comparable across layers), the shortest prefix that reaches the objective
    #    (pruning_ir.compose: target x metric x allocation x schedule x objective; the IR is scored already)
    x1 = data.x_test[:1]
    pruner = Pruner(Channels(), None, Global(), objective=Macs(1 - args.target))
    labels = pruner.select(ir)
    print(f"{pruner!r}: {len(labels)} of {sum(g.size for g in ir.prunable_label_groups())} prunable labels")

    # 4. prune, and check slim == masked original
    pruned = ir.prune(labels=labels)
    slim = pruned.model
    report = verify_pruning(ir, labels)
    print(f"slim == masked original: exact={report.exact} (max |diff| {report.max_abs_diff:.2e})")
    print(f"{type(slim).__name__} kept its classes: layers[1].conv1 = {slim.get_submodule('layers.1.conv1')}")

    # 5. recover: BN recalibration on training batches, then a short fine-tune
    acc_pruned = evaluate(slim, data.x_test, data.y_test)
    recalibrate_bn(slim, batches(data.x_train, data.y_train, 128), progress=progress)
    acc_recal = evaluate(slim, data.x_test, data.y_test)
    train(slim, data.x_train, data.y_train, args.finetune_epochs, lr=1e-3, seed=args.seed + 1, progress=progress,
          desc="fine-tune")
    acc_after = evaluate(slim, data.x_test, data.y_test)
    print(f"recovery, test accuracy %: before {100 * acc_before:.2f} | pruned {100 * acc_pruned:.2f} | "
          f"BN recalibrated {100 * acc_recal:.2f} | fine-tuned ({args.finetune_epochs} epochs) {100 * acc_after:.2f}")
    with torch.no_grad():
        untouched = torch.equal(model(data.x_test), reference)
    print(f"original model untouched by prune and fine-tune: {untouched}")

    # 6. the numbers
    lat1 = latency_ms([model, slim], x1, repeats=50)
    xb = data.x_test[:256]
    lat256 = latency_ms([model, slim], xb, repeats=15)
    rows: list[tuple[str, float, float, str]] = [
        ("test accuracy %", 100 * acc_before, 100 * acc_after, ".2f"),
        ("params", n_params(model), n_params(slim), ".0f"),
        ("MACs per image", macs(model, x1), macs(slim, x1), ".0f"),
        ("CPU latency ms, batch 1", lat1[0], lat1[1], ".3f"),
        ("CPU latency ms, batch 256", lat256[0], lat256[1], ".3f"),
    ]
    print(f"{'':26s} {'original':>12s} {'pruned':>12s} {'ratio':>7s}")
    for name, a, b, fmt in rows:
        print(f"{name:26s} {a:12{fmt}} {b:12{fmt}} {b / a:7.3f}")

    # 7. save the slim model (its fine-tuned weights) without pickle, and load it back: the original
    #    architecture is built on `meta` (no memory) and turned into the slim one by the saved recipe
    with tempfile.TemporaryDirectory() as d:
        save_pruned(pruned, d)  # checks itself by loading the directory back
        size = sum(f.stat().st_size for f in Path(d).iterdir())
        with torch.device("meta"):
            base = make_model(seed=args.seed)
        loaded = load_pruned(d, base_model=base).eval()
    with torch.no_grad():
        same = torch.equal(loaded(data.x_test), slim(data.x_test))
    print(f"saved slim model: {size / 1e6:.2f} MB (safetensors + JSON), reloaded model identical: {same}")
    print(f"total time {time.perf_counter() - t_start:.1f} s ({args.threads} torch threads)")


if __name__ == "__main__":
    main()
