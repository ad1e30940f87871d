"""Property test: pruning random CNN graphs is exactly equivalent to masking.

The property
------------
For a randomly generated CNN (built from a drawn *program*, see below) and a
random set of labels taken from random prunable label groups (never every label
of a group), ``verify_pruning(ir, labels)`` must report that the slim model
reproduces the original model with the removed labels' parameter entries masked
to zero: ``rep.exact`` must hold whenever ``rep.inexact_reasons`` is empty (a
report may only be inexact when the engine names a place where exactness is not
expected, e.g. a normalisation or softmax over a pruned axis). In addition:

* the slim model keeps the output shape, and both ``ir.lint()`` and
  ``pruned.lint()`` pass;
* the parameter count strictly decreases whenever labels are removed;
* removing no labels gives a model whose outputs are bit-identical
  (``torch.equal``) to the original's, and pruning never modifies the original.

Why
---
Hand-written zoo models test one coupling case at a time. Real architectures
compose them: a residual add feeds a concatenation whose parts are split again,
shuffled, gated and flattened into a linear layer. Channel coupling must be
propagated correctly through every such composition, and the only ground truth
that does not depend on the engine's own reasoning is the masking oracle: if a
coupled axis is missed, sliced at the wrong indices or in the wrong order, the
slim model either fails to run or differs from the masked original. The graphs
mix conv+BN+ReLU, residual adds (identity and 1x1 downsample), concatenation of
branches of different widths, ``torch.split``/``chunk``/slicing into parts
followed by per-part convs (re-concatenated, or added when the parts have equal
width), channel shuffle (view/transpose/view), grouped and depthwise convs,
SE-style broadcast gating and a head that flattens either after global pooling
or over C*H*W. None of these normalise over channels, so ``inexact_reasons``
is also expected to be empty.

Widths are distinct where possible and differ from the spatial sizes (9x11,
H != W) so that a mixed-up axis fails loudly; batch-norm layers get random
non-trivial running statistics and affine parameters so that slicing the wrong
entries changes the output. Models are tiny so that the 200 derandomised
examples run in well under three minutes on a 2-core CPU.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from pruning_ir import Label, PruningIR, verify_pruning

BATCH, H, W = 2, 9, 11
# channel widths: 3..16 minus the spatial sizes, so a confused axis cannot match by accident
WIDTHS = tuple(w for w in range(3, 17) if w not in (H, W))
MAX_BLOCKS = 5

Block = dict[str, Any]


# --------------------------------------------------------------------------- #
# program generation (plain data)
# --------------------------------------------------------------------------- #


class _Widths:
    """Draws widths, preferring ones not used yet in this program."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.used: set[int] = set()

    def new(self, candidates: tuple[int, ...] | list[int] = WIDTHS) -> int:
        fresh = [w for w in candidates if w not in self.used]
        w = self.draw(st.sampled_from(sorted(fresh or candidates)))
        self.used.add(w)
        return w

    def multiple_of(self, g: int) -> int:
        return self.new([w for w in WIDTHS if w % g == 0 and w > g] or [2 * g])


def _divisors(n: int) -> list[int]:
    return [d for d in range(2, n + 1) if n % d == 0]


def _chunk_sizes(c: int, n: int) -> list[int]:
    return [t.numel() for t in torch.arange(c).chunk(n)]


def _conv_block(draw: st.DrawFn, c: int, widths: _Widths) -> Block:
    kind = draw(st.sampled_from(["plain", "grouped", "depthwise"]))
    proper = [d for d in _divisors(c) if d < c]  # groups of more than one channel each
    groups = 1
    if kind == "grouped" and proper:
        groups = draw(st.sampled_from(proper))
        cout = widths.multiple_of(groups)
    elif kind == "depthwise":
        groups = c
        cout = c * draw(st.sampled_from([1, 2] if c <= 16 else [1]))  # channel multiplier
    else:
        cout = widths.new()
    return {"op": "conv", "cin": c, "cout": cout, "k": draw(st.sampled_from([1, 3])), "groups": groups,
            "bias": draw(st.booleans()), "bn": draw(st.booleans()), "relu": draw(st.booleans())}


def _res_block(draw: st.DrawFn, c: int, widths: _Widths) -> Block:
    down = draw(st.booleans())
    return {"op": "res", "cin": c, "mid": widths.new(), "cout": widths.new() if down else c, "down": down,
            "k": draw(st.sampled_from([1, 3]))}


def _branch_block(draw: st.DrawFn, c: int, widths: _Widths) -> Block:
    n = draw(st.integers(2, 3))
    return {"op": "branch_cat", "cin": c, "widths": [widths.new() for _ in range(n)],
            "k": draw(st.sampled_from([1, 3]))}


def _split_block(draw: st.DrawFn, c: int, widths: _Widths) -> Block:
    method = draw(st.sampled_from(["split", "chunk", "slice"]))
    if method == "chunk":
        parts = _chunk_sizes(c, draw(st.integers(2, min(3, c))))
    else:
        cut = sorted(draw(st.sets(st.integers(1, c - 1), min_size=1, max_size=min(2, c - 1))))
        bounds = [0, *cut, c]
        parts = [b - a for a, b in itertools.pairwise(bounds)]
    equal = len(set(parts)) == 1
    merges = ["cat", "cat_identity", "add"] + (["add_raw"] if equal else [])
    merge = draw(st.sampled_from(merges))
    if merge == "add":
        w = widths.new()
        outs = [w] * len(parts)
    elif merge == "add_raw":
        outs = list(parts)
    else:
        outs = [widths.new() for _ in parts]
        if merge == "cat_identity":
            outs[0] = parts[0]
    return {"op": "split", "cin": c, "method": method, "parts": parts, "merge": merge, "outs": outs,
            "k": draw(st.sampled_from([1, 3]))}


def _shuffle_block(draw: st.DrawFn, c: int, widths: _Widths) -> Block:
    g = draw(st.sampled_from([d for d in _divisors(c) if d < c]))
    return {"op": "shuffle", "cin": c, "g": g, "how": draw(st.sampled_from(["view", "reshape"]))}


def _se_block(draw: st.DrawFn, c: int, widths: _Widths) -> Block:
    return {"op": "se", "cin": c, "mid": widths.new(), "gate": draw(st.sampled_from(["sigmoid", "hardsigmoid"]))}


def _out_width(b: Block) -> int:
    op = b["op"]
    if op in ("conv", "res"):
        return b["cout"]
    if op == "branch_cat":
        return sum(b["widths"])
    if op == "split":
        return b["outs"][0] if b["merge"] in ("add", "add_raw") else sum(b["outs"])
    return b["cin"]  # shuffle, se


@st.composite
def programs(draw: st.DrawFn) -> tuple[int, list[Block], int]:
    """``(input channels, program, seed)``; the program is a list of block dicts ending in a head."""
    widths = _Widths(draw)
    c0 = widths.new([3, 4, 5])
    c = c0
    prog: list[Block] = [_conv_block(draw, c, widths)]  # a stem, so the input is never split directly
    c = _out_width(prog[-1])
    for _ in range(draw(st.integers(1, MAX_BLOCKS))):
        makers = [_conv_block, _res_block, _branch_block, _se_block, _split_block]
        if any(d < c for d in _divisors(c)):
            makers.append(_shuffle_block)
        prog.append(draw(st.sampled_from(makers))(draw, c, widths))
        c = _out_width(prog[-1])
    head = draw(st.sampled_from(["gap", "flatten", "none"]))
    prog.append({"op": "head", "cin": c, "kind": head, "out": widths.new()})
    return c0, prog, draw(st.integers(0, 2**16))


# --------------------------------------------------------------------------- #
# the interpreter
# --------------------------------------------------------------------------- #


def _cbr(cin: int, cout: int, k: int, groups: int = 1, bias: bool = False, bn: bool = True,
         relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=bias)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _make_block(b: Block) -> nn.Module:
    op, c = b["op"], b["cin"]
    if op == "conv":
        return _cbr(c, b["cout"], b["k"], b["groups"], b["bias"], b["bn"], b["relu"])
    if op == "res":
        d = nn.ModuleDict({"body": nn.Sequential(_cbr(c, b["mid"], b["k"]),
                                                 _cbr(b["mid"], b["cout"], b["k"], relu=False))})
        if b["down"]:
            d["short"] = _cbr(c, b["cout"], 1, relu=False)
        return d
    if op == "branch_cat":
        return nn.ModuleList(_cbr(c, w, b["k"]) for w in b["widths"])
    if op == "split":
        if b["merge"] == "add_raw":
            return nn.ModuleList([_cbr(b["parts"][0], b["outs"][0], 1)])  # one conv after the sum
        convs = [_cbr(p, o, b["k"]) for p, o in zip(b["parts"], b["outs"])]
        if b["merge"] == "cat_identity":
            convs[0] = nn.Identity()
        return nn.ModuleList(convs)
    if op == "shuffle":
        return nn.Identity()
    if op == "se":
        return nn.Sequential(nn.Conv2d(c, b["mid"], 1), nn.ReLU(), nn.Conv2d(b["mid"], c, 1),
                             nn.Sigmoid() if b["gate"] == "sigmoid" else nn.Hardsigmoid())
    if op == "head":
        if b["kind"] == "gap":
            return nn.Linear(c, b["out"])
        if b["kind"] == "flatten":
            return nn.Linear(c * H * W, b["out"])
        return nn.Identity()
    raise ValueError(op)


class ProgramNet(nn.Module):
    """Runs a program (a list of plain block dicts) with one submodule per block."""

    def __init__(self, program: list[Block]) -> None:
        super().__init__()
        self.program = [dict(b) for b in program]
        self.blocks = nn.ModuleList(_make_block(b) for b in program)

    def forward(self, x: Tensor) -> Tensor:
        for b, m in zip(self.program, self.blocks):
            x = self._run(b, m, x)
        return x

    @staticmethod
    def _run(b: Block, m: Any, x: Tensor) -> Tensor:
        op = b["op"]
        if op == "conv":
            return m(x)
        if op == "res":
            short = m["short"](x) if b["down"] else x
            return torch.relu(m["body"](x) + short)
        if op == "branch_cat":
            return torch.cat([conv(x) for conv in m], dim=1)
        if op == "split":
            if b["method"] == "split":
                parts = list(torch.split(x, b["parts"], dim=1))
            elif b["method"] == "chunk":
                parts = list(torch.chunk(x, len(b["parts"]), dim=1))
            else:
                starts = [sum(b["parts"][:i]) for i in range(len(b["parts"]))]
                parts = [x[:, s:s + p] for s, p in zip(starts, b["parts"])]
            if b["merge"] == "add_raw":
                return m[0](sum(parts[1:], parts[0]))
            outs = [conv(p) for conv, p in zip(m, parts)]
            if b["merge"] == "add":
                return sum(outs[1:], outs[0])
            return torch.cat(outs, dim=1)
        if op == "shuffle":
            n, c, h, w = x.shape
            g = b["g"]
            y = x.view(n, g, c // g, h, w).transpose(1, 2)
            return y.contiguous().view(n, c, h, w) if b["how"] == "view" else y.reshape(n, c, h, w)
        if op == "se":
            return x * m(x.mean((2, 3), keepdim=True))
        if op == "head":
            if b["kind"] == "gap":
                return m(x.mean((2, 3)))
            if b["kind"] == "flatten":
                return m(x.flatten(1))
            return m(x)
        raise ValueError(op)


@torch.no_grad()
def build(c0: int, program: list[Block], seed: int) -> tuple[ProgramNet, Tensor]:
    """The eval-mode model of ``program`` (random non-trivial BN stats) and its input."""
    torch.manual_seed(seed)
    model = ProgramNet(program)
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.normal_(0.0, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.uniform_(0.5, 1.5).mul_(torch.randint(0, 2, mod.weight.shape) * 2 - 1)
            mod.bias.normal_(0.0, 0.5)
    return model.eval(), torch.randn(BATCH, c0, H, W)


# --------------------------------------------------------------------------- #
# the property
# --------------------------------------------------------------------------- #


pytestmark = pytest.mark.usefixtures("one_thread")


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@st.composite
def _labels(draw: st.DrawFn, ir: PruningIR) -> list[Label]:
    """Labels from a random subset of prunable groups, never a whole group."""
    groups = ir.prunable_label_groups()
    if not groups:
        return []
    some_groups = st.lists(st.sampled_from(groups), unique_by=lambda g: g.gid, min_size=1, max_size=4)
    chosen = draw(some_groups)
    labels: list[Label] = []
    for g in chosen:
        labs = ir.labels(g)
        labels += draw(st.lists(st.sampled_from(labs), unique=True, min_size=1, max_size=len(labs) - 1))
    return labels


@settings(max_examples=200, deadline=None, derandomize=True, print_blob=False, report_multiple_bugs=False,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(spec=programs(), data=st.data())
def test_prune_equals_mask_on_random_graphs(spec: tuple[int, list[Block], int], data: st.DataObject) -> None:
    c0, program, seed = spec
    model, x = build(c0, program, seed)
    with torch.no_grad():
        y = model(x)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    ir = PruningIR(model, example_inputs=(x,))
    ir.lint()

    # removing nothing changes nothing, bit for bit
    with torch.no_grad():
        assert torch.equal(ir.prune(labels=[]).model(x), y)

    labels = data.draw(_labels(ir), label="labels")
    rep = verify_pruning(ir, labels)
    assert rep.exact or rep.inexact_reasons, (
        f"slim != masked (max |diff| {rep.max_abs_diff:.3g}, max |ref| {rep.max_reference:.3g}) "
        f"with no reason given, for labels {labels}"
    )
    # no block normalises or takes a softmax over channels: nothing should be reported inexact
    assert not rep.inexact_reasons, rep.inexact_reasons

    pruned = ir.prune(labels=labels)
    pruned.lint()
    ir.lint()
    with torch.no_grad():
        out = pruned.model(x)
        assert out.shape == y.shape
        # pruning never touches the original model
        assert torch.equal(model(x), y)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    if labels:
        assert rep.params_after < rep.params_before
        assert _n_params(pruned.model) < _n_params(model)
    else:
        assert _n_params(pruned.model) == _n_params(model)
