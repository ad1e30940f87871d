"""The Vitis AI "iterative pruning" workflow (UG1414), written as there, on the bundled digits data.

1. define an evaluation function (model first, returns a score: top-1 accuracy);
2. ``runner.ana(eval_fn, args=(val_loader,))`` once: the sensitivity file (``.pruning_ir/*.sens``;
   run this script twice: the second analysis is read back, not recomputed);
3. ``model = runner.prune(removal_ratio=...)``, then fine-tune; repeat with a modest ratio per step
   (each step analyses the fine-tuned slim model: its own sensitivity file).

About half a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time

import torch
from digits_cnn import evaluate, load_digits_split, macs, make_model, train

from pruning_ir.workflows import get_pruning_runner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="0.3,0.5", help="MACs removed after each step, of the original")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--cache-dir", default=".pruning_ir")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = load_digits_split()
    # a validation split of the training data for the analysis; the test split only reports
    n_val = len(data.y_train) // 5
    x_val, y_val = data.x_train[:n_val], data.y_train[:n_val]
    x_tr, y_tr = data.x_train[n_val:], data.y_train[n_val:]
    val_loader = [(x_val[i:i + 128], y_val[i:i + 128]) for i in range(0, n_val, 128)]

    # 1. the evaluation function, as in the Vitis guide: model first, returns a score
    def eval_fn(model: torch.nn.Module, dataloader: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for images, targets in dataloader:
                correct += int((model(images).argmax(1) == targets).sum())
                total += len(targets)
        return 100.0 * correct / total

    model = make_model(0)
    train(model, x_tr, y_tr, args.epochs, progress=not args.quiet)
    x1 = data.x_test[:1]
    base_macs = macs(model, x1)
    print(f"trained: test accuracy {100 * evaluate(model, data.x_test, data.y_test):.2f}%, {base_macs} MACs")

    for step, target in enumerate(float(s) for s in args.steps.split(",")):
        runner = get_pruning_runner(model, data.x_train[:16], "iterative", name=f"digits-step{step}",
                                    cache_dir=args.cache_dir)
        # 2. analysis (once per model: a finished file is read back)
        runner.ana(eval_fn, args=(val_loader,), progress=not args.quiet)
        # 3. prune this step's share of the current model's MACs, then fine-tune
        removal_ratio = 1 - (1 - target) * base_macs / macs(model, x1)
        model = runner.prune(removal_ratio=removal_ratio)
        pruned_acc = evaluate(model, data.x_test, data.y_test)
        train(model, x_tr, y_tr, args.finetune_epochs, lr=1e-3, seed=step + 1, progress=not args.quiet,
              desc="fine-tune")
        print(f"step {step}: removal_ratio {removal_ratio:.3f} of the current model -> MACs "
              f"{macs(model, x1) / base_macs:.3f} of the original; test accuracy pruned "
              f"{100 * pruned_acc:.2f}%, fine-tuned {100 * evaluate(model, data.x_test, data.y_test):.2f}% "
              f"(analysis: {runner.sensitivity_path})")
    print(f"total time {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
