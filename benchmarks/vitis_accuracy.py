"""Accuracy at half the MACs: the Vitis-style workflows against the engine's other ways and Torch-Pruning.

Models, trained on scikit-learn's ``digits`` (bundled; 3 seeds each): the digits residual CNN of
``examples/digits_cnn.py`` and a small Hugging Face ViT (``ViTForImageClassification``: 8x8 images,
2x2 patches, hidden 64, 4 heads, 2 layers). For every seed, each method brings the trained model
to half its MACs (within 1 %):

* ``ana+prune``: ``runner.ana(eval_fn, args=(val,))`` (top-1 on a validation split of the
  training data), then ``runner.prune(removal_ratio=0.5)``;
* ``search evolution`` / ``search random``: ``runner.search(calibration_fn, ..., num_subnet=N,
  removal_ratio=0.5, strategy=...)`` then ``runner.prune(0.5)`` (the best candidate), equal N;
* ``uniform``: ``UniformLabelSelector``, its ratio bisected to the MACs budget;
* ``LossAware+knapsack``: ``LossAwareCriterion`` on 8 training batches, ``KnapsackLabelSelector`` on
  the IR's MACs;
* ``TP magnitude``: Torch-Pruning's global ``MetaPruner`` with L1 magnitude (CNN only), its ratio
  bisected to the budget.

Each slim model is measured on the test split after adaptive BN (the same ``calibration_fn`` as
the search: BatchNorm statistics re-estimated on training batches; the ViT has none) and after
2 epochs of fine-tuning. Reported: means over the seeds with min-max spreads. Exit status 1 when a
method misses the MACs budget by more than 1 %; accuracies are reported, not targets.

Usage::

    python benchmarks/vitis_accuracy.py [--seeds 3] [--num-subnet 48]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import digits_cnn as dc
import torch
import torch.nn.functional as F
from _common import busy_warning, environment, markdown_table, write_result
from criteria_accuracy import tp_prune
from torch import nn

TARGET = 0.5


def vit(seed: int) -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    cfg = ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=64, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=128, num_labels=10, attn_implementation="eager")
    return _Logits(ViTForImageClassification(cfg))


class _Logits(nn.Module):
    """The HF model's logits as the output (the digits helpers expect a tensor)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(pixel_values=x).logits


MODELS: dict[str, Callable[[int], nn.Module]] = {"digits CNN": dc.make_model, "HF ViT": vit}


def calibration_fn(model: nn.Module, loader: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    dc.recalibrate_bn(model, loader)


def eval_fn(model: nn.Module, loader: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return 100.0 * correct / total


def run_seed(name: str, seed: int, num_subnet: int, cache: Path) -> dict[str, tuple[float, float, float]]:
    from pruning_ir import (
        KnapsackLabelSelector,
        LossAwareCriterion,
        MacsLatency,
        MacsModel,
        PruningIR,
        UniformLabelSelector,
    )
    from pruning_ir.workflows import get_pruning_runner

    data = dc.load_digits_split(seed=seed)
    n_val = len(data.y_train) // 5
    val = [(data.x_train[i:i + 128], data.y_train[i:i + 128]) for i in range(0, n_val, 128)]
    x_tr, y_tr = data.x_train[n_val:], data.y_train[n_val:]
    calib = [(x_tr[i:i + 64], y_tr[i:i + 64]) for i in range(0, 64 * 8, 64)]
    model = MODELS[name](seed)
    dc.train(model, x_tr, y_tr, 10, seed=seed, progress=False)
    x1 = data.x_test[:1]
    base = dc.macs(model, x1)
    slims: dict[str, nn.Module] = {}

    runner = get_pruning_runner(model, data.x_train[:16], "iterative", cache_dir=cache, name=f"{name}-{seed}")
    runner.ana(eval_fn, args=(val,))
    slims["ana+prune"] = runner.prune(removal_ratio=TARGET)
    for strategy in ("evolution", "random"):
        one = get_pruning_runner(model, data.x_train[:16], "one_step", cache_dir=cache, name=f"{name}-{seed}")
        one.search(calibration_fn=calibration_fn, calib_args=(calib,), eval_fn=eval_fn, eval_args=(val,),
                   num_subnet=num_subnet, removal_ratio=TARGET, strategy=strategy, seed=seed)
        slims[f"search {strategy}"] = one.prune(removal_ratio=TARGET)
    ir = PruningIR(model, example_inputs=(data.x_train[:16],))
    slims["uniform"] = ir.prune(labels=dc.select_for_macs(ir, UniformLabelSelector, TARGET, x1).labels).model
    with LossAwareCriterion(ir) as collect:
        for xb, yb in calib:
            F.cross_entropy(collect(xb), yb).backward()
    model.zero_grad(set_to_none=True)
    macs = MacsModel(ir)
    labels = KnapsackLabelSelector(TARGET * macs.baseline(), MacsLatency((data.x_train[:16],)), verbose=False,
                                   cost_model=macs).select(ir)
    slims["LossAware+knapsack"] = ir.prune(labels=labels).model
    if name == "digits CNN":
        slims["TP magnitude"] = tp_prune(model, "magnitude", True, TARGET, x1, {})  # global L1, ratio bisected
    out = {}
    for method, slim in slims.items():
        frac = dc.macs(slim, x1) / base
        calibration_fn(slim, calib)
        acc_bn = eval_fn(slim, [(data.x_test, data.y_test)])
        dc.train(slim, x_tr, y_tr, 2, lr=1e-3, seed=seed + 1, progress=False)
        out[method] = (frac, acc_bn, eval_fn(slim, [(data.x_test, data.y_test)]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--num-subnet", type=int, default=48)
    ap.add_argument("--models", default=",".join(MODELS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    busy = busy_warning()
    t0 = time.perf_counter()
    rows, misses = [], []
    for name in [m.strip() for m in args.models.split(",")]:
        per: dict[str, list[tuple[float, float, float]]] = {}
        for seed in range(args.seeds):
            print(f"[vitis_accuracy] {name} seed {seed} ...", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory() as d:
                for method, res in run_seed(name, seed, args.num_subnet, Path(d)).items():
                    per.setdefault(method, []).append(res)
        for method, res in per.items():
            fr = [r[0] for r in res]
            cells = [name, method, f"{statistics.mean(fr):.3f}"]
            for k in (1, 2):
                v = [r[k] for r in res]
                cells.append(f"{statistics.mean(v):.1f} ({min(v):.1f}-{max(v):.1f})")
            rows.append(cells)
            if any(f > TARGET + 0.01 or f < TARGET - 0.01 for f in fr) and method != "TP magnitude":
                misses.append(f"{name} {method}: MACs fraction {fr}")
    table = markdown_table(["model", "method", "MACs slim/orig", "test acc % after adaptive BN (min-max)",
                            "after 2 epochs fine-tune (min-max)"], rows)
    verdict = "MACs budget met by every method." if not misses else "TARGET MISSED: " + "; ".join(misses)
    print(table, verdict, sep="\n\n")
    doc = ["# Vitis-style workflows: accuracy at half the MACs", "",
           f"Generated by `python benchmarks/vitis_accuracy.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}` "
           f"on {time.strftime('%Y-%m-%d')} ({environment()}), {time.perf_counter() - t0:.0f} s; {args.seeds} seeds, "
           f"search with {args.num_subnet} subnetworks.", "", *([f"> {busy}", ""] if busy else []), table, "",
           verdict, ""]
    print(f"written {write_result('vitis_accuracy.md', chr(10).join(doc))}")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
