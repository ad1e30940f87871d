"""Gradients through run-time literal patches.

A :class:`~.hooks.LiteralShapePatch` rewrites integer arguments of ATen calls in a
``TorchDispatchMode``, which runs *below* autograd: by the time it changes ``groups=12`` to
``groups=9`` or a slice's ``start``, autograd has already recorded the call with the old
arguments, and its backward formula (conv groups, slice bounds, split sizes) reads those. The
forward is right and the backward fails or, worse, is silently wrong.

The fix keeps the forward as it is and replaces the gradient path. While one top-level torch
function of a patched module runs with gradients wanted, every ATen call it makes is written
to a :class:`Tape` (the function, its final arguments, its outputs). When the patch rewrote
any of them, the function's outputs are replaced by those of :class:`_Replay`, a custom
``autograd.Function`` whose forward hands back the values already computed and whose
backward replays the tape as ordinary ATen calls *above* autograd (with the rewritten
arguments) and differentiates that. Calls the patch left alone keep their ordinary autograd
graph. Costs: one extra run of the rewritten calls in backward, for the few calls that carry a
literal. Double backward through a rewritten call is refused (``once_differentiable``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.autograd.function import once_differentiable
from torch.utils import _pytree as pytree

from ..errors import RewriteError


@dataclass(frozen=True)
class _Slot:
    """A tensor produced by an earlier call of the tape."""

    index: int


@dataclass(frozen=True)
class _Input:
    """A tensor from outside the tape that requires grad: an input of :class:`_Replay`."""

    index: int


@dataclass
class Tape:
    """ATen calls of one torch-function call of a patched module, in order.

    ``calls``: ``(op, args, kwargs, output slots)`` with tensors replaced by :class:`_Slot`
    (made earlier in the tape), :class:`_Input` (from outside, requires grad) or kept as
    constants. ``rewrote``: the patch changed an argument of at least one call.
    """

    module: str
    calls: list[tuple[Any, Any, Any, list[int | None]]] = field(default_factory=list)
    slots: dict[int, int] = field(default_factory=dict)  # id(tensor) -> slot, while recording
    inputs: list[torch.Tensor] = field(default_factory=list)
    input_ids: dict[int, int] = field(default_factory=dict)
    held: list[torch.Tensor] = field(default_factory=list)  # keeps ids unique while recording
    outputs: list[torch.Tensor] = field(default_factory=list)  # slot -> the forward's tensor
    rewrote: bool = False
    mutates: str | None = None
    rng: tuple[torch.Tensor, list[torch.Tensor]] = field(default_factory=lambda: _rng_state())
    """Random state when the call began: the replay draws what the forward drew (dropout)."""
    versions: list[tuple[torch.Tensor, int]] = field(default_factory=list)
    """Constants the replay reads, with their versions: changed in place since, the replay refuses."""

    def _ref(self, t: torch.Tensor) -> Any:
        slot = self.slots.get(id(t))
        if slot is not None:
            return _Slot(slot)
        if t.requires_grad:
            k = self.input_ids.get(id(t))
            if k is None:
                k = self.input_ids[id(t)] = len(self.inputs)
                self.inputs.append(t)
            return _Input(k)
        self.held.append(t)
        self.versions.append((t, t._version))
        return t

    def record(self, func: Any, args: Any, kwargs: dict[str, Any], out: Any, rewrote: bool) -> None:
        """Write one ATen call (``func`` with its final arguments) and its output."""
        self.rewrote = self.rewrote or rewrote
        schema = getattr(func, "_schema", None)
        if schema is not None and schema.is_mutable and self.mutates is None:
            for i, arg in enumerate(schema.arguments):
                written = arg.alias_info is not None and arg.alias_info.is_write
                t = args[i] if i < len(args) and not arg.kwarg_only else kwargs.get(arg.name)
                if written and isinstance(t, torch.Tensor) and id(t) not in self.slots:
                    self.mutates = str(func)  # writes into a tensor from outside the call
        a, k = pytree.tree_map_only(torch.Tensor, self._ref, (args, kwargs))
        out_slots: list[int | None] = []
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.slots[id(t)] = len(self.outputs)
                out_slots.append(len(self.outputs))
                self.held.append(t)
                self.outputs.append(t.detach())
            else:
                out_slots.append(None)
        self.calls.append((func, a, k, out_slots))

    def slot_of(self, t: torch.Tensor) -> int | None:
        return self.slots.get(id(t))


class _Replay(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tape: Tape, wanted: list[int], *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.tape = tape
        ctx.wanted = wanted
        ctx.save_for_backward(*inputs)
        return tuple(tape.outputs[s].detach() for s in wanted)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[Any, ...]:
        tape: Tape = ctx.tape
        inputs = ctx.saved_tensors
        leaves = [t.detach().requires_grad_(t.requires_grad) for t in inputs]
        env: dict[int, torch.Tensor] = {}

        def resolve(x: Any) -> Any:
            if isinstance(x, _Slot):
                return env[x.index]
            if isinstance(x, _Input):
                return leaves[x.index]
            return x

        for t, version in tape.versions:
            if t._version != version:
                raise RuntimeError(
                    f"a tensor that module '{tape.module or '<root>'}' read in a call whose literal sizes pruning_ir "
                    "patches was modified in place before backward; its gradient cannot be replayed")
        cpu_state, cuda_states = tape.rng
        devices = list(range(len(cuda_states)))
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            torch.set_rng_state(cpu_state)
            if cuda_states:
                torch.cuda.set_rng_state_all(cuda_states)
            for func, a, k, out_slots in tape.calls:
                a2, k2 = pytree.tree_map(resolve, (a, k), is_leaf=lambda x: isinstance(x, (_Slot, _Input)))
                res = func(*a2, **k2)
                for slot, t in zip(out_slots, pytree.tree_leaves(res), strict=False):
                    if slot is not None:
                        env[slot] = t
        outs = [env[s] for s in ctx.wanted]
        pairs = [(o, g) for o, g in zip(outs, grads, strict=True) if o.requires_grad and g is not None]
        diff = [i for i, leaf in enumerate(leaves) if leaf.requires_grad]
        got: tuple[torch.Tensor | None, ...] = ()
        if pairs and diff:
            got = torch.autograd.grad([o for o, _ in pairs], [leaves[i] for i in diff], [g for _, g in pairs],
                                      allow_unused=True)
        result: list[torch.Tensor | None] = [None] * len(leaves)
        for i, g in zip(diff, got, strict=False):
            result[i] = g
        return (None, None, *result)


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor]]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return torch.get_rng_state(), cuda


def replace_outputs(tape: Tape, out: Any) -> Any:
    """``out`` (what the torch function returned) with its tensors made by the tape replaced by
    :class:`_Replay`'s outputs, so that their gradients follow the rewritten calls."""
    if tape.mutates is not None:
        raise RewriteError(
            f"module '{tape.module or '<root>'}' writes in place ({tape.mutates}) inside a call whose "
            "literal channel sizes pruning_ir patches at run time; gradients through it cannot be made "
            "right. Run it without gradients, or keep this module's channels: pass it in "
            "leaf_modules=[...] when building the PruningIR."
        )
    flat, spec = pytree.tree_flatten(out)
    wanted = [s for t in flat if isinstance(t, torch.Tensor) and (s := tape.slot_of(t)) is not None
              and t.is_floating_point()]
    if not wanted:
        return out
    fresh = _Replay.apply(tape, wanted, *tape.inputs)
    by_slot = dict(zip(wanted, fresh, strict=True))
    new = [by_slot.get(slot, t) if isinstance(t, torch.Tensor) and (slot := tape.slot_of(t)) is not None else t
           for t in flat]
    # the replay needs only the calls, their constants and the inputs (saved by _Replay)
    tape.held.clear()
    tape.slots.clear()
    tape.input_ids.clear()
    tape.inputs = []
    tape.outputs = []
    return pytree.tree_unflatten(new, spec)
