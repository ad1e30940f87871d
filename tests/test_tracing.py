"""Tracing options: leaf modules, soft tracing, train mode, keyword inputs."""

from __future__ import annotations

import pytest
import torch
from checks import check_battery, state_hash
from torch import nn
from toy_zoo import TOY_CASES

from pruning_ir import PruningIR, UniformLabelSelector, verify_pruning


class Mlp(nn.Module):
    """fc1 (5 -> 12) -> ReLU -> fc2 (12 -> 7): one prunable group of 12."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 12)
        self.fc2 = nn.Linear(12, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class Opaque(nn.Module):
    """A module with its own parameters, kept opaque as a leaf."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(12, 12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


class WithOpaque(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 12)
        self.mid = Opaque()
        self.fc2 = nn.Linear(12, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.mid(self.fc1(x)))


def test_leaf_module_without_handler_is_unprunable_and_reported() -> None:
    model = WithOpaque().eval()
    x = (torch.randn(3, 5),)
    assert [g.size for g in PruningIR(model, example_inputs=x).prunable_label_groups()] == [12, 12]
    ir = PruningIR(model, example_inputs=x, leaf_modules=[Opaque])
    assert ir.prunable_label_groups() == []
    assert "leaf module without a handler" in ir.report()
    ir_instance = PruningIR(model, example_inputs=x, leaf_modules=[model.mid])
    assert ir_instance.prunable_label_groups() == []


def test_linear_leaf_has_a_handler() -> None:
    """nn.Linear kept opaque still couples its in/out features: same groups as traced."""
    model = Mlp().eval()
    x = (torch.randn(3, 5),)
    ir = PruningIR(model, example_inputs=x, leaf_modules=[nn.Linear])
    assert [g.size for g in ir.prunable_label_groups()] == [12]
    labels = UniformLabelSelector(0.5).select(ir)
    assert verify_pruning(ir, labels).exact


def test_train_mode_tracing_does_not_touch_running_stats() -> None:
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3)).train()
    before = state_hash(model)
    PruningIR(model, example_inputs=(torch.randn(2, 3, 8, 9),))
    assert state_hash(model) == before


def test_keyword_inputs() -> None:
    class Kw(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mlp = Mlp()

        def forward(self, *, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
            return self.mlp(x) * scale

    model = Kw().eval()
    ir = PruningIR(model, example_inputs={"x": torch.randn(3, 5)}, example_kwargs={"scale": 2.0})
    assert [g.size for g in ir.prunable_label_groups()] == [12]
    check_battery(model, (), {"x": torch.randn(3, 5), "scale": 2.0})


def test_meta_outputs_from_the_cache_are_what_the_meta_kernels_give() -> None:
    """The recorder answers functional ops on meta tensors from a cache of output metadata: the
    second call of an op gives tensors of the shapes, strides and dtypes the meta kernel gave (the
    oracle: the kernel itself); ops that write or alias, calls on other devices and factory ops
    (their device is their own) run for real."""
    from pruning_ir._trace.meta import META_OUTPUTS as _META_OUTPUTS
    from pruning_ir._trace.meta import meta_call as _meta_call

    _META_OUTPUTS.clear()  # a cache shared by the whole process: start from nothing
    aten = torch.ops.aten
    x = torch.empty(2, 8, 5, 5, device="meta").to(memory_format=torch.channels_last)
    w, b = torch.empty(8, device="meta"), torch.empty(8, device="meta")
    calls = [
        (aten._native_batch_norm_legit_no_training.default, (x, w, b, w, b, 0.1, 1e-5), {}),
        (aten.native_batch_norm.default, (x, w, b, w, b, False, 0.1, 1e-5), {}),
        (aten.add.Tensor, (x, x), {}),
        (aten.convolution.default, (x, torch.empty(4, 8, 3, 3, device="meta"), None, [1, 1], [1, 1], [1, 1],
                                    False, [0, 0], 1), {}),
        (aten.split_with_sizes.default, (x, [3, 5], 1), {}),
        (aten.mean.dim, (x, [2, 3], True), {}),
        (aten._to_copy.default, (x,), {"dtype": torch.float16}),
    ]
    for func, args, kwargs in calls:
        want = func(*args, **kwargs)
        for _ in range(2):  # the first call fills the cache (if the op qualifies), the second reads it
            got = _meta_call(func, args, kwargs)
            assert type(got) is type(want), func
            flat_w = [want] if isinstance(want, torch.Tensor) else list(want)
            flat_g = [got] if isinstance(got, torch.Tensor) else list(got)
            assert [(t.shape, t.stride(), t.dtype, t.device.type) for t in flat_g] == \
                [(t.shape, t.stride(), t.dtype, t.device.type) for t in flat_w], func
    cached = {key[0] for key in _META_OUTPUTS}
    assert {aten.convolution.default, aten.add.Tensor} <= cached
    # batch norm is answered by its shape rule (equal to the kernel above), so it needs no cache entry
    assert aten._native_batch_norm_legit_no_training.default not in cached
    assert aten.split_with_sizes.default not in cached  # its outputs are views of its input
    y = torch.empty(3, 4, device="meta")
    assert _meta_call(aten.add_.Tensor, (y, y), {}) is y  # in place: the op itself runs
    v = _meta_call(aten.view.default, (y, [12]), {})
    assert v._base is y  # a view of its input, not a fresh tensor
    for _ in range(2):  # a factory op asked for CPU tensors gets CPU tensors
        assert _meta_call(aten.zeros.default, ([2, 3],), {"device": torch.device("cpu")}).device.type == "cpu"
    cpu = torch.ones(2, 3)
    assert torch.equal(_meta_call(aten.add.Tensor, (cpu, cpu), {}), cpu * 2)  # real tensors are computed
    i = torch.empty(4, dtype=torch.int32, device="meta")
    before = torch.get_default_dtype()
    try:  # integer division promotes to the default dtype: it is part of the key
        for dtype in (torch.float32, torch.float64, torch.float32):
            torch.set_default_dtype(dtype)
            assert _meta_call(aten.div.Tensor, (i, i), {}).dtype == dtype
    finally:
        torch.set_default_dtype(before)
    for _ in range(2):  # an output that leaves meta is never made from the cache
        assert _meta_call(aten.zeros_like.default, (y,), {"device": torch.device("cpu")}).device.type == "cpu"
        # ops that share their input's storage without an alias annotation are not cached either
        u = _meta_call(aten._unsafe_view.default, (y, [12]), {})
        assert u.untyped_storage()._cdata == y.untyped_storage()._cdata


@pytest.mark.parametrize("name", sorted(TOY_CASES))
def test_to_fx_replays_the_traced_call(name: str) -> None:
    """Trace fidelity: ``ir.to_fx()`` run on the example call's tensors returns exactly what the
    model returns (stock ``nn.MultiheadAttention`` run through the explicit forward the trace uses;
    the stock one's fused kernels round differently)."""
    from torch.utils import _pytree as pytree

    from pruning_ir._trace.run import flat_tensors
    from pruning_ir.modules import explicit_forward, traces_explicitly

    model, args = TOY_CASES[name]()
    ir = PruningIR(model, example_inputs=args, probe=False)
    gm = ir.to_fx()
    assert isinstance(gm, torch.fx.GraphModule)
    assert all(n.op in ("placeholder", "get_attr", "call_function", "call_module", "output") for n in gm.graph.nodes)
    for m in model.modules():
        if traces_explicitly(m):
            m.forward = explicit_forward(m)
    with torch.no_grad():
        want = flat_tensors(model(*args))
        got = list(gm(*[t for t in pytree.tree_leaves(args) if isinstance(t, torch.Tensor)]))
    assert len(got) == len(want) > 0
    for a, b in zip(want, got, strict=True):
        assert torch.equal(a, b)
    assert {id(p) for p in gm.parameters()} <= {id(p) for p in model.parameters()}  # shared, not copied
