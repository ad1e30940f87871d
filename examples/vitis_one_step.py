"""The Vitis AI "one-step pruning" workflow (UG1414), written as there, on the bundled digits data.

1. ``runner.search(gpus=['0'], calibration_fn=..., calib_args=(val_loader,), eval_fn=...,
   eval_args=(val_loader,), num_subnet=..., removal_ratio=0.7)``: subnetworks that each remove
   70 % of the MACs, recalibrated by ``calibration_fn`` (adaptive BN: statistics reset first, then
   averaged over its batches) and scored by ``eval_fn``
   (results in ``.pruning_ir/*.search``, resumable);
2. ``model = runner.prune(removal_ratio=0.7, index=None)``: the best one; then fine-tune.

About 20 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time

import torch
from digits_cnn import evaluate, load_digits_split, macs, make_model, train

from pruning_ir.workflows import adaptive_bn, get_pruning_runner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-subnet", type=int, default=24)
    ap.add_argument("--removal-ratio", type=float, default=0.7)
    ap.add_argument("--cache-dir", default=".pruning_ir")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = load_digits_split()
    n_val = len(data.y_train) // 5
    val_loader = [(data.x_train[i:i + 128], data.y_train[i:i + 128]) for i in range(0, n_val, 128)]
    x_tr, y_tr = data.x_train[n_val:], data.y_train[n_val:]

    def eval_fn(model: torch.nn.Module, dataloader: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for images, targets in dataloader:
                correct += int((model(images).argmax(1) == targets).sum())
                total += len(targets)
        return 100.0 * correct / total

    # adaptive BN as in the Vitis guide: forward passes in training mode, no gradient
    def calibration_fn(model: torch.nn.Module, dataloader: list[tuple[torch.Tensor, torch.Tensor]],
                       number_forward: int = 100) -> None:
        model.train()
        with torch.no_grad():
            for index, (images, _) in enumerate(dataloader):
                model(images)
                if index > number_forward:
                    break
        model.eval()

    model = make_model(0)
    train(model, x_tr, y_tr, 10, progress=not args.quiet)
    x1 = data.x_test[:1]
    print(f"trained: test accuracy {100 * evaluate(model, data.x_test, data.y_test):.2f}%")

    runner = get_pruning_runner(model, data.x_train[:16], "one_step", name="digits", cache_dir=args.cache_dir)
    runner.search(gpus=["0"], calibration_fn=calibration_fn, calib_args=(val_loader,), eval_fn=eval_fn,
                  eval_args=(val_loader,), num_subnet=args.num_subnet, removal_ratio=args.removal_ratio,
                  progress=not args.quiet)
    slim = runner.prune(removal_ratio=args.removal_ratio, index=None)
    adaptive_bn(slim, calibration_fn, [(x_tr[i:i + 128], y_tr[i:i + 128]) for i in range(0, len(y_tr), 128)])
    acc_bn = evaluate(slim, data.x_test, data.y_test)
    train(slim, x_tr, y_tr, 3, lr=1e-3, seed=1, progress=not args.quiet, desc="fine-tune")
    print(f"best of {args.num_subnet} subnetworks: MACs {macs(slim, x1) / macs(model, x1):.3f} of the original; "
          f"test accuracy after adaptive BN {100 * acc_bn:.2f}%, fine-tuned "
          f"{100 * evaluate(slim, data.x_test, data.y_test):.2f}% (search: {runner.search_path})")
    print(f"total time {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
