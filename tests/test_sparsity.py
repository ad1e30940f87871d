"""Fine-grained masks (pruning_ir.sparsity): exact counts, the order they remove in, and the
torch.nn.utils.prune round trip."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from pruning_ir import InvalidInputError, PruningIR, UniformLabelSelector
from pruning_ir.sparsity import blocks, make_permanent, n_m, sparsity_report, unstructured


def _model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU(),
                         nn.Linear(16, 4))


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{n}.weight": m.weight.detach() for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_local_l1_masks_exactly_the_smallest_entries_of_each_weight(sparsity: float) -> None:
    model = _model()
    before = {k: v.clone() for k, v in _weights(model).items()}
    rep = unstructured(model, sparsity)
    for row in rep.layers:
        w0, w = before[row.name], _weights(model)[row.name]
        k = round(sparsity * w0.numel())
        assert row.zeros == int((w == 0).sum()) == k  # exactly as asked (no weight is exactly 0 before)
        if 0 < k < w0.numel():
            assert float(w0[w == 0].abs().max()) <= float(w0[w != 0].abs().min())  # the smallest |w| go
    assert prune.is_pruned(model)


def test_global_l1_reaches_the_total_and_uses_one_threshold() -> None:
    model = _model(1)
    before = _weights(model)
    flat = torch.cat([w.abs().flatten() for w in before.values()]).clone()
    rep = unstructured(model, 0.6, scope="global")
    assert rep.zeros == round(0.6 * flat.numel())
    threshold = torch.sort(flat).values[rep.zeros - 1]
    for name, w in _weights(model).items():
        w0 = before[name]
        assert bool((w0.abs()[w == 0] <= threshold).all()) and bool((w0.abs()[w != 0] >= threshold).all())
    assert len({round(r.sparsity, 2) for r in rep.layers}) > 1  # layers end at different sparsities


def test_masks_only_grow_and_sparsity_is_of_all_entries() -> None:
    model = _model(2)
    unstructured(model, 0.5, criterion="random", generator=torch.Generator().manual_seed(0))
    first = {n: (w == 0) for n, w in _weights(model).items()}
    rep = unstructured(model, 0.5)  # the same sparsity again: nothing more goes (NNI semantics)
    assert abs(rep.sparsity - 0.5) < 1e-3
    rep = unstructured(model, 0.75)
    for n, w in _weights(model).items():
        assert bool((w[first[n]] == 0).all())  # the earlier zeros stay
    assert [round(r.sparsity, 2) for r in rep.layers] == [0.75, 0.75, 0.75]


def test_random_is_seeded_and_a_scorer_is_used_as_given() -> None:
    a, b = _model(3), _model(3)
    unstructured(a, 0.4, criterion="random", generator=torch.Generator().manual_seed(7))
    unstructured(b, 0.4, criterion="random", generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(x, y) for x, y in zip(_weights(a).values(), _weights(b).values(), strict=True))
    c = _model(3)
    # a scorer that keeps the first half of every flattened weight: the second half goes
    unstructured(c, 0.5, criterion=lambda _n, w: -torch.arange(w.numel(), dtype=torch.float32).reshape(w.shape))
    for w in _weights(c).values():
        flat = w.flatten()
        half = flat.numel() // 2
        assert bool((flat[:half] != 0).all()) and bool((flat[flat.numel() - half:] == 0).all())


def test_two_four_keeps_the_two_largest_of_every_four_input_weights() -> None:
    model = _model(4)
    before = _weights(model)
    rep = n_m(model, 2, 4, modules=[nn.Linear])
    for row in rep.layers:
        assert row.sparsity == 0.5
        w0, w = before[row.name], _weights(model)[row.name]
        g0, g = w0.reshape(-1, 4), w.reshape(-1, 4)
        assert bool(((g == 0).sum(1) == 2).all())
        kept_min = torch.where(g != 0, g0.abs(), torch.inf).min(1).values
        gone_max = torch.where(g == 0, g0.abs(), -torch.inf).max(1).values
        assert bool((gone_max <= kept_min).all())
    other = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 6), nn.Linear(6, 2))
    with pytest.raises(InvalidInputError, match=r"'2'.*not a multiple of M=4"):
        n_m(other, 2, 4)  # the last layer reads 6 inputs
    assert not prune.is_pruned(other)  # refused before any mask went on


def test_blocks_remove_whole_tiles() -> None:
    model = _model(5)
    rep = blocks(model, 0.5, (4, 4), modules=["3", "5"])
    for n, w in _weights(model).items():
        if n.startswith("0."):
            assert int((w == 0).sum()) == 0
            continue
        tiles = (w == 0).reshape(w.shape[0] // 4, 4, -1, 4).permute(0, 2, 1, 3).reshape(-1, 16)
        assert bool((tiles.all(1) | (~tiles).all(1)).all())  # every tile all zero or all kept
    assert [r.sparsity for r in rep.layers] == [0.5, 0.5]


def test_make_permanent_is_prune_remove_and_keeps_outputs_and_state_dict_names() -> None:
    model = _model(6)
    x = torch.randn(2, 3, 4, 4)
    names = set(model.state_dict())
    unstructured(model, 0.7, scope="global")
    masked_out = model(x)
    assert any(k.endswith("weight_mask") for k in model.state_dict())
    assert make_permanent(model) == ["0", "3", "5"]
    assert not prune.is_pruned(model) and set(model.state_dict()) == names
    assert torch.equal(model(x), masked_out)
    assert abs(sparsity_report(model).sparsity - 0.7) < 1e-3
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)  # loads into a fresh model of the same class
    fresh = _model(0)
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    assert torch.equal(fresh(x), masked_out)


def test_masked_state_dict_loads_into_torch_prune_code() -> None:
    """A torch.nn.utils.prune user re-creates the reparametrisation and loads the masked state dict."""
    model = _model(7)
    unstructured(model, 0.5)
    state = model.state_dict()
    other = _model(8)
    for m in other.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            prune.identity(m, "weight")
    other.load_state_dict(state)
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(other(x), model(x))


def test_structured_then_fine_grained() -> None:
    model = _model(9).eval()
    x = torch.randn(2, 3, 4, 4)
    ir = PruningIR(model, example_inputs=(x,))
    slim = ir.prune(labels=UniformLabelSelector(0.25).select(ir)).model
    rep = unstructured(slim, 0.5)
    assert abs(rep.sparsity - 0.5) < 1e-3 and slim(x).shape == (2, 4)
    assert slim[3].in_features < 8 * 4 * 4  # channels went first


def test_bad_input_names_the_problem() -> None:
    model = _model()
    with pytest.raises(InvalidInputError, match="in \\[0, 1\\]"):
        unstructured(model, 1.5)
    with pytest.raises(InvalidInputError, match="no module named 'nope'"):
        unstructured(model, 0.5, modules=["nope"])
    with pytest.raises(InvalidInputError, match="exclude"):
        unstructured(model, 0.5, exclude=["nope"])
    with pytest.raises(InvalidInputError, match="scope"):
        unstructured(model, 0.5, scope="layer")
    with pytest.raises(InvalidInputError, match="expected a tensor of shape"):
        unstructured(model, 0.5, criterion=lambda _n, w: torch.zeros(3))
    assert not prune.is_pruned(model)  # a refused call changes nothing


def test_to_sparse_swaps_only_sparse_enough_linears_and_keeps_the_outputs() -> None:
    """Oracle: the masked model's own outputs (3D inputs too); the dense-enough layer stays nn.Linear;
    the user's masked model is copied, not changed, and its copy still trains under the masks."""
    from pruning_ir.sparsity import SparseLinear, copy_masked, to_sparse

    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    unstructured(model, 0.92, modules=["0"])
    unstructured(model, 0.5, modules=["2"])
    x = torch.randn(2, 5, 16)
    fast, names = to_sparse(model, 0.9)
    assert names == ["0"] and isinstance(fast[0], SparseLinear) and isinstance(fast[2], nn.Linear)
    assert fast[0].weight.layout == torch.sparse_csr
    assert torch.allclose(fast(x), model(x), atol=1e-6)
    assert isinstance(model[0], nn.Linear) and prune.is_pruned(model)  # the user's model untouched
    twin = copy_masked(model)
    with torch.no_grad():
        twin[0].weight_orig.add_(1.0)  # a copy: the original's parameters do not move
    assert not torch.equal(twin[0].weight_orig, model[0].weight_orig)
    twin(x)  # the mask's hook recomputes the copy's weight
    assert int((twin[0].weight == 0).sum()) == int((model[0].weight == 0).sum())  # same masks, recomputed


def test_to_sparse_leaves_layers_read_directly_and_restores_on_a_failed_check() -> None:
    """nn.TransformerEncoderLayer's fast path reads linear1/linear2 weights itself: they stay dense.
    A module that reads a child's weight in its own forward is caught by the example check, and the
    layers go back (inplace): nothing is lost. A converted model deep-copies."""
    import copy as _copy

    from pruning_ir.sparsity import SparseLinear, to_sparse

    torch.manual_seed(4)
    enc = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True).eval()
    unstructured(enc, 0.95, modules=[nn.Linear])
    x = torch.randn(2, 5, 16)
    fast, names = to_sparse(enc, 0.9, example_inputs=x)
    assert names == [] and torch.allclose(fast(x), enc(x))

    class ReadsWeight(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return self.fc(h) + self.fc.weight.view(-1)[:8]  # reads the child's weight as a dense tensor

    model = ReadsWeight()
    unstructured(model, 0.95)
    make_permanent(model)
    with pytest.raises(InvalidInputError, match=r"\['fc'\] as SparseLinear"):
        to_sparse(model, 0.9, inplace=True, example_inputs=torch.randn(3, 8))
    assert type(model.fc) is nn.Linear  # put back
    ok = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    unstructured(ok, 0.95, modules=["0"])
    fast, _ = to_sparse(ok, 0.9)
    twin = _copy.deepcopy(fast)
    assert isinstance(twin[0], SparseLinear) and torch.equal(twin(torch.ones(1, 8)), fast(torch.ones(1, 8)))
