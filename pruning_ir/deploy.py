"""Save a slim model without pickle and load it back into the user's own classes.

:func:`save_pruned` writes a directory with two files:

* ``model.safetensors``: every parameter and buffer of the slim model (tied ones once), and
  plain tensor attributes of its modules;
* ``pruning_ir.json``: the recipe (see :mod:`pruning_ir._rewrite.recipe`): what the original
  architecture was (a Hugging Face class and config, or a class the caller rebuilds, or an
  importable constructor), and what pruning changed: every module's plain attributes, its class
  where pruning changed it, Hugging Face configs, the run-time literal-size patches.

:func:`load_pruned` builds the original architecture on the ``meta`` device (no memory, no
initialisation), turns it into the slim model by the recipe and loads the weights: the result
equals the saved model bit for bit, whatever the widths of its layers. Nothing in the directory
is executed or unpickled; the only code run is the model's own class (or the constructor the
saver named). After writing, :func:`save_pruned` loads the directory back and compares it with
the model it saved (tensors, and outputs on the IR's example calls), so a model that would not
come back the same is refused when it is saved, not when it is loaded.

>>> import tempfile, torch
>>> from torch import nn
>>> from pruning_ir import PruningIR, UniformLabelSelector, load_pruned, save_pruned
>>> model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
>>> ir = PruningIR(model, example_inputs=(torch.randn(2, 6),))
>>> pruned = ir.prune(labels=UniformLabelSelector(0.25).select(ir))
>>> with tempfile.TemporaryDirectory() as d:
...     _ = save_pruned(pruned, d)
...     with torch.device("meta"):  # the architecture only: no memory, no initialisation
...         base = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
...     slim = load_pruned(d, base_model=base)
>>> slim[0].out_features, torch.equal(slim[2].weight, pruned.model[2].weight)
(12, True)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._rewrite.hf_config import _quiet_transformers
from ._rewrite.recipe import apply, capture, encode, import_object
from ._rewrite.slim import meta_copy
from ._trace.run import call_modes, flat_tensors
from .errors import InvalidInputError, RewriteError
from .ir import PruningIR

__all__ = ["RECIPE_FILE", "WEIGHTS_FILE", "load_pruned", "save_pruned"]

log = logging.getLogger(__name__)

RECIPE_FILE = "pruning_ir.json"
WEIGHTS_FILE = "model.safetensors"


def _model_of(pruned: PruningIR | nn.Module) -> nn.Module:
    if isinstance(pruned, PruningIR):
        return pruned.model
    if isinstance(pruned, nn.Module):
        return pruned
    raise InvalidInputError(f"save_pruned needs a PruningIR (what ir.prune returns) or an nn.Module, got "
                            f"{type(pruned).__name__}.")


def _distinct_storage(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors as safetensors stores them: detached, contiguous, on CPU, and copied where two
    share memory (safetensors refuses overlapping storage)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in tensors.items():
        if t.device.type == "meta":
            raise InvalidInputError(f"tensor {name!r} is on the meta device: a model without weights cannot be "
                                    "saved. Load or materialise its weights first.")
        c = t.detach().to("cpu").contiguous()
        ptr = c.untyped_storage().data_ptr()
        if ptr in seen:
            c = c.clone()
            ptr = c.untyped_storage().data_ptr()
        seen.add(ptr)
        out[name] = c
    return out


def save_pruned(pruned: PruningIR | nn.Module, directory: str | Path, *, base_model: nn.Module | None = None,
                constructor: str | None = None, constructor_kwargs: dict[str, Any] | None = None,
                check: bool = True) -> Path:
    """Write the slim model of ``pruned`` (an IR returned by ``ir.prune``, or the slim module) to
    ``directory`` as safetensors weights plus a JSON recipe; return the directory.

    How :func:`load_pruned` will rebuild the original architecture is recorded too: a Hugging
    Face model from its original config (nothing else needed at load time); otherwise
    ``constructor`` (``'package.module:function'``, called with ``constructor_kwargs``, which
    must be JSON data) if given, else the loader passes ``base_model``.

    ``check`` (default): load the directory back (from ``base_model`` where the recipe alone
    cannot build the architecture) and compare it with the saved model, tensor by tensor and,
    for an IR, on every example call it traced, bit for bit; a difference raises
    :class:`~pruning_ir.errors.RewriteError` naming what differs. Without a way to build the
    architecture the check compares nothing and is skipped (logged).
    """
    model = _model_of(pruned)
    recipe, stored = capture(model)
    if constructor is not None:
        import_object(constructor)  # fail now, not at load time
        recipe["origin"] = {**recipe["origin"], "constructor": constructor,
                            "constructor_kwargs": encode(dict(constructor_kwargs or {}))}
    recipe["versions"] = {"torch": torch.__version__, "pruning_ir": _version()}
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file(_distinct_storage(stored), str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    (out / RECIPE_FILE).write_text(json.dumps(recipe, indent=1, allow_nan=False))
    if check:
        if base_model is None and not _self_contained(recipe["origin"]):
            log.info("save_pruned: %s cannot be rebuilt without base_model; the written files were not "
                     "checked by loading them", type(model).__name__)
        else:
            _check(model, load_pruned(out, base_model=base_model), pruned)
    return out


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("pruning_ir")
    except Exception:  # not installed as a distribution (a source checkout on sys.path)
        return "unknown"


def _self_contained(origin: dict[str, Any]) -> bool:
    return origin.get("kind") == "hf" or "constructor" in origin


def _build_base(origin: dict[str, Any], base_model: nn.Module | None, where: Path) -> nn.Module:
    if base_model is not None:
        if not isinstance(base_model, nn.Module):
            raise InvalidInputError(f"load_pruned(base_model=...) needs an nn.Module, got {type(base_model).__name__}.")
        return meta_copy(base_model, attributes=True)
    if "constructor" in origin:
        from ._rewrite.recipe import decode

        fn = import_object(origin["constructor"])
        with torch.device("meta"):
            base = fn(**decode(origin.get("constructor_kwargs", {"dict": {}})))
        if not isinstance(base, nn.Module):
            raise InvalidInputError(f"constructor {origin['constructor']!r} returned a {type(base).__name__}, "
                                    "not an nn.Module.")
        return base
    if origin.get("kind") == "hf":
        from ._rewrite.recipe import decode, set_config_internals

        cls = import_object(origin["class"])
        attn = origin.get("attn_implementation")
        with _quiet_transformers(), torch.device("meta"):
            for explicit in ((True, False) if attn is not None else (False,)):
                config = cls.config_class.from_dict(decode(origin["config"]))
                set_config_internals(config, origin.get("internal", {}))
                if explicit:
                    config._attn_implementation = attn
                try:
                    return cls(config)  # type: ignore[no-any-return]
                except ValueError:  # a class that refuses the recorded name when asked explicitly
                    if not explicit:
                        raise
            raise AssertionError("unreachable")
    raise InvalidInputError(
        f"{where} holds a pruned {origin.get('class')} that the directory alone cannot rebuild: pass "
        "load_pruned(directory, base_model=...) with the original architecture (built as before pruning; "
        "under `with torch.device('meta'):` it costs no memory), or save it with "
        "save_pruned(..., constructor='package.module:function').")


def load_pruned(directory: str | Path, base_model: nn.Module | None = None, *,
                device: str | torch.device = "cpu") -> nn.Module:
    """The slim model saved in ``directory`` by :func:`save_pruned`, its tensors on ``device``.

    The original architecture is rebuilt on ``meta`` from the recipe (Hugging Face class and
    config, or the saved constructor) or copied to ``meta`` from ``base_model`` (which is not
    changed; pass the model as it was before pruning, typically constructed under
    ``with torch.device('meta'):``), then turned into the slim model and given the weights.
    """
    where = Path(directory)
    if not (where / RECIPE_FILE).is_file() or not (where / WEIGHTS_FILE).is_file():
        raise InvalidInputError(f"{where} does not hold a model saved by save_pruned (no {RECIPE_FILE} and "
                                f"{WEIGHTS_FILE}).")
    recipe = json.loads((where / RECIPE_FILE).read_text())
    from safetensors.torch import load_file

    tensors = _aligned(load_file(str(where / WEIGHTS_FILE), device=str(device)))
    model = apply(recipe, _build_base(recipe["origin"], base_model, where), tensors)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if left:
        raise RewriteError(f"after loading {where}, tensors {left[:5]} have no values: the directory is incomplete.")
    return model


_ALIGN = 64


def _aligned(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors, each copied to memory of its own where it is not 64-byte aligned (safetensors
    hands out views into the file's bytes at any offset; CPU kernels then take other vector paths
    and sum in another order, so outputs would differ from the saved model's in the last bits)."""
    for name, t in tensors.items():
        if t.device.type == "cpu" and t.numel() and t.data_ptr() % _ALIGN:
            tensors[name] = t.clone()
    return tensors


def _check(saved: nn.Module, loaded: nn.Module, pruned: PruningIR | nn.Module) -> None:
    """Raise when ``loaded`` is not ``saved``: tensors, then outputs on the IR's example calls."""
    a = dict(saved.state_dict(keep_vars=True))
    b = dict(loaded.state_dict(keep_vars=True))
    if a.keys() != b.keys():
        raise RewriteError(f"save_pruned: the reloaded model's tensors are {sorted(b.keys() ^ a.keys())[:5]} apart "
                           "from the saved one's.")
    for k, t in a.items():
        if t.shape != b[k].shape or t.dtype != b[k].dtype or not torch.equal(t.detach().cpu(), b[k].detach().cpu()):
            raise RewriteError(f"save_pruned: tensor {k!r} does not come back equal.")
    if not isinstance(pruned, PruningIR):
        return
    for i, (args, kwargs, modes) in enumerate(pruned.snapshot().calls()):
        want, got = _outputs(saved, args, kwargs, modes), _outputs(loaded, args, kwargs, modes)
        same = len(want) == len(got) and all(
            x.shape == y.shape and torch.equal(x.nan_to_num(), y.nan_to_num()) for x, y in zip(want, got, strict=False))
        if not same:
            raise RewriteError(
                f"save_pruned: the reloaded {type(saved).__name__} gives other outputs than the saved one on "
                f"{'the example call' if i == 0 else f'extra call {i}'}: some state of the slim model is not "
                "plain data the recipe can hold (an object attribute changed by pruning?). Save it with "
                "torch.save instead, and report the model.")


def _outputs(model: nn.Module, args: Any, kwargs: dict[str, Any], modes: dict[str, bool]) -> list[torch.Tensor]:
    with torch.no_grad(), call_modes(model, modes, seed="always"):
        return [t.detach().cpu() for t in flat_tensors(model(*args, **kwargs))]
