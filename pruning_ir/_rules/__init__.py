"""Per-op channel rules, registered by ATen overload packet (``"aten.add"``).

A rule reads its node's input layouts through :class:`Ctx`, declares couplings
(``ctx.unify``), gives every output axis a layout (``ctx.set_out``) and records
the integer arguments that depend on channel sizes (``ctx.fact``) so that the
rewrite can update them. A rule that cannot express an index mapping marks the
axes rigid (``ctx.rigid``): unprunable, never wrongly sliced.

Adding an op = one rule here (its slicing follows from the layouts) + one toy
model in ``tests/toy_zoo.py``. See ``README.md`` in this folder.
"""

from __future__ import annotations

from .base import RULES, Ctx, Rule, broadcast, norm_dim, rule

__all__ = ["RULES", "Ctx", "Rule", "broadcast", "load_all", "norm_dim", "rule"]


def load_all() -> None:
    """Import the rule modules (they register themselves)."""
    from . import calls, elementwise, index, linalg, misc, norm, reduce, shape  # noqa: F401
