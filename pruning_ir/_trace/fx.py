"""The recorded graph as a ``torch.fx.GraphModule`` of ATen calls that replays the traced call.

Each recorded node becomes a ``call_function`` of its ATen overload with the recorded arguments
(dtype, layout, memory format and device arguments decoded back from their recorded text), a
leaf module's node a ``call_module``; parameters and buffers are ``get_attr`` of the model's own
tensors (the module shares them), constants the graph kept are buffers of the module, inputs are
placeholders in the order of the call's flattened tensors, and the output is the tuple of the
call's flattened tensor outputs. Sizes are the traced ones: the replay is of *this* call (its
shapes, and the values Python read from tensors while tracing). It is a fidelity check of the
trace: run on the example inputs, it gives the model's outputs.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx, nn

from .._ir.graph import SAME_AS, Graph, Node, ValueRef
from .._ir.ops import op_packet
from ..errors import TraceError

_INTERNAL = ("__value__", "__alias_write__", "__params__")
_ENUM_TYPES = ("int", "Optional[int]", "ScalarType", "Optional[ScalarType]", "Layout", "Optional[Layout]",
               "MemoryFormat", "Optional[MemoryFormat]")


def _overload(node: Node) -> Any:
    return getattr(op_packet(node.op), node.overload or "default")


def _decode(value: Any, type_name: str) -> Any:
    if isinstance(value, str):
        if "Device" in type_name:
            return torch.device(value)
        if type_name in _ENUM_TYPES and value.startswith("torch."):
            return getattr(torch, value.removeprefix("torch."))
    if isinstance(value, list) and type_name.startswith("List[") and "Device" in type_name:
        return [torch.device(v) if isinstance(v, str) else v for v in value]
    return value


def _refs(obj: Any, env: dict[int, fx.Node], node: Node) -> Any:
    if isinstance(obj, ValueRef):
        got = env.get(obj.vid)
        if got is None:
            raise TraceError(f"to_fx: node #{node.nid} {node.op} in '{node.module or '<root>'}' reads value "
                             f"v{obj.vid}, a constant the graph did not keep (over the kept size, or this IR was "
                             "derived by prune: build a PruningIR of the slim model to replay it).",
                             module=node.module)
        return got
    if isinstance(obj, list):
        return [_refs(o, env, node) for o in obj]
    if isinstance(obj, tuple):
        return tuple(_refs(o, env, node) for o in obj)
    if isinstance(obj, dict):
        return {k: _refs(v, env, node) for k, v in obj.items()}
    return obj


def _single_tensor(func: Any) -> bool:
    returns = func._schema.returns
    return len(returns) == 1 and str(returns[0].type) == "Tensor"


def to_graph_module(graph: Graph, model: nn.Module, nodes: list[Node]) -> fx.GraphModule:
    """The replay described in the module docstring, of ``nodes`` (the example call's)."""
    g = fx.Graph()
    root: dict[str, Any] = {}
    env: dict[int, fx.Node] = {}
    for i, vid in enumerate(graph.inputs):
        env[vid] = g.placeholder(f"input_{i}")
    names = {vid: name for name, vid in graph.params.items()}
    tensors = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))
    for vid, name in names.items():
        if name in tensors:
            root[name] = tensors[name]
            env[vid] = g.get_attr(name)
    consts = getattr(graph, "consts", {})
    for vid, t in consts.items():
        root[f"_const_{vid}"] = t
        env[vid] = g.get_attr(f"_const_{vid}")
    modules = dict(model.named_modules())
    for node in nodes:
        if node.op == SAME_AS:
            continue
        kwargs = {k: v for k, v in node.kwargs.items() if k not in _INTERNAL}
        if node.leaf:
            path = node.module
            root[path] = modules[path]
            out = g.call_module(path, _refs(node.args, env, node), _refs(kwargs, env, node))
            single = len(node.outputs) == 1
        else:
            func = _overload(node)
            types = {a.name: str(a.type) for a in func._schema.arguments}
            kwargs = {k: _decode(v, types.get(k, "")) for k, v in kwargs.items()}
            out = g.call_function(func, _refs(node.args, env, node), _refs(kwargs, env, node))
            single = _single_tensor(func)
        if single and len(node.outputs) == 1:
            if node.outputs[0] >= 0:
                env[node.outputs[0]] = out
            continue
        for i, vid in enumerate(node.outputs):
            if vid >= 0:
                env[vid] = g.call_function(operator.getitem, (out, i))
    g.output(tuple(_refs(ValueRef(v), env, nodes[-1]) for v in graph.outputs))
    return fx.GraphModule(root, g, class_name=f"{type(model).__name__}Replay")
