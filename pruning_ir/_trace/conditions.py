"""The conditions a slim model is checked under besides the traced call.

Users fine-tune (train mode, backward) and batch differently. To compare a slim model with the
masked original there, both must see the same randomness. Dropout draws as many numbers as
its input has elements, so after pruning the draws of every later random op would shift:
:class:`Deterministic` makes dropout keep everything (``bernoulli`` gives ones, without drawing)
and both runs start from the same seeds (torch, numpy, ``random``), so random ops whose sizes
do not depend on channels (stochastic depth, wav2vec2's time masks) draw alike.
:func:`other_batch` builds the same call at another batch size.
"""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

_BERNOULLI_INPLACE = {torch.ops.aten.bernoulli_.float, torch.ops.aten.bernoulli_.Tensor}
_BERNOULLI = {torch.ops.aten.bernoulli.default, torch.ops.aten.bernoulli.p}


class _KeepAll(TorchDispatchMode):
    """Dropout keeps every entry (still scaled by ``1/(1-p)``, as in training)."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in _BERNOULLI_INPLACE:
            return args[0].fill_(1)
        if func in _BERNOULLI:
            return torch.ones_like(args[0])
        if func is torch.ops.aten.native_dropout.default:
            x, p, train = args[0], args[1], args[2] if len(args) > 2 else kwargs.get("train")
            if not train or p == 0:
                return x.clone(), torch.ones_like(x, dtype=torch.bool)
            return x * (1.0 / (1.0 - p)), torch.ones_like(x, dtype=torch.bool)
        return func(*args, **kwargs)


@contextlib.contextmanager
def deterministic(seed: int = 0, keep_all: bool = True) -> Iterator[None]:
    """Run with every RNG seeded (RNG states restored after) and, with ``keep_all``, dropout
    keeping everything (a dispatch mode: leave it off where no dropout runs, it costs time)."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    # manual_seed seeds CUDA too: give the user's CUDA generators back as well
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else []):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        try:
            with _KeepAll() if keep_all else contextlib.nullcontext():
                yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def batch_size(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    """The leading size most tensor inputs share (``None`` without tensor inputs)."""
    sizes = Counter(t.shape[0] for t in pytree.tree_leaves((args, kwargs))
                    if isinstance(t, torch.Tensor) and t.dim() > 0)
    return sizes.most_common(1)[0][0] if sizes else None


def other_batch(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """The call with one more example in the batch (tensors whose leading size is the batch
    size get their first example appended again, with a little noise on floating inputs so
    that rows differ); ``None`` when there is no batch (no tensor input, or an empty one)."""
    b = batch_size(args, kwargs)
    if not b:
        return None
    gen = torch.Generator().manual_seed(1)

    def grow(t: Any) -> Any:
        if not isinstance(t, torch.Tensor) or t.dim() == 0 or t.shape[0] != b:
            return t
        extra = t[:1].clone()
        if extra.is_floating_point() and extra.device.type != "meta":
            noise = torch.randn(extra.shape, generator=gen, dtype=extra.dtype).to(extra.device)
            extra = extra + 0.1 * noise * extra.abs().mean().clamp(min=1e-3)
        return torch.cat([t, extra], 0)

    new_args, new_kwargs = pytree.tree_map(grow, (args, kwargs))
    return tuple(new_args), dict(new_kwargs)
