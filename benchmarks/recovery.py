"""Recovery without fine-tuning, measured: accuracy at equal MACs right after pruning, and after each
repair of ``pruning_ir.recovery`` applied to the same slim model.

    python benchmarks/recovery.py                     # HF ViT and conv+BN chain on digits (3 seeds), MiniLM (1 seed)
    python benchmarks/recovery.py --models vit --seeds 1

For each model the reading layers' input statistics are collected by a ``WandaCriterion(gram=True)`` pass
on the original model; the labels are then scored by ``LossAwareCriterion`` calibrated with
``fisher_loss`` (digits models) or ``output_energy_loss`` on the mean-pooled embedding (MiniLM), selected
by ``GlobalScoreLabelSelector(cost="macs")`` bisected to the MACs target, pruned, and measured as is and
after:

* ``bias``: ``compensate_bias`` (FLAP): the removed channels' mean contribution folded into the readers' biases;
* ``lsq``: ``reconstruct_least_squares``: each linear reader refitted to its original output (ridge 1e-3);
* ``bn``: ``recalibrate_bn`` (CNN only), alone and after ``bias``.

Digits models: test accuracy (%), trained 10 epochs per seed, calibration = 8 training batches of 64.
MiniLM: mean cosine of the held-out sentence embeddings to the teacher's (the pretrained
all-MiniLM-L6-v2; heads and FFN groups only), calibration = 96 of the bundled sentences.
Exit status 1 when neither repair improves on the unrepaired slim model at some model and target
(means over seeds): a repair that never helps would be a defect.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from collections.abc import Callable
from typing import Any

import _common  # noqa: F401  (puts the repository root on sys.path)
import torch
from _common import REPO, environment, finish, markdown_table
from torch import nn

sys.path.insert(0, str(REPO / "examples"))

import digits_cnn as dc
from criteria_diagnosis import bn_chain, vit

from pruning_ir import (
    GlobalScoreLabelSelector,
    LossAwareCriterion,
    MacsModel,
    PruningIR,
    WandaCriterion,
    fisher_loss,
    output_energy_loss,
)
from pruning_ir.recovery import compensate_bias, recalibrate_bn, reconstruct_least_squares


def select_for(ir: PruningIR, target: float, groups: set[int] | None) -> list[Any]:
    """The score-per-MAC global selection whose MACs (from the IR) come closest to ``target`` from below."""
    macs = MacsModel(ir)
    base = macs.baseline()

    def pick(ratio: float) -> list[Any]:
        labels = GlobalScoreLabelSelector(ratio, cost="macs").select(ir)
        return [lab for lab in labels if groups is None or lab.group in groups]

    lo, hi = 0.0, 0.9999
    for _ in range(16):
        mid = (lo + hi) / 2
        if macs.cost(pick(mid)) <= target * base:
            hi = mid
        else:
            lo = mid
    return pick(hi)


def repairs(ir: PruningIR, labels: list[Any], crit: WandaCriterion, measure: Callable[[nn.Module], float],
            bn: Callable[[nn.Module], None] | None) -> dict[str, float]:
    slim = ir.prune(labels=labels).model
    out = {"pruned": measure(slim)}
    b = copy.deepcopy(slim)
    compensate_bias(ir, b, labels, crit)
    out["bias"] = measure(b)
    ls = copy.deepcopy(slim)
    reconstruct_least_squares(ir, ls, labels, crit)
    out["lsq"] = measure(ls)
    if bn is not None:
        r = copy.deepcopy(slim)
        bn(r)
        out["bn"] = measure(r)
        bn(b)
        out["bias+bn"] = measure(b)
    return out


Results = dict[float, list[dict[str, float]]]


def digits_rows(name: str, build: Callable[[int], nn.Module], args: argparse.Namespace) -> Results:
    split = dc.load_digits_split()
    res: dict[float, list[dict[str, float]]] = {}
    for seed in range(args.seeds):
        model = build(seed)
        dc.train(model, split.x_train, split.y_train, 10, seed=seed, progress=False)
        model.eval()
        calib = [x for x, _ in dc.batches(split.x_train, split.y_train, 64)][:8]
        ir = PruningIR(model, example_inputs=(split.x_train[:2],))
        with WandaCriterion(ir, gram=True) as crit:  # the statistics (its scores are replaced below)
            for x in calib:
                crit(x)
        gen = torch.Generator().manual_seed(seed)
        with LossAwareCriterion(ir) as collect:
            for _ in range(2):
                for x in calib:
                    fisher_loss(collect(x), generator=gen).backward()
        model.zero_grad(set_to_none=True)

        def measure(m: nn.Module) -> float:
            return 100 * dc.evaluate(m, split.x_test, split.y_test)

        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        bn = (lambda m, c=calib: recalibrate_bn(m, c)) if has_bn else None
        for t in args.targets:
            res.setdefault(t, []).append(repairs(ir, select_for(ir, t, None), crit, measure, bn))
        print(f"[{name} seed {seed}] done", flush=True)
    return res


def minilm_rows(args: argparse.Namespace) -> Results:
    import minilm_prune as ex
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = ex.model_dir()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    teacher = AutoModel.from_pretrained(path, local_files_only=True).eval()
    sentences = ex.load_sentences()
    cal, held = ex.batches(tok, sentences[:96], 16), ex.batches(tok, sentences[210:], 32)
    teacher_held = ex.embed(teacher, held)
    ir = PruningIR(copy.deepcopy(teacher), example_inputs=(cal[0]["input_ids"],),
                   example_kwargs={"attention_mask": cal[0]["attention_mask"]})
    groups = ex.head_and_ffn_groups(ir)
    with WandaCriterion(ir, gram=True) as crit:  # the statistics (its scores are replaced below)
        for b in cal:
            crit(**b)
    gen = torch.Generator().manual_seed(0)
    with LossAwareCriterion(ir) as collect:
        for _ in range(2):
            for b in cal:
                output_energy_loss(ex.mean_pool(collect(**b), b["attention_mask"]), generator=gen).backward()
    ir.model.zero_grad(set_to_none=True)

    def measure(m: nn.Module) -> float:
        return float(ex.fidelity(teacher_held, ex.embed(m, held))["cos"])

    res: dict[float, list[dict[str, float]]] = {}
    for t in args.targets:
        res.setdefault(t, []).append(repairs(ir, select_for(ir, t, groups), crit, measure, None))
    print("[minilm] done", flush=True)
    return res


def section(title: str, res: Results, unit: str, misses: list[str]) -> list[str]:
    stages = list(next(iter(res.values()))[0])
    rows = []
    for t, runs in res.items():
        means = {s: statistics.fmean(r[s] for r in runs) for s in stages}
        spread = {s: statistics.pstdev([r[s] for r in runs]) for s in stages}
        rows.append([f"{t:.2f}"] + [f"{means[s]:.3f} ± {spread[s]:.3f}" if unit == "cosine"
                                     else f"{means[s]:.1f} ± {spread[s]:.1f}" for s in stages])
        if max(means["bias"], means["lsq"]) <= means["pruned"]:
            misses.append(f"{title} at MACs {t}: neither bias compensation nor least squares helps")
    return [f"## {title}", "", f"{unit}, mean ± std over {len(next(iter(res.values())))} seed(s)", "",
            markdown_table(["MACs"] + stages, rows), ""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="vit,bn_cnn,minilm")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--targets", default="0.75,0.5")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="recovery.md")
    args = p.parse_args(argv)
    args.targets = [float(t) for t in args.targets.split(",")]
    torch.set_num_threads(args.threads)
    doc = ["# Recovery without fine-tuning", "", f"`python benchmarks/recovery.py {' '.join(argv or sys.argv[1:])}` "
           f"({environment()}). LossAware scores (fisher_loss / output_energy_loss), global selection by score per "
           "MAC, input statistics from a Wanda pass; the same slim model repaired each way.", ""]
    misses: list[str] = []
    models = args.models.split(",")
    if "vit" in models:
        doc += section("HF ViT on digits (2 layers, 4 heads)", digits_rows("vit", vit, args), "accuracy %", misses)
    if "bn_cnn" in models:
        doc += section("conv+BN chain on digits", digits_rows("bn_cnn", bn_chain, args), "accuracy %", misses)
    if "minilm" in models:
        doc += section("MiniLM (heads and FFN)", minilm_rows(args), "cosine", misses)
    return finish(args.out, doc, misses, "a repair helps at every model and target")


if __name__ == "__main__":
    sys.exit(main())
