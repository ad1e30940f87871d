"""Which criterion predicts what removing labels costs? Per label, the true loss change of masking it
against every criterion's score, as Spearman rank correlations per group *type*; and per group, the
true loss change of masking the lowest-ranked *half* together (what a pruning at scale removes), on
four models.

    python benchmarks/criteria_diagnosis.py                     # all four models, 2 seeds
    python benchmarks/criteria_diagnosis.py --models bn_cnn,vit --labels-per-group 48 --seeds 1

Models (none tuned on by the criteria; all data bundled):

* ``bn_cnn``: a plain chain of 4 conv+BN+ReLU (one residual add over the third) and 2 linear layers
  on scikit-learn's digits, trained 12 epochs;
* ``resnet``: the residual digits CNN of ``examples/digits_cnn.py`` (every stage one coupled group);
* ``vit``: a 2-layer Hugging Face ViT (4 heads) trained on digits;
* ``minilm``: the pretrained all-MiniLM-L6-v2 encoder, loss = squared distance of the mean-pooled
  embedding to the unpruned model's (the distillation loss of ``examples/minilm_prune.py``).

The truth of a label is ``L(model with that label masked to zero) - L(model)`` on the calibration
data (what ``pruning_ir.masked_model`` gives, the equivalence oracle's reference). ``--labels-per-group``
samples that many labels of a larger group (seeded), so MiniLM's 1536-wide FFN groups stay affordable.

Group types: ``conv+BN chain`` (one producer, 4-D weights), ``residual-coupled`` (channels produced
by two or more layers and added), ``heads`` (a label owns several rows of each projection),
``FFN / linear`` (the rest).

Criteria: ``loss_aware`` (``LossAwareCriterion`` on the task loss: cross-entropy with the true labels,
or the distillation loss), ``loss_aware_all`` (the same, every member's grad*weight summed instead of
the readers'), ``loss_aware_fisher`` / ``loss_aware_energy`` (``LossAwareCriterion`` calibrated with
``fisher_loss`` / ``output_energy_loss``: the model's own predictions, no labels), the classic
criteria, ``wanda`` and ``flap`` (forward only).

Exit status 1 when the recommended loss-aware calibration (``fisher_loss`` for class logits,
``output_energy_loss`` for MiniLM's embeddings) is not within ``JOINT_SLACK`` of the best joint
removal on every model.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import _common  # noqa: F401  (puts the repository root on sys.path)
import torch
import torch.nn.functional as F
from _common import REPO, busy_warning, environment, finish, markdown_table
from torch import nn

sys.path.insert(0, str(REPO / "examples"))

import digits_cnn as dc

from pruning_ir import (
    BNScaleCriterion,
    FLAPCriterion,
    FPGMCriterion,
    L1NormCriterion,
    L2NormCriterion,
    LossAwareCriterion,
    MeanActivationCriterion,
    PruningIR,
    RandomCriterion,
    TaylorFOWeightCriterion,
    WandaCriterion,
    fisher_loss,
    masked_model,
    output_energy_loss,
)
from pruning_ir._ir.labels import LabelGroup
from pruning_ir._ir.measure import member_slots, reader_slots

CRITERIA = ("loss_aware", "loss_aware_all", "loss_aware_fisher", "loss_aware_energy", "taylor_fo_weight", "l1", "l2",
            "fpgm", "bn_scale", "mean_activation", "wanda", "flap", "random")
JOINT_SLACK = 1.5
RECOMMENDED = {"bn_cnn": "loss_aware_fisher", "resnet": "loss_aware_fisher", "vit": "loss_aware_fisher",
               "minilm": "loss_aware_energy"}
"""The calibration README recommends per kind of output: fisher_loss for class logits, output_energy_loss else."""


# ----------------------------------------------------------------------------- models
class BNChain(nn.Module):
    """4 conv+BN+ReLU (a residual add over the third), global pool, 2 linear layers."""

    def __init__(self) -> None:
        super().__init__()

        def cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))

        self.c1, self.c2, self.c3, self.c4 = cbr(1, 24), cbr(24, 48, 2), cbr(48, 48), cbr(48, 96, 2)
        self.fc1 = nn.Linear(96, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        x = torch.relu(x + self.c3(x))
        x = torch.relu(self.c4(x)).mean((2, 3))
        return self.head(torch.relu(self.fc1(x)))


class Logits(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(pixel_values=x).logits


def vit(seed: int) -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    cfg = ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=64, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=128, num_labels=10, attn_implementation="eager")
    return Logits(ViTForImageClassification(cfg))


@dataclass
class Case:
    """A trained model, its calibration batches and its loss (mean over a batch)."""

    model: nn.Module
    example: tuple[Any, ...]
    example_kwargs: dict[str, Any]
    batches: list[tuple[tuple[Any, ...], dict[str, Any], Any]]  # (args, kwargs, target)
    loss: Callable[[Any, Any, dict[str, Any]], torch.Tensor]
    groups: set[int] | None = None  # only these groups (None: every prunable group)
    extra: dict[str, Any] = field(default_factory=dict)


def digits_case(build: Callable[[int], nn.Module], seed: int, epochs: int) -> Case:
    split = dc.load_digits_split()
    model = build(seed)
    dc.train(model, split.x_train, split.y_train, epochs, seed=seed, progress=False)
    model.eval()
    batches = [((x,), {}, y) for x, y in dc.batches(split.x_train, split.y_train, 64)][:8]
    return Case(model, (split.x_train[:2],), {}, batches, lambda out, y, _kw: F.cross_entropy(out, y),
                extra={"accuracy": dc.evaluate(model, split.x_test, split.y_test)})


def bn_chain(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return BNChain()


def minilm_case(seed: int) -> Case:
    import minilm_prune as ex
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = ex.model_dir()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    sentences = ex.load_sentences()
    random.Random(seed).shuffle(sentences)
    sentences = sentences[:96]
    batches = []
    for b in ex.batches(tok, sentences, 16):
        teacher = ex.embed(model, [b])
        batches.append(((b["input_ids"],), {"attention_mask": b["attention_mask"]}, teacher))

    def loss(out: Any, teacher: torch.Tensor, kw: dict[str, Any]) -> torch.Tensor:
        return 0.5 * (ex.mean_pool(out, kw["attention_mask"]) - teacher).square().sum(1).mean()

    ir_groups: set[int] = set()
    case = Case(model, batches[0][0], batches[0][1], batches, loss, ir_groups)
    case.extra["head_and_ffn"] = ex.head_and_ffn_groups
    case.extra["embed"] = lambda out, kw: ex.mean_pool(out, kw["attention_mask"])
    return case


# ----------------------------------------------------------------------------- scoring
def calibrate(ir: PruningIR, case: Case, name: str, seed: int) -> None:
    model = ir.model
    if name.startswith("loss_aware_fisher") or name == "loss_aware_energy":  # own predictions: 2 passes, no labels
        temperature = float(name.partition("_T")[2] or 4.0)  # loss_aware_fisher_T2: temperature 2
        gen = torch.Generator().manual_seed(seed)
        with LossAwareCriterion(ir) as collect:
            for _ in range(2):
                for args, kwargs, _target in case.batches:
                    out = collect(*args, **kwargs)
                    if name.startswith("loss_aware_fisher"):
                        fisher_loss(out, temperature=temperature, generator=gen).backward()
                    else:
                        emb = case.extra["embed"](out, kwargs) if "embed" in case.extra else out
                        output_energy_loss(emb, generator=gen).backward()
        model.zero_grad(set_to_none=True)
    elif name in ("wanda", "flap"):
        with (WandaCriterion(ir) if name == "wanda" else FLAPCriterion(ir)) as collect:
            for args, kwargs, _ in case.batches:
                collect(*args, **kwargs)
    elif name.startswith("loss_aware") or name == "taylor_fo_weight":
        crit: Any
        if name == "taylor_fo_weight":
            crit = TaylorFOWeightCriterion(ir)
        else:
            crit = LossAwareCriterion(ir, members="all" if name == "loss_aware_all" else "readers")
        with crit as collect:
            for args, kwargs, target in case.batches:
                case.loss(collect(*args, **kwargs), target, kwargs).backward()
        model.zero_grad(set_to_none=True)
    elif name == "mean_activation":
        with torch.no_grad(), MeanActivationCriterion(ir) as collect:
            for args, kwargs, _ in case.batches:
                collect(*args, **kwargs)
    elif name == "random":
        RandomCriterion(ir, seed=seed).score()
    else:
        {"l1": L1NormCriterion, "l2": L2NormCriterion, "fpgm": FPGMCriterion, "bn_scale": BNScaleCriterion}[name](
            ir).score()


def total_loss(model: nn.Module, case: Case) -> float:
    with torch.no_grad():
        return statistics.fmean(float(case.loss(model(*a, **kw), t, kw)) for a, kw, t in case.batches)


def group_type(ir: PruningIR, g: LabelGroup) -> str:
    snap = ir.snapshot()
    tensors = dict(ir.model.named_parameters())
    rows = [slots for name, _axis, _sel, slots in member_slots(snap, g) if name in tensors and tensors[name].dim() >= 2]
    if rows and any(len(s) > g.size for s in rows):
        return "heads"
    readers = {m[0] for m in reader_slots(snap, g)}
    producers = {name for name, _axis, _sel, _slots in member_slots(snap, g)
                 if name in tensors and tensors[name].dim() >= 2 and name not in readers}
    if len(producers) >= 2:
        return "residual-coupled"
    if any(tensors[n].dim() == 4 for n in producers | readers if n in tensors):
        return "conv+BN chain"
    return "FFN / linear"


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = torch.argsort(torch.argsort(a)).double()
    rb = torch.argsort(torch.argsort(b)).double()
    if len(a) < 3:
        return float("nan")
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


@dataclass
class Tally:
    """Per criterion: Spearman values per group type (over seeds), and per (seed, group) the loss
    increase of masking the lowest-ranked half of the group."""

    spearman: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    joint: dict[str, dict[tuple[int, int], float]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def diagnose(name: str, case: Case, args: argparse.Namespace, seed: int, tally: Tally) -> None:
    t0 = time.perf_counter()
    ir = PruningIR(case.model, example_inputs=case.example, example_kwargs=case.example_kwargs)
    groups = ir.prunable_label_groups()
    if "head_and_ffn" in case.extra:
        keep = case.extra["head_and_ffn"](ir)
        groups = [g for g in groups if g.gid in keep]
    gen = torch.Generator().manual_seed(seed)
    base = total_loss(ir.model, case)
    truth: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for g in groups:
        idx = torch.arange(g.size)
        if g.size > args.labels_per_group:
            idx = torch.randperm(g.size, generator=gen)[: args.labels_per_group].sort().values
        labels = ir.labels(g)
        truth[g.gid] = (idx, torch.tensor([total_loss(masked_model(ir, [labels[int(i)]]), case) - base for i in idx],
                                          dtype=torch.float64))
    types = {g.gid: group_type(ir, g) for g in groups}
    for g in groups:
        tally.counts[types[g.gid]] = tally.counts.get(types[g.gid], 0) + 1
    tally.notes.append(f"seed {seed}: base loss {base:.4f}" + (
        f", test accuracy {100 * case.extra['accuracy']:.1f} %" if "accuracy" in case.extra else ""))
    print(f"[{name} seed {seed}] truth for {sum(len(t[0]) for t in truth.values())} labels of {len(groups)} groups "
          f"in {time.perf_counter() - t0:.1f}s (base loss {base:.4f})", flush=True)
    for crit in args.criteria:
        if (crit == "bn_scale" and name in ("vit", "minilm")) or (
                crit.startswith("loss_aware_fisher") and name == "minilm"):
            continue
        calibrate(ir, case, crit, seed)
        scores = ir.snapshot().scores
        by = tally.spearman.setdefault(crit, {})
        by.setdefault("pooled", []).append(spearman(torch.cat([scores[g.gid][truth[g.gid][0]] for g in groups]),
                                                    torch.cat([truth[g.gid][1] for g in groups])))
        for g in groups:
            idx, t = truth[g.gid]
            rho = spearman(scores[g.gid][idx], t)
            if rho == rho:
                by.setdefault(types[g.gid], []).append(rho)
                by.setdefault("all groups", []).append(rho)
            half = torch.argsort(scores[g.gid], stable=True)[: g.size // 2]
            labels = ir.labels(g)
            masked = masked_model(ir, [labels[int(i)] for i in half])
            tally.joint.setdefault(crit, {})[(seed, g.gid)] = total_loss(masked, case) - base


def render(name: str, tally: Tally, args: argparse.Namespace) -> list[str]:
    kinds = sorted({k for v in tally.spearman.values() for k in v if k not in ("all groups", "pooled")})
    kinds += ["all groups", "pooled"]
    keys = sorted({k for v in tally.joint.values() for k in v})
    # joint regret: the loss increase of masking each group's lowest-ranked half by this criterion, summed
    # over groups and seeds, over the smallest such sum of any criterion (1.00 = the best)
    total = {c: sum(max(v[k], 0.0) for k in keys if k in v) for c, v in tally.joint.items()}
    least = max(min(total.values()), 1e-12)
    regret = {c: t / least for c, t in total.items()}
    rows = []
    for crit, by in tally.spearman.items():
        rows.append([crit] + [f"{statistics.fmean(by[k]):.2f}" if k in by else "-" for k in kinds]
                    + [f"{regret[crit]:.2f}"])
    best_rank = max(tally.spearman, key=lambda c: statistics.fmean(tally.spearman[c]["all groups"]))
    best_joint = min(regret, key=lambda c: regret[c])
    args.best[name] = (best_rank, best_joint, regret)
    lines = [f"## {name}", "", f"{', '.join(tally.notes)}; groups per seed: "
             f"{', '.join(f'{k}: {tally.counts[k] // args.seeds}' for k in kinds[:-2] if k in tally.counts)}. "
             f"Best one-label ranking: **{best_rank}**; best joint removal: **{best_joint}**.", "",
             markdown_table(["criterion"] + kinds + ["joint regret (50 %)"], rows), ""]
    print("\n".join(lines), flush=True)
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="bn_cnn,resnet,vit,minilm")
    p.add_argument("--criteria", default=",".join(CRITERIA))
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--labels-per-group", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="criteria_diagnosis.md")
    args = p.parse_args(argv)
    args.criteria = args.criteria.split(",")
    args.best = {}
    torch.set_num_threads(args.threads)
    builders: dict[str, Callable[[int], Case]] = {
        "bn_cnn": lambda seed: digits_case(bn_chain, seed, args.epochs),
        "resnet": lambda seed: digits_case(dc.make_model, seed, args.epochs),
        "vit": lambda seed: digits_case(vit, seed, args.epochs),
        "minilm": minilm_case,
    }
    doc = ["# Criteria diagnosis: Spearman of each criterion's scores with the true loss change of masking one "
           "label", "", f"`python benchmarks/criteria_diagnosis.py {' '.join(argv or sys.argv[1:])}` ({environment()})",
           "", "Mean Spearman over the groups of each type and the seeds (higher = ranks labels one at a time more "
           "like the truth); joint regret: the loss increase of masking each group's lowest-ranked half by the "
           "criterion, summed over groups and seeds, over the smallest such sum of any criterion (1.00 = the "
           "best).", ""]
    warn = busy_warning()
    if warn:
        doc += [f"> {warn}", ""]
    for name in args.models.split(","):
        tally = Tally()
        for seed in range(args.seeds):
            diagnose(name, builders[name](seed), args, seed, tally)
        doc += render(name, tally, args)
    misses = []
    for m, (_rank, _joint, regret) in args.best.items():
        ours = RECOMMENDED[m]
        if ours in regret and regret[ours] > JOINT_SLACK:
            misses.append(f"{m}: {ours} joint regret {regret[ours]:.2f} > {JOINT_SLACK}")
    intro = [f"The recommended loss-aware calibration (fisher_loss for class logits, output_energy_loss else) "
             f"within {JOINT_SLACK}x of the best joint removal on every model.", ""]
    return finish(args.out, doc, misses, "met on every model", intro=intro, echo=False)


if __name__ == "__main__":
    sys.exit(main())
