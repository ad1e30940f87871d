"""save_pruned / load_pruned: slim models as safetensors + a JSON recipe, loaded back bit for bit.

Oracles: the loaded model's outputs (and gradients, where literal patches replay them) equal the
saved slim model's exactly, also in a fresh process that never saw the slim model; tied weights
stay one tensor; the user's base model is untouched; bad input is refused by name.
"""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from checks import outputs, random_selection, state_hash
from torch import nn

from pruning_ir import InvalidInputError, PruningIR, RewriteError, load_pruned, save_pruned
from pruning_ir._rewrite.recipe import decode, encode
from pruning_ir.deploy import RECIPE_FILE

TESTS = Path(__file__).parent


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn(self.conv(x)))


def make_cnn(width: int = 12) -> nn.Module:
    """A small residual CNN with BN (the constructor the fresh-process test imports by name)."""
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), Block(width),
                         nn.Conv2d(width, 2 * width, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(2 * width, 5))


def _cnn_case() -> tuple[nn.Module, tuple[torch.Tensor, ...], dict[str, object]]:
    torch.manual_seed(0)
    model = make_cnn()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.running_var, 0.5, 1.5)
            nn.init.normal_(m.running_mean)
    return model.eval(), (torch.randn(2, 3, 10, 10),), {}


def _hf_case(name: str) -> tuple[nn.Module, tuple[object, ...], dict[str, object]]:
    from hf_zoo import HF_CASES

    case = HF_CASES[name]()
    return case.model, case.example_inputs, case.example_kwargs


def _pruned(model: nn.Module, args: tuple[object, ...], kwargs: dict[str, object], seed: int = 0) -> PruningIR:
    ir = PruningIR(model, example_inputs=args, example_kwargs=kwargs)
    return ir.prune(labels=random_selection(ir, seed))


def _widths(model: nn.Module) -> set[tuple[int, ...]]:
    return {tuple(p.shape) for p in model.parameters()}


_LOADER = """
import sys, torch
sys.path.insert(0, {tests!r})
from pruning_ir import load_pruned
args = torch.load({inputs!r}, weights_only=True)
out = {{}}
for name, d in {dirs!r}.items():
    model = load_pruned(d)
    a, kw = args[name]
    res = model(*a, **kw)
    res = res.to_tuple() if hasattr(res, "to_tuple") else res
    out[name] = [t for t in torch.utils._pytree.tree_leaves(res) if isinstance(t, torch.Tensor)]
torch.save(out, {result!r})
"""


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fresh_process_round_trip_hf_and_cnn(tmp_path: Path) -> None:
    """LLaMA (GQA), BERT, T5 from the directory alone and a CNN from its saved constructor, each
    pruned with a random non-uniform selection, load in a new process with identical outputs."""
    pytest.importorskip("transformers")
    cases = {name: _hf_case(name) for name in ("llama", "bert", "t5")}
    cases["cnn"] = _cnn_case()
    dirs, inputs, want = {}, {}, {}
    for name, (model, args, kwargs) in cases.items():
        pruned = _pruned(model, args, kwargs)
        before = _widths(model)
        assert _widths(pruned.model) != before
        d = tmp_path / name
        if name == "cnn":
            save_pruned(pruned, d, constructor="test_deploy:make_cnn", constructor_kwargs={"width": 12})
        else:
            save_pruned(pruned, d)
        dirs[name] = str(d)
        inputs[name] = (args, kwargs)
        with torch.no_grad():
            want[name] = outputs(pruned.model.eval(), args, kwargs)
    # the random selections are non-uniform: one HF config cannot describe these models
    llama = load_pruned(dirs["llama"])
    sizes = {m.weight.shape[0] for n, m in llama.named_modules() if n.endswith("mlp.up_proj")}
    assert len(sizes) > 1 or llama.config.intermediate_size not in sizes
    torch.save(inputs, tmp_path / "inputs.pt")
    script = _LOADER.format(tests=str(TESTS), inputs=str(tmp_path / "inputs.pt"), dirs=dirs,
                            result=str(tmp_path / "out.pt"))
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    for name in cases:
        assert len(got[name]) == len(want[name]) > 0, name
        for a, b in zip(want[name], got[name], strict=True):
            assert torch.equal(a, b), name


def test_recipe_is_json_without_code(tmp_path: Path) -> None:
    model, args, kwargs = _cnn_case()
    save_pruned(_pruned(model, args, kwargs), tmp_path, base_model=make_cnn())
    recipe = json.loads((tmp_path / RECIPE_FILE).read_text())
    assert recipe["origin"]["class"] == "torch.nn.modules.container:Sequential"
    assert recipe["modules"]["3"]["class"].endswith(":Block")
    assert recipe["modules"]["0"]["attributes"]["out_channels"] < 12
    assert not any(f.suffix in (".pt", ".pkl", ".bin") for f in tmp_path.iterdir())


def test_base_model_is_not_changed_and_widths_come_from_the_recipe(tmp_path: Path) -> None:
    model, args, kwargs = _cnn_case()
    pruned = _pruned(model, args, kwargs, seed=3)
    save_pruned(pruned, tmp_path, base_model=make_cnn())
    base = make_cnn()
    h = state_hash(base)
    slim = load_pruned(tmp_path, base_model=base)
    assert state_hash(base) == h and base[0].out_channels == 12
    assert state_hash(slim) == state_hash(pruned.model)
    assert slim[0].out_channels == pruned.model[0].out_channels < 12
    for a, b in zip(outputs(pruned.model, args, kwargs), outputs(slim, args, kwargs), strict=True):
        assert torch.equal(a, b)


def test_meta_base_model(tmp_path: Path) -> None:
    model, args, kwargs = _cnn_case()
    pruned = _pruned(model, args, kwargs, seed=1)
    with torch.device("meta"):
        base = make_cnn()
    save_pruned(pruned, tmp_path, base_model=base)
    slim = load_pruned(tmp_path, base_model=base)
    assert all(p.device.type == "cpu" for p in slim.parameters())
    assert state_hash(slim) == state_hash(pruned.model)


def test_literal_patches_round_trip_with_gradients(tmp_path: Path) -> None:
    """A module that holds channel sizes as literals (``torch.split(x, [5, 8])``) gets run-time
    patches; they come back from the recipe: same outputs and same gradients."""
    from toy_zoo import TOY_CASES

    model, args = TOY_CASES["split_chunk"]()
    pruned = _pruned(model, args, {}, seed=2)
    assert any("literal sizes" in line for line in pruned.rewrite_log)
    base, _ = TOY_CASES["split_chunk"]()
    save_pruned(pruned, tmp_path, base_model=base)
    assert "patch" in json.loads((tmp_path / RECIPE_FILE).read_text())["modules"][""]
    slim = load_pruned(tmp_path, base_model=base)
    grads = []
    for m in (pruned.model, slim):
        m.zero_grad()
        out = m(*[a.clone().requires_grad_(True) for a in args])
        out.square().sum().backward()
        grads.append([p.grad.clone() for p in m.parameters()])
        assert torch.equal(outputs(pruned.model, args, {})[0], outputs(slim, args, {})[0])
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)


def test_pruned_mha_class_and_tied_weights(tmp_path: Path) -> None:
    from toy_zoo import TOY_CASES

    for name in ("mha_torch", "embedding_tied"):
        model, args = TOY_CASES[name]()
        pruned = _pruned(model, args, {}, seed=0)
        d = tmp_path / name
        save_pruned(pruned, d, base_model=TOY_CASES[name]()[0])
        slim = load_pruned(d, base_model=TOY_CASES[name]()[0])
        assert [type(m) for m in slim.modules()] == [type(m) for m in pruned.model.modules()]
        ids = {id(p) for p in pruned.model.parameters()}
        assert len({id(p) for p in slim.parameters()}) == len(ids)  # tied stays tied
        for a, b in zip(outputs(pruned.model, args, {}), outputs(slim, args, {}), strict=True):
            assert torch.equal(a, b), name


def test_pruned_twice_and_train_flags(tmp_path: Path) -> None:
    model, args, _kwargs = _cnn_case()
    ir = PruningIR(model, example_inputs=args)
    once = ir.prune(labels=random_selection(ir, 4))
    twice = once.prune(labels=random_selection(once, 5))
    twice.model.train()
    twice.model[1].eval()
    save_pruned(twice, tmp_path, base_model=make_cnn())
    slim = load_pruned(tmp_path, base_model=make_cnn())
    assert [m.training for m in slim.modules()] == [m.training for m in twice.model.modules()]
    assert state_hash(slim) == state_hash(twice.model)


def test_save_check_finds_state_the_recipe_cannot_hold(tmp_path: Path) -> None:
    """An object attribute (not plain data) that differs from the original's would load back
    wrong: save refuses it instead of writing a model that comes back different."""

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 8)
            self.out = nn.Linear(8, 2)
            self.scale = Fraction(1, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.lin(x) * float(self.scale))

    x = torch.randn(2, 4)
    pruned = _pruned(Scaled(), (x,), {})
    pruned.model.scale = Fraction(1, 3)
    with pytest.raises(RewriteError, match="other outputs"):
        save_pruned(pruned, tmp_path, base_model=Scaled())


def test_errors_name_what_to_do(tmp_path: Path) -> None:
    model, args, kwargs = _cnn_case()
    pruned = _pruned(model, args, kwargs)
    save_pruned(pruned, tmp_path)  # no way to rebuild: written, not checked
    with pytest.raises(InvalidInputError, match="base_model"):
        load_pruned(tmp_path)
    wrong = nn.Sequential(nn.Conv2d(3, 12, 3), nn.ReLU())
    with pytest.raises(InvalidInputError, match="not the architecture"):
        load_pruned(tmp_path, base_model=wrong)
    with pytest.raises(InvalidInputError, match="does not hold"):
        load_pruned(tmp_path / "nothing")
    with torch.device("meta"):
        meta = make_cnn()
    with pytest.raises(InvalidInputError, match="meta"):
        save_pruned(meta, tmp_path / "meta")
    with pytest.raises(InvalidInputError, match="PruningIR"):
        save_pruned("model.pt", tmp_path)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [
    None, True, 3, -2.5, float("inf"), "s", (1, (2, 3)), [1, [2]], {"a": (1,)}, {1: "x", (2, 3): None},
    torch.float16, torch.device("cpu"), torch.Size([2, 3]), torch.channels_last, slice(1, None, 2), Ellipsis,
])
def test_encode_decode_round_trip(value: object) -> None:
    data = json.loads(json.dumps(encode(value), allow_nan=False))
    back = decode(data)
    assert back == value and type(back) is type(value)


def test_fx_graph_module_as_the_model(tmp_path: Path) -> None:
    """A ``torch.fx.GraphModule`` (each instance has its own generated class) prunes like any
    module, equivalently to the masked original, and saves and loads back."""
    from checks import check_equivalence

    model, args, _ = _cnn_case()
    gm = torch.fx.symbolic_trace(model)
    ir = PruningIR(gm, example_inputs=args)
    labels = random_selection(ir, 0)
    check_equivalence(ir, labels)
    pruned = ir.prune(labels=labels)
    assert isinstance(pruned.model, torch.fx.GraphModule) and getattr(pruned.model, "0").out_channels < 12
    save_pruned(pruned, tmp_path, base_model=torch.fx.symbolic_trace(make_cnn()))
    slim = load_pruned(tmp_path, base_model=torch.fx.symbolic_trace(make_cnn()))
    for a, b in zip(outputs(pruned.model, args, {}), outputs(slim, args, {}), strict=True):
        assert torch.equal(a, b)


def test_hf_config_internals_round_trip(tmp_path: Path) -> None:
    """Which attention / experts implementation a model runs is private config state that
    ``to_dict`` leaves out; it comes back, so the loaded model takes the slim model's code path."""
    pytest.importorskip("transformers")
    model, args, kwargs = _hf_case("llama")
    pruned = _pruned(model, args, kwargs, seed=2)
    pruned.model.config._experts_implementation_internal = "grouped_mm"  # as a MoE model's forward sets it
    save_pruned(pruned, tmp_path)
    loaded = load_pruned(tmp_path)
    for key in ("_attn_implementation_internal", "_experts_implementation_internal"):
        assert getattr(loaded.config, key, None) == getattr(pruned.model.config, key, None), key
    assert loaded.config._attn_implementation == "eager"


def test_plain_tensor_attributes_keep_their_sharing(tmp_path: Path) -> None:
    """Two plain tensor attributes holding one tensor (a table cached under two names) come back
    as one tensor, equal to the saved one; an attribute holding a parameter is that parameter."""

    class Cached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 6)
            self.out = nn.Linear(6, 2)
            self.table = torch.arange(6.0)
            self.same_table = self.table
            self.w = self.lin.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.lin(x) + self.same_table[: self.lin.out_features].sum())

    pruned = _pruned(Cached(), (torch.randn(2, 4),), {})
    save_pruned(pruned, tmp_path, base_model=Cached())
    slim = load_pruned(tmp_path, base_model=Cached())
    assert slim.table is slim.same_table and torch.equal(slim.table, pruned.model.table)
    assert slim.w is slim.lin.weight
