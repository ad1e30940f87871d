"""Fine-grained sparsity: unstructured, N:M and block masks, as ``torch.nn.utils.prune`` reparametrisations.

Every function here computes a 0/1 mask per weight and applies it with
``torch.nn.utils.prune.custom_from_mask``, so the result is exactly what ``torch.nn.utils.prune``
users know: the module gets ``weight_orig`` (a parameter) and ``weight_mask`` (a buffer), and
``weight`` is their product, recomputed before every forward. ``prune.remove`` (or
:func:`make_permanent` for the whole model) folds the mask into a plain ``weight``; a model saved
with masks loads into ``torch.nn.utils.prune`` code and back.

Semantics (NNI's ``sparsity``, not ``torch.nn.utils.prune``'s ``amount``): ``sparsity`` is the
fraction of *all* entries of a weight (``scope="local"``) or of all targeted weights together
(``scope="global"``) that are zero afterwards, counting entries an earlier mask already removed,
so two calls with 0.5 leave 0.5, not 0.75. Exactly ``round(sparsity * n)`` entries are masked
(ties broken by position). Entries an earlier mask removed are removed first, so masks only
grow.

Scores (higher = keep): ``"l1"`` (``|w|``), ``"random"`` (seeded), or any
``scorer(name, weight) -> tensor of weight's shape`` (e.g. Wanda's ``|W| * ||X||`` per input
column, a Taylor ``|g * w|``). With ``scope="global"`` raw scores are compared across layers (as
``torch.nn.utils.prune.global_unstructured`` does): a layer whose weights are small loses more.

Structured and fine-grained compose: prune channels with :class:`~pruning_ir.PruningIR` first,
then sparsify what is left of the slim model.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import prune

from ._trace.run import flat_tensors
from .errors import InvalidInputError

Scorer = Callable[[str, torch.Tensor], torch.Tensor]
"""``scorer(qualified weight name, weight) -> scores`` of the weight's shape (higher = keep)."""

DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class LayerSparsity:
    """One weight: its qualified name, its entry count and how many are zero."""

    name: str
    numel: int
    zeros: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0


@dataclass
class SparsityReport:
    """Sparsity per targeted weight and in total."""

    layers: list[LayerSparsity] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return sum(r.numel for r in self.layers)

    @property
    def zeros(self) -> int:
        return sum(r.zeros for r in self.layers)

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0

    def __str__(self) -> str:
        width = max([len(r.name) for r in self.layers] + [5])
        lines = [f"{'weight':<{width}} {'entries':>10} {'zeros':>10} {'sparsity':>8}"]
        lines += [f"{r.name:<{width}} {r.numel:>10} {r.zeros:>10} {r.sparsity:>8.3f}" for r in self.layers]
        lines.append(f"{'total':<{width}} {self.numel:>10} {self.zeros:>10} {self.sparsity:>8.3f}")
        return "\n".join(lines)


def select_weights(model: nn.Module, modules: Iterable[str | type[nn.Module]] | None = None,
                   exclude: Iterable[str] = (), name: str = "weight") -> list[tuple[str, nn.Module]]:
    """The ``(module name, module)`` pairs whose parameter ``name`` is targeted: modules of the given
    types or names (default: every ``nn.Linear`` and ``nn.Conv1d/2d/3d``), minus ``exclude`` (module
    names, or prefixes ending in ``.``). An unknown name is an error, never silently ignored."""
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"expected an nn.Module, got {type(model).__name__}.")
    named = dict(model.named_modules())
    wanted = list(modules) if modules is not None else list(DEFAULT_TYPES)
    types = tuple(w for w in wanted if isinstance(w, type))
    names = [w for w in wanted if isinstance(w, str)]
    bad = [w for w in wanted if not isinstance(w, (str, type))]
    if bad:
        raise InvalidInputError(f"modules={bad[:3]!r}: give module names (str) or module types.")
    missing = [n for n in names if n not in named]
    if missing:
        raise InvalidInputError(f"no module named {missing[0]!r} in {type(model).__name__}; see model.named_modules().")
    excl = list(exclude)
    unknown = [e for e in excl if not e.endswith(".") and e not in named]
    if unknown:
        raise InvalidInputError(f"exclude: no module named {unknown[0]!r} in {type(model).__name__}.")
    out = []
    for mname, mod in named.items():
        if not (mname in names or (types and isinstance(mod, types))):
            continue
        if any(mname == e or (e.endswith(".") and mname.startswith(e)) for e in excl):
            continue
        t = getattr(mod, name, None)
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            if mname in names:
                raise InvalidInputError(f"module {mname!r} has no floating tensor {name!r} to sparsify.")
            continue
        out.append((mname, mod))
    if not out:
        raise InvalidInputError(f"no weight of {type(model).__name__} matches modules={wanted!r}: nothing to sparsify.")
    return out


def _check_fraction(sparsity: float, what: str) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) <= 1.0:
        raise InvalidInputError(f"{what}(sparsity={sparsity!r}): give the fraction of entries to zero, in [0, 1].")
    return float(sparsity)


def _weight(mod: nn.Module) -> torch.Tensor:
    """The module's effective weight (the masked product once a mask is applied)."""
    w = getattr(mod, "weight", None)
    if not isinstance(w, torch.Tensor):
        raise InvalidInputError(f"{type(mod).__name__} has no weight tensor.")
    return w


def _scores(name: str, mod: nn.Module, criterion: str | Scorer, generator: torch.Generator | None) -> torch.Tensor:
    """Scores of the module's current (masked) weight; entries an earlier mask removed score -inf."""
    w = _weight(mod).detach()
    if criterion == "l1":
        s = w.abs().float()
    elif criterion == "random":
        s = torch.rand(w.shape, generator=generator).to(w.device)
    elif callable(criterion):
        s = criterion(f"{name}.weight" if name else "weight", w)
        if not isinstance(s, torch.Tensor) or s.shape != w.shape:
            raise InvalidInputError(f"criterion for {name!r} returned {type(s).__name__} "
                                    f"{getattr(s, 'shape', '')}; expected a tensor of shape {tuple(w.shape)}.")
        s = s.detach().float()
    else:
        raise InvalidInputError(f"criterion={criterion!r}: give 'l1', 'random' or a function (name, weight) -> scores.")
    old = getattr(mod, "weight_mask", None)
    if isinstance(old, torch.Tensor):
        s = s.masked_fill(old == 0, float("-inf"))
    return s


def _apply(mod: nn.Module, keep: torch.Tensor) -> None:
    prune.custom_from_mask(mod, "weight", keep.to(dtype=_weight(mod).dtype))


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` lowest entries (ties: the lower position first)."""
    flat = scores.flatten()
    drop = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        order = torch.argsort(flat, stable=True)
        drop[order[:k]] = True
    return drop.reshape(scores.shape)


def unstructured(model: nn.Module, sparsity: float, *, scope: str = "local", criterion: str | Scorer = "l1",
                 modules: Iterable[str | type[nn.Module]] | None = None, exclude: Iterable[str] = (),
                 generator: torch.Generator | None = None) -> SparsityReport:
    """Mask single entries (NNI's ``LevelPruner``; ``torch.nn.utils.prune.l1_unstructured`` /
    ``global_unstructured`` with the sparsity semantics of the module docstring). Returns the report.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from pruning_ir.sparsity import unstructured, make_permanent
        >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> print(f"{unstructured(model, 0.5).sparsity:.2f}")
        0.50
        >>> make_permanent(model)
        ['0', '2']
    """
    s = _check_fraction(sparsity, "unstructured")
    if scope not in ("local", "global"):
        raise InvalidInputError(f"unstructured(scope={scope!r}): give 'local' or 'global'.")
    targets = select_weights(model, modules, exclude)
    scores = {n: _scores(n, m, criterion, generator) for n, m in targets}
    if scope == "local":
        for n, m in targets:
            _apply(m, ~_lowest(scores[n], round(s * scores[n].numel())))
    else:
        flat = torch.cat([scores[n].flatten().cpu() for n, _ in targets])
        drop = _lowest(flat, round(s * flat.numel()))
        start = 0
        for n, m in targets:
            size = scores[n].numel()
            _apply(m, ~drop[start:start + size].reshape(scores[n].shape).to(scores[n].device))
            start += size
    return sparsity_report(model, [n for n, _ in targets])


def _in_dim(mod: nn.Module) -> int:
    """The weight dim a module reads its input along: 0 for HF ``Conv1D`` (``[in, out]``) and
    transposed convolutions (``[in, out / groups, *k]``), else 1."""
    return 0 if type(mod).__name__ == "Conv1D" or getattr(mod, "transposed", False) else 1


def _grouped(w: torch.Tensor, m: int, name: str, dim: int) -> torch.Tensor:
    """``w`` with its input dim ``dim`` last, in rows of ``m`` consecutive entries."""
    if w.dim() < 2:
        raise InvalidInputError(f"{name!r}: N:M sparsity needs a weight of 2 or more dims, got {tuple(w.shape)}.")
    if w.shape[dim] % m:
        raise InvalidInputError(f"{name!r}: its input dim ({w.shape[dim]}) is not a multiple of M={m}; exclude it "
                                "or prune its input channels to a multiple first.")
    return w.movedim(dim, -1).reshape(-1, m)


def n_m(model: nn.Module, n: int = 2, m: int = 4, *, criterion: str | Scorer = "l1",
        modules: Iterable[str | type[nn.Module]] | None = None, exclude: Iterable[str] = (),
        generator: torch.Generator | None = None) -> SparsityReport:
    """N:M sparsity: in every run of ``m`` consecutive weights along the input dim (in-channels for a
    convolution; dim 0 for HF ``Conv1D`` and transposed convolutions), keep the ``n`` highest-scored
    (2:4 is what sparse tensor cores run). Every
    targeted weight ends at sparsity ``1 - n/m`` exactly; a weight whose input dim is not a multiple
    of ``m`` is refused with its name."""
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n <= m):
        raise InvalidInputError(f"n_m(n={n!r}, m={m!r}): give integers 0 < n <= m, e.g. 2 and 4.")
    targets = select_weights(model, modules, exclude)
    keeps = []
    for name, mod in targets:  # every mask first: a refused weight leaves the model untouched
        sc = _scores(name, mod, criterion, generator)
        dim = _in_dim(mod)
        rows = _grouped(sc, m, name, dim)
        order = torch.argsort(rows, dim=1, stable=True)
        keep_rows = torch.ones_like(rows, dtype=torch.bool).scatter(1, order[:, : m - n], False)
        keeps.append(keep_rows.reshape(sc.movedim(dim, -1).shape).movedim(-1, dim))
    for (_name, mod), keep in zip(targets, keeps, strict=True):
        _apply(mod, keep)
    return sparsity_report(model, [nm for nm, _ in targets])


def blocks(model: nn.Module, sparsity: float, block: tuple[int, int] = (4, 4), *, scope: str = "local",
           criterion: str | Scorer = "l1", modules: Iterable[str | type[nn.Module]] | None = None,
           exclude: Iterable[str] = (), generator: torch.Generator | None = None) -> SparsityReport:
    """Block sparsity: the weight seen as ``[out, everything else]`` is cut into ``block`` tiles,
    a tile scores the sum of its entries' scores, and the lowest tiles are masked whole until
    ``sparsity`` of the tiles (hence of the entries) is zero, per weight or globally."""
    s = _check_fraction(sparsity, "blocks")
    br, bc = block
    if scope not in ("local", "global"):
        raise InvalidInputError(f"blocks(scope={scope!r}): give 'local' or 'global'.")
    targets = select_weights(model, modules, exclude)
    tiles: dict[str, torch.Tensor] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for name, mod in targets:
        sc = _scores(name, mod, criterion, generator)
        flat2 = sc.reshape(sc.shape[0], -1)
        r, c = flat2.shape
        if r % br or c % bc:
            raise InvalidInputError(f"{name!r}: its {r}x{c} view does not split into {br}x{bc} blocks; exclude it or "
                                    "choose a block size that divides it.")
        tiles[name] = flat2.reshape(r // br, br, c // bc, bc).sum((1, 3))
        shapes[name] = tuple(sc.shape)

    def expand(keep_tiles: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        return keep_tiles.repeat_interleave(br, 0).repeat_interleave(bc, 1).reshape(shape)

    if scope == "local":
        for name, mod in targets:
            t = tiles[name]
            _apply(mod, expand(~_lowest(t, round(s * t.numel())), shapes[name]))
    else:
        flat = torch.cat([tiles[nm].flatten().cpu() for nm, _ in targets])
        drop = _lowest(flat, round(s * flat.numel()))
        start = 0
        for name, mod in targets:
            t = tiles[name]
            _apply(mod, expand(~drop[start:start + t.numel()].reshape(t.shape).to(t.device), shapes[name]))
            start += t.numel()
    return sparsity_report(model, [nm for nm, _ in targets])


def sparsity_report(model: nn.Module, names: Sequence[str] | None = None) -> SparsityReport:
    """Zeros per weight (the effective, masked weight) of the modules ``names`` (default: every
    ``nn.Linear`` / ``nn.Conv*``), and in total."""
    named = dict(model.named_modules())
    chosen = list(names) if names is not None else [n for n, _ in select_weights(model)]
    rows = []
    for n in chosen:
        w = named[n].weight
        rows.append(LayerSparsity(f"{n}.weight" if n else "weight", w.numel(), int((w == 0).sum())))
    return SparsityReport(rows)


def make_permanent(model: nn.Module) -> list[str]:
    """``torch.nn.utils.prune.remove`` on every masked weight of ``model``: ``weight`` becomes a plain
    parameter holding the zeros, the mask and its hook go. Returns the module names changed."""
    done = []
    for n, mod in model.named_modules():
        if prune.is_pruned(mod) and isinstance(getattr(mod, "weight_mask", None), torch.Tensor):
            prune.remove(mod, "weight")
            done.append(n)
    return done



def copy_masked(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` that works with ``torch.nn.utils.prune`` masks on it (their computed
    ``weight`` holds an autograd graph, which ``copy.deepcopy`` refuses): the copy gets the masks,
    the ``*_orig`` parameters and a detached computed weight, recomputed by the mask's hook at the
    next forward as usual."""
    memo: dict[int, object] = {}
    for mod in model.modules():
        for value in vars(mod).values():
            if isinstance(value, torch.Tensor) and value.grad_fn is not None:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)


class SparseLinear(nn.Module):
    """An inference-only ``nn.Linear`` whose weight is a ``torch.sparse`` CSR tensor: ``y = x W^T + b``
    computed as ``(W @ x^T)^T`` by the compressed-row kernel, which beats the dense matmul on CPU
    only at high sparsity (``benchmarks/sparse_speed.py``: from about 0.9; 0.7 at 32 tokens). The
    weight is a buffer: nothing here trains (keep the masks to fine-tune). Built by :func:`to_sparse`."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            self.register_buffer("weight", weight.detach().to_sparse_csr())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def __deepcopy__(self, memo: dict[int, object]) -> SparseLinear:
        # a CSR tensor has no storage to copy: rebuild it (deepcopy of a model, .to(...) on a copy)
        out = SparseLinear(self.weight.to_dense(), None if self.bias is None else self.bias.clone())
        out.train(self.training)
        memo[id(self)] = out
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        y = (self.weight @ flat.T.contiguous()).T
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        nnz = int(self.weight.values().numel())
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"sparsity={1 - nnz / (self.in_features * self.out_features):.3f}")


_READS_CHILD_WEIGHTS = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def to_sparse(model: nn.Module, min_sparsity: float = 0.9, *, inplace: bool = False,
              example_inputs: torch.Tensor | tuple[object, ...] | None = None) -> tuple[nn.Module, list[str]]:
    """Every ``nn.Linear`` whose effective weight has at least ``min_sparsity`` zeros replaced by a
    :class:`SparseLinear` (masks folded in); returns the model (a copy unless ``inplace``) and the names
    replaced. Only plain ``nn.Linear`` modules are replaced, and not those whose parent reads their
    weight itself (``nn.MultiheadAttention`` and the ``nn.Transformer*Layer`` fast paths): subclasses
    and those stay dense, and so does a model that is itself one linear layer. With
    ``example_inputs`` (a tensor or a tuple) the new model is run on them and must give the old
    model's outputs (else :class:`~pruning_ir.InvalidInputError` names the layers replaced: code
    elsewhere reads their weights). float32 / float64 only (the CPU kernel has no half precision).
    For inference: measure first (``benchmarks/sparse_speed.py``); below about 0.9 the dense layer
    is faster on CPU.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
        >>> _ = unstructured(model, 0.95, modules=["0"])
        >>> fast, names = to_sparse(model)
        >>> names, bool(torch.allclose(fast(torch.ones(2, 64)), model(torch.ones(2, 64)), atol=1e-5))
        (['0'], True)
    """
    s = _check_fraction(min_sparsity, "to_sparse")
    original = model
    reference = None
    if example_inputs is not None:
        args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        with torch.no_grad():
            reference = original(*args)
    if not inplace:
        model = copy_masked(model)
    named = dict(model.named_modules())
    done: list[str] = []
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for name, mod in list(named.items()):
        if type(mod) is not nn.Linear or not name:
            continue
        if isinstance(named[name.rpartition(".")[0]], _READS_CHILD_WEIGHTS):
            continue
        w = mod.weight.detach()
        if float((w == 0).float().mean()) < s:
            continue
        parent_name, _, leaf = name.rpartition(".")
        parent = named[parent_name] if parent_name else model
        swapped.append((parent, leaf, mod))
        setattr(parent, leaf, SparseLinear(w, mod.bias))
        done.append(name)
    if reference is not None:
        problem = None
        with torch.no_grad():
            try:
                got = model(*args)
                if not all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(
                        flat_tensors(reference), flat_tensors(got), strict=True)):
                    problem = "gives other outputs"
            except Exception as exc:  # reported below, with the layers replaced
                problem = f"does not run ({type(exc).__name__}: {exc})"
        if problem is not None:
            for parent, leaf, mod in swapped:  # nothing lost: the layers go back (inplace)
                setattr(parent, leaf, mod)
            raise InvalidInputError(f"to_sparse: the model with {done} as SparseLinear {problem}; something reads "
                                    "their weights directly: leave them dense (a higher min_sparsity) or keep the "
                                    "masks.")
    return model, done

