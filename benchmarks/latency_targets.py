"""Budget targets (issue 4's acceptance benchmark): KnapsackLabelSelector on MACs and on measured CPU latency.

    python benchmarks/latency_targets.py                       # resnet, vit, llama x targets 0.75, 0.5, 0.33
    python benchmarks/latency_targets.py --quick               # fewer repeats / iterations
    # full run: ~7 min on 2 loaded CPUs, torch single-threaded (1 min of it Torch-Pruning timing out on LLaMA)
    python benchmarks/latency_targets.py --models resnet --targets 0.5 --no-tp

Three models, defined here and randomly initialised (nothing is downloaded): a ResNet-18-style CNN
(BasicBlocks, widths 32..256, 100 classes, batch 4 of 3x32x32), a HuggingFace ViT
(``ViTForImageClassification``: 4 layers, hidden 192, 3 heads, FFN 768, 64x64 images with patch 8,
batch 4, SDPA attention) and a small LLaMA (``LlamaForCausalLM``: 4 layers, hidden 256, 8 query /
4 kv heads of 32, FFN 704, vocab 1000, batch 2 x 64 tokens, SDPA attention). Labels are scored by
``LossAwareCriterion`` calibrated on a few random batches: cross entropy against random class labels
(CNN, ViT) and the next-token cross entropy of random token ids (LLaMA).

For every model and every target fraction:

* **(a) MACs targets.** ``KnapsackLabelSelector(target * baseline MACs, MacsLatency(...))``: the
  MACs reached (from the IR, cross-checked with ``FlopCounterMode`` on the slim model), solver time
  (sum of the rounds' ``solver_s``), rounds and kept score (sum of ``ir.label_scores()`` over the
  kept labels); the same budget reached by ``GlobalScoreLabelSelector`` and ``UniformLabelSelector``
  (their ratio bisected so MACs <= target) and by ``BinarySearchLatencyLabelSelector``, with their
  kept scores. Target: ``0.98 * target <= knapsack MACs <= target``.
* **(b) Measured-latency targets.** ``KnapsackLabelSelector(target * baseline ms, MeasuredLatency(...,
  reference=original), cost_model=LatencyLUT(ir))`` (the paired, drift-cancelling measurement); the
  returned slim model is then re-measured in pairs with the original (41 rounds of adjacent pairs,
  median ratio) and ``(slim / original) / target`` is reported. Target: within 5%. For comparison (not a
  target) the same with the absolute ``MeasuredLatency(...)``, which a change of the machine's load
  between the baseline and a candidate fools.
* **(c) Realised speed-up.** The slim models of the MACs targets (knapsack, global, uniform) and
  Torch-Pruning's (``MetaPruner`` + ``MagnitudeImportance(p=2)``, output layer ignored, its
  ``pruning_ratio`` searched to the same MACs) are timed in adjacent pairs with the original: latency
  ratio vs MACs ratio and their gap (physical limit: latency ratio == MACs ratio). Every timing
  session also times a deep copy of the original (``A/A``): its ratio to the original shows the noise.

Exit status 1 when a target of (a) or (b) is missed (each miss is listed under "Targets").
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import _common  # noqa: F401  (puts the repository root and tests/ on sys.path)
import numpy as np
import torch
import torch.nn.functional as F
from _common import (
    busy_warning,
    environment,
    full_error,
    markdown_table,
    output_layers,
    quiet,
    short_error,
    time_limit,
    tp_example_inputs,
    write_result,
)
from torch import nn
from zoo_types import ZooCase, perturb_constant_tensors

from pruning_ir import (
    BinarySearchLatencyLabelSelector,
    GlobalScoreLabelSelector,
    KnapsackLabelSelector,
    Label,
    LabelSelector,
    LossAwareCriterion,
    MacsModel,
    PruningIR,
    UniformLabelSelector,
)
from pruning_ir.latency import LatencyLUT, MacsLatency, MeasuredLatency
from pruning_ir.latency.timing import median_rel_half_width

MODELS = ("resnet", "vit", "llama")
TARGETS = (0.75, 0.5, 0.33)
MACS_TOL = 0.02  # knapsack MACs must be in [target * (1 - MACS_TOL), target]
LAT_TOL = 0.05  # re-measured latency must be within 5% of the target
MEASURED = "absolute"
PAIRED = "paired"


# ----------------------------------------------------------------------------- models
class BasicBlock(nn.Module):
    """ResNet-18 basic block (two 3x3 convs + BN), 1x1 conv + BN projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet18Style(nn.Module):
    """ResNet-18 layout (2 basic blocks per stage, 4 stages) for 32x32 inputs: 3x3 stride-1 stem."""

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 256), classes: int = 100) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks: list[nn.Module] = []
        cin = widths[0]
        for i, w in enumerate(widths):
            blocks += [BasicBlock(cin, w, 1 if i == 0 else 2), BasicBlock(w, w)]
            cin = w
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layers(self.stem(x)).mean((2, 3)))


@dataclass
class Bench:
    """A model, its example inputs and how to draw a calibration batch and its loss."""

    case: ZooCase
    describe: str
    batch: Callable[[torch.Generator], tuple[tuple[Any, ...], dict[str, Any], torch.Tensor]]
    loss: Callable[[Any, torch.Tensor], torch.Tensor]
    loss_name: str


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def resnet_bench() -> Bench:
    torch.manual_seed(0)
    model = perturb_constant_tensors(ResNet18Style()).eval()
    shape = (4, 3, 32, 32)

    def batch(g: torch.Generator) -> tuple[tuple[Any, ...], dict[str, Any], torch.Tensor]:
        return (torch.randn(shape, generator=g),), {}, torch.randint(0, 100, (shape[0],), generator=g)

    case = ZooCase("resnet", model, (torch.randn(shape, generator=_gen(1234)),))
    return Bench(case, "ResNet-18-style CNN (BasicBlocks, widths 32/64/128/256, 100 classes), batch 4 x 3x32x32",
                 batch, lambda out, y: F.cross_entropy(out, y), "cross entropy vs random class labels")


def vit_bench() -> Bench:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, intermediate_size=768,
                       image_size=64, patch_size=8, num_channels=3, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0, num_labels=100, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = perturb_constant_tensors(ViTForImageClassification(config)).eval()
    shape = (4, 3, 64, 64)

    def batch(g: torch.Generator) -> tuple[tuple[Any, ...], dict[str, Any], torch.Tensor]:
        return (torch.randn(shape, generator=g),), {}, torch.randint(0, 100, (shape[0],), generator=g)

    case = ZooCase("vit", model, (torch.randn(shape, generator=_gen(1234)),), {},
                   output_to_tensor=lambda out: out.logits)
    return Bench(case, "HF ViTForImageClassification (4 layers, hidden 192, 3 heads x 64, FFN 768, patch 8, "
                 "100 classes, SDPA), batch 4 x 3x64x64", batch, lambda out, y: F.cross_entropy(out.logits, y),
                 "cross entropy vs random class labels")


def llama_bench() -> Bench:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=4, head_dim=32, max_position_embeddings=256,
                         tie_word_embeddings=False, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = perturb_constant_tensors(LlamaForCausalLM(config)).eval()
    shape = (2, 64)

    def batch(g: torch.Generator) -> tuple[tuple[Any, ...], dict[str, Any], torch.Tensor]:
        ids = torch.randint(3, 1000, shape, generator=g)
        return (ids,), {"use_cache": False}, ids

    def lm_loss(out: Any, ids: torch.Tensor) -> torch.Tensor:
        logits = out.logits[:, :-1]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))

    case = ZooCase("llama", model, (torch.randint(3, 1000, shape, generator=_gen(1234)),), {"use_cache": False},
                   output_to_tensor=lambda out: out.logits)
    return Bench(case, "HF LlamaForCausalLM (4 layers, hidden 256, 8 q / 4 kv heads x 32, FFN 704, vocab 1000, "
                 "SDPA), batch 2 x 64 tokens", batch, lm_loss, "next-token cross entropy of random token ids")


BENCHES: dict[str, Callable[[], Bench]] = {"resnet": resnet_bench, "vit": vit_bench, "llama": llama_bench}


# ----------------------------------------------------------------------------- settings
@dataclass
class Settings:
    calib_batches: int
    lut_repeats: int
    lat_warmup: int
    lat_repeats: int
    max_iterations: int
    rounds: int  # timing rounds per session (each times every model paired with the original)
    eval_precision: float  # ... and more, until every ratio's 95% interval is within this of it
    eval_max_rounds: int
    fn_precision: float  # rel_precision of the paired MeasuredLatency the selector uses
    fn_max_repeats: int
    paired_rounds: int  # rounds per call of the paired latency function (0: not run)
    tp_evals: int
    tp_timeout: float
    with_tp: bool


# ----------------------------------------------------------------------------- helpers
def removed_masks(ir: PruningIR, labels: Sequence[Label]) -> dict[int, np.ndarray]:
    out = {gid: np.zeros(s.numel(), dtype=bool) for gid, s in ir.label_scores().items()}
    for lab in labels:
        out[lab.group][lab.index] = True
    return out


def kept_score(ir: PruningIR, labels: Sequence[Label]) -> float:
    """Sum of ``ir.label_scores()`` over the labels not in ``labels``."""
    masks = removed_masks(ir, labels)
    return float(sum(float(s.double().numpy()[~masks[gid]].sum()) for gid, s in ir.label_scores().items()))


def total_score(ir: PruningIR) -> float:
    return float(sum(float(s.double().sum()) for s in ir.label_scores().values()))


def bisect_ratio(ir: PruningIR, factory: Callable[[float], LabelSelector], budget: float, macs: MacsModel,
                 iters: int = 30) -> tuple[list[Label], float]:
    """Largest-MACs selection with MACs <= ``budget`` over ``factory(ratio)``'s ratio (removals grow with it)."""
    best: tuple[list[Label], float] | None = None
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        try:
            labels = factory(mid).select(ir)
        except Exception:
            hi = mid
            continue
        cost = float(macs.cost(labels))
        if cost <= budget:
            hi = mid
            if best is None or cost >= best[1]:
                best = (labels, cost)
        else:
            lo = mid
    if best is None:
        raise RuntimeError(f"{factory(lo)!r} cannot reach {budget:.4g} MACs")
    return best


def interleaved(models: Sequence[nn.Module], case: ZooCase, rounds: int, warmup: int = 3,
                precision: float = 0.0, max_rounds: int = 0) -> tuple[list[float], list[float], int]:
    """Latency of each model relative to ``models[0]`` (the original): the median over rounds of
    the ratio of its time to the original's in an adjacent pair. Every round times, for each other
    model in a shuffled order, the pair (original, model) back to back, the model first in every
    other round, so a change of the machine's load longer than one pair hits both sides alike and
    neither the position in a round nor the model run just before favours one of them.

    With ``precision``, rounds go on (``rounds`` more at a time, up to ``max_rounds``) until the
    95% interval of every model's median ratio is within ``precision`` of it on both sides.
    Returns the ratios, the half-widths of their intervals relative to them, and the rounds run."""
    args, kwargs = case.example_inputs, case.example_kwargs
    ratios: list[list[float]] = [[] for _ in models]
    order = list(range(1, len(models)))
    rng = np.random.default_rng(0)

    def timed(m: nn.Module) -> float:
        t0 = time.perf_counter()
        m(*args, **kwargs)
        return time.perf_counter() - t0

    done = 0
    with torch.no_grad():
        for m in models:
            m.eval()
            for _ in range(warmup):
                m(*args, **kwargs)
        while True:
            for r in range(done, done + rounds):
                rng.shuffle(order)
                for i in order:
                    if r % 2:
                        t_model, t_orig = timed(models[i]), timed(models[0])
                    else:
                        t_orig, t_model = timed(models[0]), timed(models[i])
                    ratios[i].append(t_model / t_orig)
            done += rounds
            if not precision or done >= max_rounds or all(median_rel_half_width(r) <= precision for r in ratios[1:]):
                break
    return ([1.0] + [statistics.median(r) for r in ratios[1:]], [0.0] + [median_rel_half_width(r) for r in ratios[1:]],
            done)


def chosen_entry(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The round KnapsackLabelSelector keeps: the feasible one with the highest kept score (first on ties)."""
    best = None
    for h in history:
        if h["feasible"] and (best is None or h["kept_score"] > best["kept_score"] + 1e-12 * abs(best["kept_score"])):
            best = h
    return best


def solver_notes(history: list[dict[str, Any]]) -> list[str]:
    """Rounds whose solve was not proven optimal, and the slowest solve when it is long."""
    out = [f"round {h['iteration']}: solver {h['solver_status']}" for h in history if h["solver_status"] != "optimal"]
    slow = max((h["solver_s"] for h in history), default=0.0)
    if slow > 5:
        out.append(f"slowest solve {slow:.1f} s")
    return out


def attention_heads(model: nn.Module) -> dict[nn.Module, int]:
    """Torch-Pruning's ``num_heads`` for HF attention projections (q/k/v Linear -> heads)."""
    config = getattr(model, "config", None)
    if config is None:
        return {}
    heads = getattr(config, "num_attention_heads", None)
    kv = getattr(config, "num_key_value_heads", None) or heads
    out: dict[nn.Module, int] = {}
    for mod in model.modules():
        for q, k, v in (("q_proj", "k_proj", "v_proj"), ("query", "key", "value")):
            if all(isinstance(getattr(mod, n, None), nn.Linear) for n in (q, k, v)):
                out[getattr(mod, q)] = heads
                out[getattr(mod, k)] = kv
                out[getattr(mod, v)] = kv
    return out


# ----------------------------------------------------------------------------- Torch-Pruning
@dataclass
class TPResult:
    model: nn.Module | None = None
    macs_fraction: float | None = None
    ratio: float | None = None
    evals: int = 0
    seconds: float = 0.0
    config: str = ""
    error: str = ""


class TPRunner:
    """Torch-Pruning's MetaPruner at the ``pruning_ratio`` whose MACs are closest to (not above) a target.

    Tries its generic usage first; when the pruned model does not run (HF attention reshapes by
    head count), its documented transformer usage: ``num_heads`` of the q/k/v projections,
    ``prune_num_heads=True, prune_head_dims=False``. A configuration that errors or runs past the
    time limit is not tried again.
    """

    def __init__(self, case: ZooCase, settings: Settings) -> None:
        self.case = case
        self.settings = settings
        self.macs_fn = MacsLatency(case.example_inputs, case.example_kwargs)
        self.base_macs = self.macs_fn(case.model)
        self.out_shape = self._run(case.model).shape
        self.configs = ["generic"] + (["num_heads"] if attention_heads(case.model) else [])
        self.config: str | None = None
        self.errors: dict[str, str] = {}

    def _run(self, model: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return self.case.output_to_tensor(model(*self.case.example_inputs, **self.case.example_kwargs))

    def _prune(self, ratio: float, config: str) -> nn.Module:
        import torch_pruning as tp

        m = copy.deepcopy(self.case.model)
        kw: dict[str, Any] = {}
        if config == "num_heads":
            kw = {"num_heads": attention_heads(m), "prune_num_heads": True, "prune_head_dims": False,
                  "head_pruning_ratio": ratio}
        ignored = output_layers(m, self.case)
        with quiet(), time_limit(self.settings.tp_timeout):
            pruner = tp.pruner.MetaPruner(m, tp_example_inputs(ZooCase(self.case.name, m, self.case.example_inputs,
                                                                       self.case.example_kwargs)),
                                          importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
                                          ignored_layers=ignored, **kw)
            pruner.step()
        out = self._run(m)
        if out.shape != self.out_shape:
            raise RuntimeError(f"output shape changed {tuple(self.out_shape)} -> {tuple(out.shape)}")
        return m.eval()

    def _fraction(self, ratio: float) -> tuple[nn.Module, float] | None:
        """Pruned model and MACs fraction at ``ratio``, trying configurations until one works."""
        for config in [self.config] if self.config else list(self.configs):
            if config in self.errors:
                continue
            try:
                m = self._prune(ratio, config)
            except Exception as exc:
                if self.config is None:  # this configuration never worked: drop it
                    self.errors[config] = full_error(exc, 300)
                    continue
                raise
            self.config = config
            return m, self.macs_fn(m) / self.base_macs
        return None

    def search(self, target: float) -> TPResult:
        t0 = time.perf_counter()
        res = TPResult()
        lo, hi = 0.0, 1.0  # lo: MACs above target; hi: at or below it (or refused)
        r = 1.0 - math.sqrt(target)  # conv/linear MACs ~ (1 - r)^2
        best: tuple[nn.Module, float, float] | None = None
        over: tuple[nn.Module, float, float] | None = None
        for _ in range(self.settings.tp_evals):
            try:
                got = self._fraction(r)
            except Exception as exc:  # an over-pruned model that no longer runs
                res.error = short_error(exc, 200)
                hi = r
                r = (lo + hi) / 2
                res.evals += 1
                continue
            if got is None:
                break
            res.evals += 1
            m, f = got
            if f <= target:
                hi = r
                if best is None or f > best[1]:
                    best = (m, f, r)
                if f >= target * (1 - MACS_TOL):
                    break
            else:
                lo = r
                if over is None or f < over[1]:
                    over = (m, f, r)
            # next ratio: the (1 - r)^2 model through this point, kept inside the bracket
            nxt = 1.0 - (1.0 - r) * math.sqrt(target * (1 - MACS_TOL / 2) / max(f, 1e-9))
            r = nxt if lo < nxt < hi else (lo + hi) / 2
        res.seconds = time.perf_counter() - t0
        res.config = self.config or ""
        pick = best or over
        if pick is not None:
            res.model, res.macs_fraction, res.ratio = pick
            res.error = ""
        elif not res.error:
            res.error = "; ".join(f"{c}: {e}" for c, e in self.errors.items()) or "no configuration ran"
            if res.evals == 0 and res.seconds < 1:
                res.error += " (not tried again)"
        return res


# ----------------------------------------------------------------------------- rows
@dataclass
class MacsRow:
    model: str
    target: float
    method: str
    macs_fraction: float | None = None
    flop_fraction: float | None = None  # FlopCounterMode on the slim model
    kept: float | None = None
    select_s: float | None = None
    solver_s: float | None = None
    rounds: int | None = None
    note: str = ""


@dataclass
class LatRow:
    model: str
    target: float
    function: str = ""
    base_ms: float = 0.0
    trace: str = ""  # latency / target per round, chosen round starred
    selector_ms: float | None = None  # the selector's own measurement of the chosen candidate
    confirmed: str = ""  # the selector's final re-measurement: search -> confirmed latency / target
    fn_drift: float | None = None  # the function's reading of the original after the search / baseline
    aa: float | None = None
    ratio: float | None = None  # re-measured slim / original (median of adjacent-pair ratios)
    ratio_ci: float | None = None  # half-width of its 95% interval, relative
    eval_rounds: int | None = None
    lut_ratio: float | None = None
    macs_fraction: float | None = None
    kept: float | None = None
    rounds: int | None = None
    select_s: float | None = None
    solver_s: float | None = None
    note: str = ""


@dataclass
class SpeedRow:
    model: str
    target: float
    method: str
    macs_fraction: float | None = None
    latency_ratio: float | None = None
    aa: float | None = None  # deep copy / original in the same session
    note: str = ""


@dataclass
class ModelInfo:
    name: str
    describe: str
    loss_name: str = ""
    params: int = 0
    base_macs: float = 0.0
    base_ms: float = 0.0
    groups: int = 0
    labels: int = 0
    build_s: float = 0.0
    calib_s: float = 0.0
    lut_s: float | None = None
    lut: str = ""
    total_score: float = 0.0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- per model
def run_model(name: str, targets: list[float], st: Settings, threads: int, macs_rows: list[MacsRow],
              lat_rows: list[LatRow], speed_rows: list[SpeedRow], misses: list[str],
              info_misses: list[str]) -> ModelInfo:
    t_model = time.perf_counter()
    bench = BENCHES[name]()
    case = bench.case
    model = case.model
    info = ModelInfo(name, bench.describe, bench.loss_name, params=sum(p.numel() for p in model.parameters()))
    log = lambda msg: print(f"[latency_targets] {name}: {msg}", file=sys.stderr, flush=True)  # noqa: E731

    t0 = time.perf_counter()
    ir = PruningIR(model, example_inputs=case.example_inputs, example_kwargs=case.example_kwargs)
    info.build_s = time.perf_counter() - t0
    groups = ir.prunable_label_groups()
    info.groups, info.labels = len(groups), sum(g.size for g in groups)

    t0 = time.perf_counter()
    g = _gen(7)
    with LossAwareCriterion(ir) as collect:
        for _ in range(st.calib_batches):
            args, kwargs, y = bench.batch(g)
            bench.loss(collect(*args, **kwargs), y).backward()
    model.zero_grad(set_to_none=True)
    model.eval()
    info.calib_s = time.perf_counter() - t0
    info.total_score = total_score(ir)

    macs = MacsModel(ir)
    macs_fn = MacsLatency(case.example_inputs, case.example_kwargs)
    info.base_macs = float(macs.baseline())
    flop_base = macs_fn(model)
    if abs(flop_base - info.base_macs) > 1e-6 * info.base_macs:
        info.notes.append(f"MacsModel.baseline() {info.base_macs:.6g} != MacsLatency (FlopCounterMode) {flop_base:.6g}")
    log(f"IR {info.build_s:.1f}s, {info.groups} prunable groups, calibrated in {info.calib_s:.1f}s, "
        f"{info.base_macs / 1e9:.3f} GMACs")

    lut: LatencyLUT | None = None
    try:
        t0 = time.perf_counter()
        lut = LatencyLUT(ir, repeats=st.lut_repeats, warmup=1, num_threads=threads)
        info.lut_s = time.perf_counter() - t0
        info.lut = repr(lut)
        if lut.unmeasured:
            info.notes.append(f"LatencyLUT did not time {len(lut.unmeasured)} MAC node(s): {lut.unmeasured[:3]}")
    except Exception as exc:
        info.notes.append(f"LatencyLUT failed (measured targets use the default cost model): {full_error(exc)}")
    latency_fn = MeasuredLatency(case.example_inputs, case.example_kwargs, warmup=st.lat_warmup,
                                 repeats=st.lat_repeats, num_threads=threads)
    info.base_ms = statistics.median(latency_fn(model) for _ in range(3))
    log(f"LUT {info.lut_s or 0:.1f}s, baseline {info.base_ms:.2f} ms")

    tp = None
    if st.with_tp:
        try:
            tp = TPRunner(case, st)
        except Exception as exc:
            info.notes.append(f"Torch-Pruning set-up failed: {full_error(exc)}")
    reference = copy.deepcopy(model).eval()  # the A/A control of every timing session

    for target in targets:
        slims: dict[str, tuple[nn.Module, float]] = {}  # method -> (slim model, MACs fraction)
        budget = target * info.base_macs
        # ---------------------------------------------------------------- (a) MACs targets
        row = MacsRow(name, target, "pruning_ir knapsack")
        try:
            sel = KnapsackLabelSelector(budget, macs_fn, verbose=False)
            t0 = time.perf_counter()
            labels = sel.select(ir)
            row.select_s = time.perf_counter() - t0
            row.solver_s = sum(h["solver_s"] for h in sel.history)
            row.rounds = len(sel.history)
            row.macs_fraction = float(macs.cost(labels)) / info.base_macs
            row.kept = kept_score(ir, labels)
            slim = ir.prune(labels=labels).model.eval()
            row.flop_fraction = macs_fn(slim) / flop_base
            slims["pruning_ir knapsack"] = (slim, row.macs_fraction)
            ok = target * (1 - MACS_TOL) <= row.macs_fraction <= target
            if not ok:
                misses.append(f"{name} MACs {target}: knapsack reached {row.macs_fraction:.4f} of the MACs "
                              f"({row.macs_fraction / target:.4f} of the target; needs [{1 - MACS_TOL:.2f}, 1])")
            notes = solver_notes(sel.history)
            if abs(row.flop_fraction - row.macs_fraction) > 1e-6:
                notes.append(f"FlopCounterMode says {row.flop_fraction:.5f}")
            row.note = "; ".join(notes)
        except Exception as exc:
            row.note = f"error: {full_error(exc, 300)}"
            misses.append(f"{name} MACs {target}: knapsack failed: {short_error(exc, 200)}")
        macs_rows.append(row)

        for label, factory in (("pruning_ir global (ratio bisected)", GlobalScoreLabelSelector),
                               ("pruning_ir uniform (ratio bisected)", UniformLabelSelector)):
            row = MacsRow(name, target, label)
            try:
                t0 = time.perf_counter()
                labels, cost = bisect_ratio(ir, factory, budget, macs)
                row.select_s = time.perf_counter() - t0
                row.macs_fraction = cost / info.base_macs
                row.kept = kept_score(ir, labels)
                slims[label.split(" (")[0]] = (ir.prune(labels=labels).model.eval(), row.macs_fraction)
            except Exception as exc:
                row.note = f"error: {full_error(exc, 300)}"
            macs_rows.append(row)

        row = MacsRow(name, target, "pruning_ir binary search")
        try:
            bs = BinarySearchLatencyLabelSelector(budget, macs_fn)
            t0 = time.perf_counter()
            labels = bs.select(ir)
            row.select_s = time.perf_counter() - t0
            row.macs_fraction = float(macs.cost(labels)) / info.base_macs
            row.kept = kept_score(ir, labels)
        except Exception as exc:
            row.note = f"error: {full_error(exc, 300)}"
        macs_rows.append(row)

        if tp is not None:
            row = MacsRow(name, target, "Torch-Pruning MetaPruner (magnitude)")
            res = tp.search(target)
            row.select_s = res.seconds
            row.rounds = res.evals
            if res.model is not None:
                row.macs_fraction = row.flop_fraction = res.macs_fraction
                row.note = f"{res.config} config, pruning_ratio {res.ratio:.3f}; kept score n/a (not label-based)"
                slims["Torch-Pruning"] = (res.model, float(res.macs_fraction or 0.0))
            else:
                row.note = f"failed: {res.error}"
            macs_rows.append(row)
        here = [r for r in macs_rows if r.model == name and r.target == target and r.kept is not None]
        knap = next((r for r in here if r.method == "pruning_ir knapsack"), None)
        for r in here:
            if knap is not None and r is not knap and r.kept > knap.kept + 1e-9 * abs(knap.kept):  # type: ignore[operator]
                info.notes.append(f"MACs {target}: {r.method} keeps more score ({r.kept:.8g}) than the knapsack "
                                  f"({knap.kept:.8g}) within the same budget")
        log(f"MACs target {target}: done")

        # ---------------------------------------------------------------- (b) measured-latency targets
        lat_slims: list[tuple[LatRow, nn.Module]] = []
        functions: list[tuple[str, Callable[[nn.Module], float]]] = []
        if st.paired_rounds:
            functions.append((PAIRED, MeasuredLatency(case.example_inputs, case.example_kwargs, warmup=st.lat_warmup,
                                                      repeats=st.paired_rounds, num_threads=threads,
                                                      reference=reference, reference_ms=info.base_ms,
                                                      rel_precision=st.fn_precision,
                                                      max_repeats=max(st.fn_max_repeats, st.paired_rounds))))
        functions.append((MEASURED, latency_fn))
        for fn_name, fn in functions:
            lrow = LatRow(name, target, fn_name, base_ms=info.base_ms)
            try:
                sel = KnapsackLabelSelector(target * info.base_ms, fn, cost_model=lut,
                                            max_iterations=st.max_iterations, verbose=False, tolerance=0.03)
                t0 = time.perf_counter()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    labels = sel.select(ir)
                lrow.select_s = time.perf_counter() - t0
                lrow.rounds = len(sel.history)
                lrow.solver_s = sum(h["solver_s"] for h in sel.history)
                chosen = chosen_entry(sel.history)
                kept_now = kept_score(ir, labels)
                final = next((c for c in sel.confirmation if c["chosen"]), None)
                lrow.selector_ms = final["latency"] if final else None if chosen is None else chosen["latency"]
                t_ms = target * info.base_ms
                returned = [abs(h["kept_score"] - kept_now) <= 1e-12 * abs(kept_now) for h in sel.history]
                lrow.trace = " ".join(f"{h['latency'] / t_ms:.2f}{'*' if r else ''}"
                                      for h, r in zip(sel.history, returned, strict=True))
                lrow.confirmed = " ".join(f"{c['search_latency'] / t_ms:.2f}>{c['latency'] / t_ms:.2f}"
                                          f"{'*' if c['chosen'] else ''}" for c in sel.confirmation)
                lrow.fn_drift = fn(model) / info.base_ms
                lrow.macs_fraction = float(macs.cost(labels)) / info.base_macs
                lrow.kept = kept_score(ir, labels)
                if lut is not None:
                    lrow.lut_ratio = lut.cost(labels) / lut.baseline()
                lat_slims.append((lrow, ir.prune(labels=labels).model.eval()))
                notes = [str(w.message)[:150] for w in caught if w.category is RuntimeWarning]
                notes += solver_notes(sel.history)
                lrow.note = "; ".join(notes)
            except Exception as exc:
                lrow.note = f"error: {full_error(exc, 300)}"
                (misses if fn_name == PAIRED else info_misses).append(
                    f"{name} latency {target} ({fn_name}): knapsack failed: {short_error(exc, 200)}")
            lat_rows.append(lrow)
            log(f"latency target {target} ({fn_name}): selected in {lrow.select_s or 0:.1f}s ({lrow.rounds} rounds)")

        # ---------------------------------------------------------------- timing session
        methods = list(slims)
        models = [model, reference] + [slims[m][0] for m in methods] + [m for _, m in lat_slims]
        ratios, cis, done = interleaved(models, case, st.rounds, precision=st.eval_precision,
                                        max_rounds=st.eval_max_rounds)
        aa = ratios[1]
        for i, method in enumerate(methods):
            speed_rows.append(SpeedRow(name, target, method, slims[method][1], ratios[2 + i], aa))
        if tp is not None and "Torch-Pruning" not in slims:
            speed_rows.append(SpeedRow(name, target, "Torch-Pruning", note=macs_rows[-1].note))
        for k, (lrow, _) in enumerate(lat_slims):
            lrow.ratio = ratios[2 + len(methods) + k]
            lrow.ratio_ci = cis[2 + len(methods) + k]
            lrow.eval_rounds = done
            lrow.aa = aa
            if abs(lrow.ratio / target - 1) > LAT_TOL:
                miss = (f"{name} latency {target} ({lrow.function}): re-measured latency ratio {lrow.ratio:.3f} is "
                        f"{lrow.ratio / target:.3f} of the target (needs within {LAT_TOL:.0%}; A/A {aa:.3f} in the "
                        "same session)")
                (misses if lrow.function == PAIRED else info_misses).append(miss)
    if tp is not None and tp.errors:
        info.notes += [f"Torch-Pruning {c} configuration: {e}" for c, e in tp.errors.items()]
    info.seconds = time.perf_counter() - t_model
    log(f"done in {info.seconds:.0f}s")
    return info


# ----------------------------------------------------------------------------- formatting
def f3(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    ap.add_argument("--targets", default=",".join(map(str, TARGETS)), help="fractions of the baseline")
    ap.add_argument("--quick", action="store_true", help="fewer repeats, rounds and iterations")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1; 0 keeps torch's)")
    ap.add_argument("--no-tp", action="store_true", help="skip Torch-Pruning")
    ap.add_argument("--tp-timeout", type=float, default=30.0, help="seconds per Torch-Pruning prune (default 30)")
    ap.add_argument("--no-paired", action="store_true",
                    help="skip the measured-latency targets with the paired (drift-cancelling) MeasuredLatency")
    ap.add_argument("--out", default="latency_targets.md", help="file name under benchmarks/results/")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        sys.exit(f"unknown model(s) {unknown}; known: {', '.join(BENCHES)}")
    targets = [float(t) for t in args.targets.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    with_tp = not args.no_tp
    if with_tp:
        try:
            import torch_pruning  # noqa: F401
        except Exception as exc:
            print(f"torch-pruning not importable ({short_error(exc)}): comparison skipped", file=sys.stderr)
            with_tp = False
    st = Settings(calib_batches=2 if args.quick else 4, lut_repeats=3 if args.quick else 7,
                  lat_warmup=2 if args.quick else 3, lat_repeats=9 if args.quick else 21,
                  max_iterations=4 if args.quick else 8, rounds=15 if args.quick else 41,
                  eval_precision=0.0 if args.quick else 0.015, eval_max_rounds=15 if args.quick else 123,
                  fn_precision=0.02, fn_max_repeats=9 if args.quick else 168,
                  paired_rounds=0 if args.no_paired else (9 if args.quick else 21),
                  tp_evals=5 if args.quick else 8, tp_timeout=args.tp_timeout, with_tp=with_tp)

    t_start = time.perf_counter()
    env = environment()
    busy = busy_warning()
    if busy:
        print(busy, file=sys.stderr)
    macs_rows: list[MacsRow] = []
    lat_rows: list[LatRow] = []
    speed_rows: list[SpeedRow] = []
    misses: list[str] = []
    info_misses: list[str] = []
    infos: list[ModelInfo] = []
    for name in names:
        try:
            infos.append(run_model(name, targets, st, threads, macs_rows, lat_rows, speed_rows, misses,
                                   info_misses))
        except Exception as exc:
            infos.append(ModelInfo(name, "", notes=[f"model failed: {full_error(exc, 800)}"]))
            misses.append(f"{name}: the run failed: {short_error(exc, 200)}")
    total = time.perf_counter() - t_start
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    # ---------------------------------------------------------------- tables
    models_table = markdown_table(
        ("model", "params", "GMACs", "baseline ms", "#prunable groups", "#labels", "IR build s", "calibration s",
         "LatencyLUT build s", "model total s"),
        [(i.name, f"{i.params / 1e6:.2f}M", f"{i.base_macs / 1e9:.3f}", f"{i.base_ms:.2f}", i.groups, i.labels,
          f"{i.build_s:.1f}", f"{i.calib_s:.1f}", f3(i.lut_s, ".1f"), f"{i.seconds:.0f}") for i in infos])

    def score_cell(r: MacsRow) -> str:
        return "-" if r.kept is None else f"{r.kept:.6g}"

    totals = {i.name: i.total_score for i in infos}
    macs_table = markdown_table(
        ("model", "target", "method", "MACs fraction", "MACs / target", "kept score", "removed score",
         "removed / knapsack's", "select s", "solver s", "rounds", "notes"),
        [(r.model, r.target, r.method, f3(r.macs_fraction, ".4f"),
          f3(None if r.macs_fraction is None else r.macs_fraction / r.target, ".4f"), score_cell(r),
          "-" if r.kept is None else f"{totals[r.model] - r.kept:.4g}",
          removed_vs_knapsack(r, macs_rows, totals), f3(r.select_s, ".2f"), f3(r.solver_s, ".2f"),
          "-" if r.rounds is None else r.rounds, r.note) for r in macs_rows])
    lat_table = markdown_table(
        ("model", "target", "latency function", "baseline ms", "target ms", "selector's ms (returned)",
         "re-measured ratio (95% CI)", "timing rounds", "ratio / target", "A/A", "fn drift", "LUT-predicted ratio",
         "MACs fraction",
         "kept score", "rounds", "latency / target per round (* returned)", "confirmation: search > re-measured",
         "select s", "solver s", "notes"),
        [(r.model, r.target, r.function, f"{r.base_ms:.2f}", f"{r.target * r.base_ms:.2f}", f3(r.selector_ms, ".2f"),
          "-" if r.ratio is None or r.ratio_ci is None else f"{r.ratio:.3f} ± {r.ratio_ci * r.ratio:.3f}",
          "-" if r.eval_rounds is None else r.eval_rounds, f3(None if r.ratio is None else r.ratio / r.target),
          f3(r.aa), f3(r.fn_drift),
          f3(r.lut_ratio), f3(r.macs_fraction), "-" if r.kept is None else f"{r.kept:.6g}",
          "-" if r.rounds is None else r.rounds, r.trace, r.confirmed, f3(r.select_s, ".1f"), f3(r.solver_s, ".1f"),
          r.note) for r in lat_rows])
    speed_table = markdown_table(
        ("model", "target", "method", "MACs ratio", "latency ratio", "gap (latency - MACs)", "A/A ratio", "notes"),
        [(r.model, r.target, r.method, f3(r.macs_fraction), f3(r.latency_ratio),
          "-" if r.latency_ratio is None or r.macs_fraction is None else f"{r.latency_ratio - r.macs_fraction:+.3f}",
          f3(r.aa), r.note) for r in speed_rows])

    stat = (f"{st.rounds} rounds of adjacent pairs (each round times, in a shuffled order, every model back to "
            "back with the original, the model first in every other round)")
    doc = [
        "# Budget targets: KnapsackLabelSelector on MACs and on measured latency",
        "",
        f"Generated by `python benchmarks/latency_targets.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}` "
        f"on {time.strftime('%Y-%m-%d')} ({env}; load average {load_end:.1f} at the end). "
        f"**Run time {total:.0f} s ({total / 60:.1f} min).**",
        "",
    ]
    if busy:
        doc += [f"> {busy}.", ""]
    doc += [
        "Models (random initialisation, nothing downloaded):", "",
        *[f"- `{i.name}`: {i.describe}." for i in infos if i.describe], "",
        f"Scores: `LossAwareCriterion` calibrated on {st.calib_batches} random batches per model "
        f"({'; '.join(f'{i.name}: {i.loss_name}' for i in infos if i.loss_name)}). *Kept score* = sum of "
        "`ir.label_scores()` over the kept labels; *removed score* = total minus kept (the criterion's estimate "
        "of the loss increase, lower is better).", "",
        models_table, "",
        "## (a) MACs targets", "",
        "`KnapsackLabelSelector(target * baseline MACs, MacsLatency(...))` (evaluated from the IR). Global and "
        "uniform: their ratio bisected (30 steps) to the largest MACs <= the target. Binary search: "
        "`BinarySearchLatencyLabelSelector(target * baseline MACs, MacsLatency(...))`. Torch-Pruning: "
        "`MetaPruner(importance=MagnitudeImportance(p=2), ignored_layers=[output layer])`, `pruning_ratio` "
        f"searched (at most {st.tp_evals} prunes, {st.tp_timeout:.0f} s limit each) to the largest MACs <= the "
        "target; its MACs from `FlopCounterMode`. *MACs fraction* is from the IR (`MacsModel`); a note says "
        "when `FlopCounterMode` on the slim model disagrees. *rounds*: knapsack re-linearisation rounds / "
        "Torch-Pruning prunes. Target: knapsack MACs in "
        f"[{1 - MACS_TOL:.2f}, 1] x target.", "",
        macs_table, "",
        "## (b) Measured-latency targets", "",
        f"`KnapsackLabelSelector(target * baseline ms, fn, cost_model=LatencyLUT(ir, repeats={st.lut_repeats}), "
        f"max_iterations={st.max_iterations}, tolerance=0.03)` with two latency functions `fn`: **{PAIRED}**, "
        f"`MeasuredLatency(warmup={st.lat_warmup}, repeats={st.paired_rounds}, reference=<deep copy of the "
        f"original>, reference_ms=baseline, rel_precision={st.fn_precision}, max_repeats={st.fn_max_repeats})` "
        f"(each call times the candidate and the original back to back in {st.paired_rounds} pairs of alternating "
        "order, and more until the 95% interval of the median ratio is within "
        f"{st.fn_precision:.1%} of it or {st.fn_max_repeats} pairs, and returns baseline ms x the median per-pair "
        "ratio, so that a change of the machine's speed cancels: **the acceptance check**), and, for comparison, "
        f"**{MEASURED}**, `MeasuredLatency(warmup={st.lat_warmup}, repeats={st.lat_repeats})` (median of "
        "absolute ms). The baseline is the median of three absolute calls on the original. Before returning, "
        "the selector re-measures its best rounds side by side with the original (`confirmation_passes=2`); "
        "*confirmation* lists them as latency / target in the search > re-measured (* returned), and "
        "*selector's ms* is the returned one's re-measured latency. *fn drift* = the function's reading of the "
        "original after the search / baseline (how far the machine moved the function during the run: 1.0 "
        "for a drift-free function). *re-measured ratio* is slim / original from a separate session of "
        f"{stat}: the median ratio, with a deep copy of the original as A/A control; rounds go on "
        f"({st.rounds} at a time, at most {st.eval_max_rounds}) until every ratio's 95% interval (order "
        f"statistics, `median_ci`) is within {st.eval_precision:.1%} of it (*timing rounds*). "
        f"Target: re-measured ratio within {LAT_TOL:.0%} of the target fraction, for the {PAIRED} function.", "",
        lat_table, "",
        "## (c) Realised speed-up of the MACs-target models", "",
        f"Latency ratio = slim / original, the median ratio over {stat}; every model of the same model and target "
        "(the original's deep copy, every slim model of (a) and (b)) is in the same session. "
        "*A/A ratio* = deep copy / original in the same session: how far from 1.0 noise alone moves a ratio. "
        "Physical limit: latency ratio == MACs ratio (a positive gap is latency not saved).", "",
        speed_table, "",
        "## Targets", "",
    ]
    doc += [f"- MISSED {m}" for m in misses] or ["- all met"]
    doc.append("")
    if info_misses:
        doc += [f"Not targets (the comparison latency function, {MEASURED}):", "",
                *[f"- missed {m}" for m in info_misses], ""]
    notes = [f"- {i.name}: {n}" for i in infos for n in i.notes] + [f"- {i.name}: {i.lut}" for i in infos if i.lut]
    if notes:
        doc += ["## Notes", "", *notes, ""]
    text = "\n".join(doc)
    print(text)
    path = write_result(args.out, text)
    print(f"written {path}", file=sys.stderr)
    return 1 if misses else 0


def removed_vs_knapsack(r: MacsRow, rows: list[MacsRow], totals: dict[str, float]) -> str:
    """This row's removed score over the knapsack's at the same model and target (> 1: worse than knapsack)."""
    if r.kept is None:
        return "-"
    knap = next((k for k in rows if k.model == r.model and k.target == r.target and k.method == "pruning_ir knapsack"
                 and k.kept is not None), None)
    if knap is None:
        return "-"
    mine, theirs = totals[r.model] - r.kept, totals[r.model] - knap.kept  # type: ignore[operator]
    return "-" if theirs <= 0 else f"{mine / theirs:.3f}"


if __name__ == "__main__":
    sys.exit(main())
