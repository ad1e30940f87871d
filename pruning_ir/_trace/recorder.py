"""Record a model's forward pass as a :class:`~pruning_ir._ir.graph.Graph` of ATen ops.

Why a dispatch-level recorder and not ``torch.fx.symbolic_trace`` or
``torch.export``: the model really runs (on its own device: ``meta`` tensors
cost no memory), so data-dependent Python control flow, HF ``transformers``
models and custom ``autograd.Function`` s need no special support; every op
arrives below autograd as ATen, a closed vocabulary that a few rule files
cover; module paths come from forward hooks; and ``leaf_modules`` are honoured
by recording one opaque node per call. ``benchmarks/engine_speed.py`` measures
the build time against Torch-Pruning's dependency graph.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from .._ir.graph import CONST_LIMIT, Graph, Node, Value, ValueRef
from ..errors import TraceError
from ..modules import PrunedMultiheadAttention, explicit_forward, traces_explicitly
from .merge import merge_call
from .meta import meta_call
from .run import flat_tensors, in_modes, kept_buffers

log = logging.getLogger(__name__)

# Ops that only manage autograd or profiling state; they are not recorded.
_SKIP = {"aten.detach", "aten._has_compatible_shallow_copy_type", "profiler._record_function_enter_new",
         "profiler._record_function_exit", "aten.lift_fresh"}


Observer = Callable[[Node, list[Any]], None]


_NO_DEFAULT = object()


class _OpInfo(NamedTuple):
    """What the recorder reads of an ATen overload on every call, read from it once (the schema's
    accessors are C++ calls): its packet's name (``aten.add``), ``(name, kwarg_only, default or
    _NO_DEFAULT)`` per schema argument (``None`` without a schema), and ``(position, name)`` of
    the arguments it writes to."""

    name: str
    args: tuple[tuple[str, bool, Any], ...] | None
    written: tuple[tuple[int, str], ...]


_OPS: dict[Any, _OpInfo] = {}


def _op_info(func: Any) -> _OpInfo:
    info = _OPS.get(func)
    if info is None:
        packet = getattr(func, "overloadpacket", func)
        namespace = getattr(packet, "__module__", "torch.ops.aten").rsplit(".", 1)[-1]
        schema = getattr(func, "_schema", None)
        args = None if schema is None else tuple(
            (a.name, a.kwarg_only, a.default_value if a.has_default_value() else _NO_DEFAULT) for a in schema.arguments)
        written = () if schema is None or not schema.is_mutable else tuple(
            (i, a.name) for i, a in enumerate(schema.arguments) if a.alias_info is not None and a.alias_info.is_write)
        info = _OPS[func] = _OpInfo(f"{namespace}.{packet.__name__}", args, written)
    return info


def op_name(func: Any) -> str:
    """``aten.add.Tensor`` -> ``"aten.add"`` (the overload packet)."""
    return _op_info(func).name


class _Recorder(TorchDispatchMode):
    def __init__(self, graph: Graph, names: dict[int, tuple[str, str]], observer: Observer | None = None) -> None:
        super().__init__()
        self.graph = graph
        self.observer = observer
        self.names = names
        self.current: dict[int, int] = {}  # id(tensor) -> current value id, while the tensor lives
        self.refs: dict[int, weakref.ref[torch.Tensor]] = {}  # id(tensor) -> its weak reference
        self.stack: list[str] = []
        self.suppress = 0
        self.entered: list[BaseException | None] = []  # beside ``stack``: the exception being handled then
        self.raised_in: list[tuple[BaseException, tuple[str, ...], str]] = []
        """``(exception, module stack, op)``: where each exception raised in forward left its
        innermost module (``op``: the ATen op that raised it, if one did)."""
        """``id(exception) -> module stack`` where each exception left its innermost module."""

    # ------------------------------------------------------------------ values
    def new_value(self, t: torch.Tensor, kind: str, name: str = "", producer: int = -1) -> int:
        vid = len(self.graph.values)
        self.graph.values.append(Value(vid, tuple(t.shape), str(t.dtype), kind, name, producer))
        self.track(t, vid)
        return vid

    def track(self, t: torch.Tensor, vid: int) -> None:
        """Map ``t`` to value ``vid`` until ``t`` is freed (then its id may be reused by another
        tensor). Holding every traced tensor instead kept all activations alive: slower, and
        the peak memory of the whole forward."""
        key = id(t)
        self.current[key] = vid
        if key not in self.refs:
            self.refs[key] = weakref.ref(t, functools.partial(self._forget, key))

    def _forget(self, key: int, _ref: object) -> None:
        self.current.pop(key, None)
        self.refs.pop(key, None)

    def value_of(self, t: torch.Tensor) -> int:
        vid = self.current.get(id(t))
        if vid is not None:
            return vid
        named = self.names.get(id(t))
        if named is not None:
            kind, name = named
            vid = self.new_value(t, kind, name)
            self.graph.params[name] = vid
            return vid
        vid = self.new_value(t, "const")
        if t.device.type != "meta" and t.numel() <= CONST_LIMIT:
            self.graph.consts[vid] = t.detach()
        return vid

    def encode(self, obj: Any) -> Any:
        t = type(obj)
        if t is int or t is bool or t is float or obj is None or t is str:  # most arguments
            return obj
        if t is list and all(type(o) is int for o in obj):  # sizes, strides, dims
            return list(obj)
        if isinstance(obj, torch.Tensor):
            return ValueRef(self.value_of(obj))
        if isinstance(obj, (list, tuple)):
            enc = [self.encode(o) for o in obj]
            return enc if isinstance(obj, list) else tuple(enc)
        if isinstance(obj, dict):
            return {k: self.encode(v) for k, v in obj.items()}
        if isinstance(obj, (torch.dtype, torch.device, torch.layout, torch.memory_format)):
            return str(obj)
        return obj

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if self.suppress:
            return func(*args, **kwargs)
        name = op_name(func)
        if name in _SKIP:
            out = func(*args, **kwargs)
            if name == "aten.detach" and isinstance(out, torch.Tensor) and isinstance(args[0], torch.Tensor):
                src = self.current.get(id(args[0]))
                if src is not None:
                    self.track(out, src)
            return out
        # encode inputs before running: an in-place op must see the old version
        bound = self.encode(bind(func, args, kwargs))
        alias_write = _writes_to_view(func, args, kwargs)
        out = self._run(name, func, args, kwargs)
        self._record(name, bound, out, alias_write, getattr(func, "_overloadname", ""))
        return out

    def _run(self, name: str, func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        """Run one call; on failure remember where (see :func:`_raised_where`)."""
        try:
            return meta_call(func, args, kwargs)
        except Exception as exc:
            self.raised_in.append((exc, tuple(self.stack), name))
            raise

    def _record(self, name: str, bound: dict[str, Any], out: Any, alias_write: list[torch.Tensor],
                overload: str = "") -> None:
        """Append the node of a finished call and give its tensor outputs new values."""
        nid = len(self.graph.nodes)
        flat, _ = pytree.tree_flatten(out)
        outputs = [self.new_value(o, "op", producer=nid) if isinstance(o, torch.Tensor) else -1 for o in flat]
        node = Node(nid, name, (), bound, outputs, None, tuple(self.stack), overload=overload)
        if name == "aten._local_scalar_dense" and isinstance(out, (bool, int, float)):
            node.kwargs["__value__"] = out  # a tensor's value became a Python number (item(), int(t))
        if alias_write:
            node.facts = []
            node.kwargs["__alias_write__"] = [ValueRef(self.value_of(b)) for b in alias_write]
        self.graph.nodes.append(node)
        if self.observer is not None:
            self.observer(node, flat)


    def composite(self, name: str, overload: Any, func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        """Record a composite call (run with recording suppressed) as one node named ``name``."""
        bound = self.encode(bind(overload, args, kwargs))
        self.suppress += 1
        try:
            out = self._run(name, func, args, kwargs)
        finally:
            self.suppress -= 1
        self._record(name, bound, out, [], getattr(overload, "_overloadname", ""))
        return out


# Composite functions recorded as one node, above the dispatcher: the kernel that runs them
# (flash, memory-efficient, math) depends on the device, the dtype and the head sizes, so the
# ATen ops below them differ between the traced model, its meta copy and the slim model.
COMPOSITES = {torch.nn.functional.scaled_dot_product_attention:
               ("aten.scaled_dot_product_attention", torch.ops.aten.scaled_dot_product_attention.default)}


class _CompositeRecorder(TorchFunctionMode):
    def __init__(self, rec: _Recorder) -> None:
        super().__init__()
        self.rec = rec

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        spec = COMPOSITES.get(func)
        if spec is None or self.rec.suppress:
            return func(*args, **kwargs)
        return self.rec.composite(spec[0], spec[1], func, args, kwargs)


def type_key(cls: type) -> str:
    """A class's import path, ``torch.nn.modules.linear.Linear``: what leaf nodes record and leaf
    handlers are keyed by (a user's own class named ``Linear`` is another key)."""
    return f"{cls.__module__}.{cls.__qualname__}"


def bind(func: Any, args: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """All arguments of an ATen call by schema name, defaults filled in."""
    spec = _op_info(func).args
    if spec is None:
        return {**{f"arg{i}": a for i, a in enumerate(args)}, **kwargs}
    bound: dict[str, Any] = {}
    n = len(args)
    for i, (name, kwarg_only, default) in enumerate(spec):
        if i < n and not kwarg_only:
            bound[name] = args[i]
        elif name in kwargs:
            bound[name] = kwargs[name]
        elif default is not _NO_DEFAULT:
            bound[name] = list(default) if type(default) is list else default  # each node its own list
    return bound


def _writes_to_view(func: Any, args: Any, kwargs: dict[str, Any]) -> list[torch.Tensor]:
    """Bases of the views an in-place op writes to (aliased mutation)."""
    written = _op_info(func).written
    if not written:
        return []
    bases: list[torch.Tensor] = []
    for i, name in written:
        t = args[i] if i < len(args) else kwargs.get(name)
        if isinstance(t, torch.Tensor) and t._base is not None:
            bases.append(t._base)
    return bases


def _leaf_match(module: nn.Module, leaves: list[Any]) -> bool:
    for leaf in leaves:
        if isinstance(leaf, type):
            if isinstance(module, leaf):
                return True
        elif module is leaf:
            return True
    return False


ExtraCall = tuple[tuple[Any, ...], dict[str, Any], "dict[str, bool] | None"]
"""``(args, kwargs, modes)`` of a call traced after the example call; ``modes`` maps module
paths to their training flag during the call (``None``: as they are)."""


def _tensor_names(model: nn.Module, graph: Graph) -> dict[int, tuple[str, str]]:
    """``id(tensor) -> (kind, name)`` of every parameter and buffer; tied names go to ``graph.aliases``."""
    names: dict[int, tuple[str, str]] = {}
    for kind, named in (("param", model.named_parameters(remove_duplicate=False)),
                        ("buffer", model.named_buffers(remove_duplicate=False))):
        for name, t in named:
            if id(t) in names:
                graph.aliases[name] = names[id(t)][1]
            else:
                names[id(t)] = (kind, name)
    return names


def _module_hooks(model: nn.Module, named: list[tuple[str, nn.Module]], rec: _Recorder, leaves: list[Any]
                  ) -> list[Any]:
    """Forward hooks on the modules ``named`` (``model``'s) that keep ``rec.stack`` (the module path
    of every op) and record each leaf module's call as one node; returns their handles."""
    handles = []
    for mname, mod in named:
        is_leaf = bool(leaves) and mod is not model and _leaf_match(mod, leaves)

        def pre(m: nn.Module, a: Any, kw: Any, _n: str = mname, _leaf: bool = is_leaf) -> None:
            rec.stack.append(_n)
            rec.entered.append(sys.exc_info()[1])
            if _leaf and not rec.suppress:
                rec.leaf_inputs = (rec.encode(tuple(a)), rec.encode(dict(kw)))  # type: ignore[attr-defined]
            if _leaf:
                rec.suppress += 1

        def post(m: nn.Module, a: Any, kw: Any, out: Any, _n: str = mname, _leaf: bool = is_leaf) -> None:
            ours = bool(rec.stack) and rec.stack[-1] == _n
            # an always-called hook also runs while an exception leaves forward: one that was not
            # already being handled when the module was entered (a module may run in an except block)
            exc = sys.exc_info()[1]
            leaving = exc is not None and ours and exc is not rec.entered[-1]
            if leaving and not any(e is exc for e, _, _ in rec.raised_in):
                rec.raised_in.append((exc, tuple(rec.stack), ""))  # type: ignore[arg-type]
            if _leaf:
                rec.suppress -= 1
                if not rec.suppress and not leaving:
                    _record_leaf(rec, m, _n, out)
            if ours:
                rec.stack.pop()
                rec.entered.pop()

        handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(mod.register_forward_hook(post, with_kwargs=True, always_call=True))
    return handles


def _raised_where(rec: _Recorder, exc: BaseException) -> tuple[tuple[str, ...], str]:
    """The module stack (and op) where ``exc`` was raised: where it, or the exception it was raised
    from, left its innermost module; else the first op that failed."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        for e, stack, op in rec.raised_in:
            if e is cur:
                return stack, op
        cur = cur.__cause__ or cur.__context__
    return next(((stack, op) for _, stack, op in rec.raised_in if op), ((), ""))


def _record_leaf(rec: _Recorder, module: nn.Module, path: str, out: Any) -> None:
    """Append the node of a leaf module's finished call (its parameters in ``__params__``)."""
    enc_a, enc_kw = rec.leaf_inputs  # type: ignore[attr-defined]
    params = {f"{path}.{k}" if path else k: rec.encode(p) for k, p in
              list(module.named_parameters()) + list(module.named_buffers())}
    enc_kw = dict(enc_kw, __params__=params)
    nid = len(rec.graph.nodes)
    flat, _ = pytree.tree_flatten(out)
    outputs = [rec.new_value(o, "op", producer=nid) if isinstance(o, torch.Tensor) else -1 for o in flat]
    rec.graph.nodes.append(Node(nid, "leaf_module", enc_a, enc_kw, outputs, None, tuple(rec.stack),
                                leaf=type_key(type(module))))


def _call(rec: _Recorder, model: nn.Module, named: list[tuple[str, nn.Module]], args: tuple[Any, ...],
          kwargs: dict[str, Any], modes: dict[str, bool] | None, seed: Literal["training", "never"] = "training"
          ) -> list[int]:
    """Run one call under the recorder; the value ids of its tensor outputs."""
    with in_modes(model, modes, seed, named), torch.no_grad(), rec, _CompositeRecorder(rec):
        out = model(*args, **kwargs)
    return [rec.current[id(t)] for t in flat_tensors(out) if id(t) in rec.current]


def record(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
           leaf_modules: list[Any] | None = None, observer: Observer | None = None,
           extra: list[ExtraCall] | None = None, seeded_training: bool = True) -> Graph:
    """Run ``model(*args, **kwargs)`` once and return the recorded graph.

    ``observer(node, outputs)`` is called after each recorded ATen op with the op's
    flattened outputs (real tensors): calibration criteria read activations this way,
    with node numbers that match the IR's graph whenever the model takes the same path.
    ``extra`` calls are recorded after it into the same graph (``graph.extra_calls``), each
    with its modules' training flags set as given, then put back. A call with a module in
    training mode runs under :func:`~pruning_ir._trace.conditions.deterministic` (dropout keeps
    everything, random decisions seeded, as verification runs it) unless ``seeded_training`` is
    off (calibration: the user's own training randomness).
    """
    graph = Graph()
    rec = _Recorder(graph, _tensor_names(model, graph), observer)
    leaves = list(leaf_modules or [])
    named = list(model.named_modules())  # one walk of the module tree for all below
    # tracing runs forward once: keep plain attributes (caches filled in forward; saved before the
    # hooks go in: an attribute may be a module's hook dict) and buffers (BN running stats in
    # train mode) as they were
    attrs = _save_attributes([m for _, m in named])
    handles = _module_hooks(model, named, rec, leaves)
    buffers = contextlib.ExitStack()
    buffers.enter_context(kept_buffers(model))
    # stock nn.MultiheadAttention runs as explicit ops (see pruning_ir.modules); no fused fast paths
    explicit = {p: m for p, m in named if traces_explicitly(m) and not (leaves and _leaf_match(m, leaves))}
    for m in explicit.values():
        m.forward = explicit_forward(m)  # type: ignore[method-assign]
    graph.explicit_modules = set(explicit) | {p for p, m in named if isinstance(m, PrunedMultiheadAttention)}
    _fastpath_off()
    try:
        for i, t in enumerate(pytree.tree_leaves((args, kwargs))):
            if isinstance(t, torch.Tensor):
                graph.inputs.append(rec.new_value(t, "input", name=f"input[{i}]"))
        graph.outputs.extend(_call(rec, model, named, args, kwargs, None, "training" if seeded_training else "never"))
        for e_args, e_kwargs, modes in extra or []:
            start = len(graph.nodes)
            for i, t in enumerate(pytree.tree_leaves((e_args, e_kwargs))):
                if isinstance(t, torch.Tensor) and id(t) not in rec.current:
                    rec.new_value(t, "input", name=f"call{len(graph.extra_calls) + 1}.input[{i}]")
            # as verification runs it: dropout keeps everything, random decisions seeded
            # listed again: a forward may have replaced modules (BigBird's attention), whose flags follow modes
            outs = _call(rec, model, list(model.named_modules()), e_args, e_kwargs, modes)
            primary_end = graph.extra_calls[0][0] if graph.extra_calls else start
            sequence, outs = merge_call(graph, start, primary_end, outs)
            graph.extra_calls.append((start, outs, sequence))
    except TraceError:
        raise
    except Exception as exc:
        stack, op = _raised_where(rec, exc)
        where = stack[-1] if stack else ""
        at = f" at {op}" if op else ""
        raise TraceError(
            f"running {type(model).__name__} on the example inputs failed inside module "
            f"'{where or '<root>'}'{at}: {type(exc).__name__}: {exc}. Check that example_inputs "
            "run the model (model(*example_inputs) must work), or pass that module in "
            "leaf_modules=[...] to keep it opaque.", module=where, raised=True,
        ) from exc
    finally:
        for h in handles:
            h.remove()
        rec.refs.clear()
        rec.raised_in.clear()  # exceptions hold their frames (and tensors) alive
        buffers.close()
        for m in explicit.values():  # before the restore, which puts back a forward of the user's own
            m.__dict__.pop("forward", None)
        _restore_attributes(attrs)
        _fastpath_restore()
    return graph


_FASTPATH_LOCK = threading.Lock()
_fastpath_state: list[Any] = [0, None]  # [traces running, the user's setting before the first]


def _fastpath_off() -> None:
    """Switch PyTorch's fused MHA fast path off while any trace runs (in any thread); the last
    trace to finish puts the user's setting back (a save/restore per call would leave it off
    when two traces overlap)."""
    with _FASTPATH_LOCK:
        if _fastpath_state[0] == 0:
            _fastpath_state[1] = torch.backends.mha.get_fastpath_enabled()
            torch.backends.mha.set_fastpath_enabled(False)
        _fastpath_state[0] += 1


def _fastpath_restore() -> None:
    with _FASTPATH_LOCK:
        _fastpath_state[0] -= 1
        if _fastpath_state[0] == 0:
            torch.backends.mha.set_fastpath_enabled(bool(_fastpath_state[1]))


_Saved = list[tuple[nn.Module, dict[str, Any], dict[str, Any]]]


def _save_attributes(modules: list[nn.Module]) -> _Saved:
    """Plain attributes of ``modules`` (every module of a model), with shallow copies of dict/list
    containers."""
    out: _Saved = []
    for mod in modules:
        plain = {k: v for k, v in mod.__dict__.items() if k[:1] != "_"}
        contents = {k: (dict(v) if isinstance(v, dict) else list(v)) for k, v in plain.items()
                    if isinstance(v, (dict, list))}
        out.append((mod, plain, contents))
    return out


def _restore_attributes(saved: _Saved) -> None:
    for mod, plain, contents in saved:
        d = mod.__dict__
        for k in [k for k in d if k[:1] != "_" and k not in plain]:
            delattr(mod, k)
        for k, v in plain.items():
            if d.get(k) is not v:
                d[k] = v
        for k, c in contents.items():
            v = plain[k]
            if isinstance(v, dict):
                v.clear()
                v.update(c)  # type: ignore[arg-type]
            elif isinstance(v, list):
                v[:] = c
