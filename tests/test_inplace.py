"""``prune(inplace=True)``: the user's own model becomes the slim model the copy path would give,
whatever its modules hold the parameters in; and a prune that fails leaves it as it was."""

from __future__ import annotations

import collections
import functools
import random
import types
from dataclasses import dataclass

import pytest
import torch
from checks import state_hash
from torch import nn

from pruning_ir import PruningIR, verify_pruning
from pruning_ir.errors import PruningIRError


@dataclass
class Holder:
    w: torch.Tensor


class Held(nn.Module):
    """``fc1``'s weight held again in every way a module's attributes can hold it: a nested list,
    a tuple reached from two attributes, a dataclass, a namespace, a dict keyed by the tensor, a
    set; forward reads each of them."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 3)
        w = self.fc1.weight
        pair = (w, 1.0)
        self.nested = [[w]]
        self.pair_a, self.pair_b = pair, [pair]
        self.obj = Holder(w)
        self.ns = types.SimpleNamespace(inner={"w": w})
        self.scale = {w: 2.0}
        self.bag = {w}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ws = [self.nested[0][0], self.pair_a[0], self.pair_b[0][0], self.obj.w, self.ns.inner["w"],
              next(iter(self.scale)), next(iter(self.bag))]
        h = sum(torch.nn.functional.linear(x, w) for w in ws) / len(ws) + self.fc1.bias
        return self.fc2(h.relu() * self.scale[self.fc1.weight])


def _twins() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    a = Held()
    b = Held()
    b.load_state_dict(a.state_dict())
    return a, b, torch.randn(2, 4)


def test_inplace_slices_every_reference_as_the_copy_does() -> None:
    # oracle: the copy path's slim model (its module-tree copy maps every reference) on new inputs
    copied, model, x = _twins()
    ir_c = PruningIR(copied, example_inputs=(x,))
    ir_i = PruningIR(model, example_inputs=(x,))
    # a random selection over every prunable group, all pruned together
    rng = random.Random(3)
    pick = lambda ir: [lab for g in ir.prunable_label_groups()  # noqa: E731
                       for lab in rng.sample(ir.labels(g), 3)]
    labels_c = pick(ir_c)
    rng.seed(3)
    labels_i = pick(ir_i)
    assert verify_pruning(ir_c, labels_c).max_abs_diff < 1e-5  # the copy path itself: the masked original
    slim_c = ir_c.prune(labels=labels_c).model
    slim_i = ir_i.prune(labels=labels_i, inplace=True).model
    assert slim_i is model
    w = model.fc1.weight
    assert w.shape == (5, 4)
    assert model.nested[0][0] is w and model.pair_a[0] is w and model.pair_b[0] is model.pair_a
    assert model.obj.w is w and model.ns.inner["w"] is w and w in model.scale and w in model.bag
    y = torch.randn(5, 4)  # another batch size
    assert torch.allclose(slim_c(y), slim_i(y), atol=1e-6)
    for m in (slim_c, slim_i):  # training mode, and the gradients of a backward pass
        m.train()
        m(y).sum().backward()
    assert torch.allclose(slim_c.fc1.weight.grad, slim_i.fc1.weight.grad, atol=1e-6)
    assert torch.allclose(slim_c.fc2.weight.grad, slim_i.fc2.weight.grad, atol=1e-6)


@dataclass(frozen=True)
class FrozenKey:
    w: torch.Tensor


class Slotted:
    __slots__ = ("w",)

    def __init__(self, w: torch.Tensor) -> None:
        self.w = w


class TaggedDict(dict):  # type: ignore[type-arg]
    tag = "x"


class HeldMore(nn.Module):
    """More holders (found in review): a ``__slots__`` object, a ``functools.partial``, a dict
    subclass, a deque, a module outside the tree that shares the weight, a frozen dataclass as a
    dict key, nesting 80 lists deep, a tuple in a cycle, and a list that also holds the unsliced
    ``fc2`` bias (which must stay that very parameter)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 3)
        w = self.fc1.weight
        self.slotted = Slotted(w)
        self.part = functools.partial(torch.nn.functional.linear, weight=w)
        self.tagged = TaggedDict(w=w)
        self.queue = collections.deque([w])
        outside = nn.Linear(4, 8)
        outside.weight = w
        self.outside = [outside]
        self.keyed = {FrozenKey(w): 1.0}
        deep: list[object] = [w]
        for _ in range(80):
            deep = [deep]
        self.deep = deep
        loop: list[object] = []
        pair = (loop, w)
        loop.append(pair)
        self.pair = pair
        self.both = [w, self.fc2.bias]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deep = self.deep
        while isinstance(deep, list) and len(deep) == 1 and isinstance(deep[0], list):
            deep = deep[0]
        ws = [self.slotted.w, self.tagged["w"], self.queue[0], self.outside[0].weight, next(iter(self.keyed)).w,
              deep[0], self.pair[0][0][1], self.both[0]]
        h = sum(torch.nn.functional.linear(x, w) for w in ws) + self.part(x)
        return torch.nn.functional.linear((h / 9 + self.fc1.bias).relu(), self.fc2.weight, self.both[1])


def test_inplace_handles_what_deepcopy_handles() -> None:
    # oracle: the copy path's slim model (deepcopy semantics) on new inputs
    torch.manual_seed(0)
    copied = HeldMore()
    model = HeldMore()
    model.load_state_dict(copied.state_dict())
    x = torch.randn(2, 4)
    ir_c, ir_i = PruningIR(copied, example_inputs=(x,)), PruningIR(model, example_inputs=(x,))
    pick = lambda ir: ir.labels(next(g for g in ir.label_groups() if g.size == 8))[1:4]  # noqa: E731
    slim_c = ir_c.prune(labels=pick(ir_c)).model
    bias = model.fc2.bias
    slim_i = ir_i.prune(labels=pick(ir_i), inplace=True).model
    assert slim_i is model and model.fc1.weight.shape == (5, 4)
    assert model.both[1] is bias is model.fc2.bias and model.both[0] is model.fc1.weight
    assert model.slotted.w is model.fc1.weight and model.outside[0].weight is model.fc1.weight
    y = torch.randn(5, 4)
    assert torch.allclose(slim_c(y), slim_i(y), atol=1e-6)


class Recorder:
    """A forward hook object that holds the weight (the user's; it must stay registered and callable)."""

    def __init__(self, w: torch.Tensor) -> None:
        self.w = w
        self.calls = 0

    def __call__(self, m: nn.Module, args: object, out: torch.Tensor) -> None:
        self.calls += 1


class Aliased(nn.Module):
    """A buffer held again as a plain tensor attribute, a dict shared by an attribute that reaches a
    sliced tensor and one that does not."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 3)
        self.register_buffer("shift", torch.linspace(0, 1, 8))
        self.alias = self.shift
        self.stats = {"n": 0}
        self.info = {"stats": self.stats, "w": self.fc1.weight}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.info["stats"]["n"] += 1
        h = self.fc1(x) + torch.nn.functional.linear(x, self.info["w"])
        return self.fc2(h.relu() + self.alias)


class Counter:
    """A forward hook object that holds no weight (the user's: it must stay registered and called)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, m: nn.Module, args: object, out: torch.Tensor) -> None:
        self.calls += 1


def test_inplace_keeps_sharing_hooks_and_plain_tensor_attributes() -> None:
    # oracle: the copy path's slim model; the objects that reach no sliced tensor (the shared dict,
    # the hook dict, a hook object without weights) are the user's own after the prune, and a hook
    # object that holds the weight holds the slim one (as the copy path's copy of it does)
    torch.manual_seed(0)
    copied, model = Aliased(), Aliased()
    model.load_state_dict(copied.state_dict())
    x = torch.randn(2, 4)
    for m in (copied, model):
        m.fc1.register_forward_hook(Recorder(m.fc1.weight))
    counter = Counter()
    handle = model.fc1.register_forward_hook(counter)
    hooks, stats = model.fc1._forward_hooks, model.stats
    ir_c, ir_i = PruningIR(copied, example_inputs=(x,)), PruningIR(model, example_inputs=(x,))
    pick = lambda ir: ir.labels(next(g for g in ir.label_groups() if g.size == 8))[1:4]  # noqa: E731
    slim_c = ir_c.prune(labels=pick(ir_c)).model
    ir_i.prune(labels=pick(ir_i), inplace=True)
    assert model.alias is model.shift and model.alias.shape == (5,)
    assert model.stats is stats and model.info["stats"] is stats and model.info["w"] is model.fc1.weight
    y = torch.randn(5, 4)
    assert torch.allclose(slim_c(y), model(y), atol=1e-6)
    assert model.fc1._forward_hooks is hooks
    recorder = next(h for h in hooks.values() if isinstance(h, Recorder))
    assert recorder.w is model.fc1.weight
    calls = counter.calls
    model(y)
    assert counter.calls == calls + 1
    handle.remove()
    assert counter not in model.fc1._forward_hooks.values()


class HookAlias(nn.Module):
    """A plain attribute that is a submodule's hook dict."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 3)
        self.hooks = self.fc2._forward_hooks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x).relu())


def test_tracing_leaves_no_hook_in_a_hook_dict_held_as_an_attribute() -> None:
    # found in review: the trace saved plain attributes after installing its hooks and put the
    # hook back into the aliased dict when it restored them; oracle: the model as before
    torch.manual_seed(0)
    model = HookAlias()
    x = torch.randn(2, 4)
    out = model(x)
    ir = PruningIR(model, example_inputs=(x,))
    assert not model.fc2._forward_hooks and model.hooks is model.fc2._forward_hooks
    assert torch.equal(model(x), out)
    ir.prune(labels=ir.labels(next(g for g in ir.label_groups() if g.size == 8))[:2], inplace=True)
    assert model.hooks is model.fc2._forward_hooks and model(x).shape == (2, 3)


def test_failed_inplace_prune_puts_back_nested_references() -> None:
    _, model, x = _twins()
    ir = PruningIR(model, example_inputs=(x,), probe=False)
    before, out, w = state_hash(model), model(x), model.fc1.weight
    refs = (model.nested, model.pair_a, model.pair_b, model.obj, model.ns.inner, model.scale, model.bag)

    def refuse(m: nn.Module, args: tuple[torch.Tensor]) -> None:
        if m.fc1.weight.shape[0] != 8:
            raise RuntimeError("width changed")

    model.register_forward_pre_hook(refuse)
    with pytest.raises(PruningIRError, match="width changed"):
        ir.prune(labels=ir.labels(next(g for g in ir.label_groups() if g.size == 8))[:2], inplace=True)
    assert state_hash(model) == before and model.fc1.weight is w
    assert (model.nested, model.pair_a, model.pair_b, model.obj, model.ns.inner, model.scale, model.bag) == refs
    assert model.nested[0][0] is w and model.pair_a[0] is w and model.pair_b[0][0] is w
    assert model.obj.w is w and model.ns.inner["w"] is w and w in model.scale and w in model.bag
    assert torch.equal(model(x), out)


class Split(nn.Module):
    """A literal split of the hidden width (patched at run time once pruned), and a width check a
    second prune trips."""

    limit = 0

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if h.shape[1] < self.limit:
            raise RuntimeError("too narrow")
        a, b = torch.split(h, [4, 4], dim=1)
        return self.fc2(a * b)


def test_failed_second_inplace_prune_keeps_the_first_prunes_patch() -> None:
    torch.manual_seed(0)
    model = Split()
    x = torch.randn(2, 4)
    ir = PruningIR(model, example_inputs=(x,))
    g = next(g for g in ir.label_groups() if g.size == 4 and g.prunable)  # the halves, paired by a * b
    once = ir.prune(labels=ir.labels(g)[:1], inplace=True)
    assert model.fc1.weight.shape == (6, 4)
    before, out = state_hash(model), model(x)
    Split.limit = 6
    try:
        g2 = next(g for g in once.label_groups() if g.size == 3 and g.prunable)
        with pytest.raises(PruningIRError, match="too narrow"):
            once.prune(labels=once.labels(g2)[:1], inplace=True)
    finally:
        Split.limit = 0
    assert state_hash(model) == before
    assert torch.equal(model(x), out)  # the first prune's split sizes, not the refused second's


def test_failed_inplace_prune_puts_back_a_swapped_module_class() -> None:
    class Attn(nn.Module):
        check = False

        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
            self.out = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.mha(x, x, x, need_weights=False)[0]
            if self.check and h.shape[-1] != 8:
                raise RuntimeError("width changed")
            return self.out(h)

    torch.manual_seed(0)
    model = Attn().eval()
    x = torch.randn(2, 5, 8)
    ir = PruningIR(model, example_inputs=(x,), probe=False)
    cls, before, out = type(model.mha), state_hash(model), model(x)
    groups = [g for g in ir.prunable_label_groups() if g.size in (2, 8)]
    assert groups
    Attn.check = True
    with pytest.raises(PruningIRError):
        ir.prune(labels=[lab for g in groups for lab in ir.labels(g)[:1]], inplace=True)
    assert type(model.mha) is cls and state_hash(model) == before
    assert torch.equal(model(x), out)


class Link:
    def __init__(self, nxt: Link | None) -> None:
        self.nxt = nxt


class Chained(nn.Module):
    """Holds a linked list of 5000 plain objects (as a graph's nodes link to each other)."""

    def __init__(self, chain: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 3)
        head = None
        for _ in range(5000 if chain else 0):
            head = Link(head)
        self.links = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x).relu())


def test_inplace_prune_of_a_model_holding_a_long_linked_structure() -> None:
    # walking what the modules hold must not recurse once per link (5000 > Python's recursion
    # limit). Oracle: the copy path's prune of the same weights without the chain
    torch.manual_seed(0)
    model, twin = Chained(chain=True), Chained(chain=False)
    twin.load_state_dict(model.state_dict())
    x = torch.randn(2, 4)
    ir = PruningIR(model, example_inputs=(x,), probe=False)  # the probe deep-copies the chain: too deep
    ir_twin = PruningIR(twin, example_inputs=(x,), probe=False)
    pick = lambda ir: ir.labels(next(g for g in ir.label_groups() if g.size == 8))[:2]  # noqa: E731
    expected = ir_twin.prune(labels=pick(ir_twin)).model(x)
    assert torch.allclose(ir.prune(labels=pick(ir), inplace=True).model(x), expected, atol=1e-6)
    assert model.fc1.weight.shape == (6, 4)


def test_tracing_keeps_a_forward_set_on_a_stock_attention_instance() -> None:
    # found in review: the trace put back the user's instance-level forward of an
    # nn.MultiheadAttention (a wrapper, as accelerate sets) and then deleted it with its own
    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
            self.out = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.mha(x, x, x, need_weights=False)[0])

    torch.manual_seed(0)
    model = Attn().eval()
    wrapper = functools.partial(nn.MultiheadAttention.forward, model.mha)
    model.mha.forward = wrapper  # type: ignore[method-assign]
    x = torch.randn(2, 5, 8)
    out = model(x)
    PruningIR(model, example_inputs=(x,))
    assert model.mha.__dict__.get("forward") is wrapper
    assert torch.equal(model(x), out)
