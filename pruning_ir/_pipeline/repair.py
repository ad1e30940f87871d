"""Repairs of a slim model that fails verification: other values of ambiguous attributes, guesses
put back, patches of literal sizes, until verification passes or the repairs run out."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Any

from torch import nn

from .._ir.graph import Graph
from .._ir.snapshot import Snapshot
from .._rewrite.patch import ModuleEdits, install, patch_of
from .._rewrite.verify import VerifyFailure, verify_graph
from ..errors import RewriteError
from .options import MAX_COMBINATIONS, MAX_TRIES, PruneOptions

log = logging.getLogger(__name__)


@dataclass
class Choices:
    """Attribute values verification may try for one module of a slim model.

    Two kinds of attributes: those that facts of equal old value left *ambiguous* (kept at their
    old value; options: the old value and every new one those facts took, see
    :func:`~pruning_ir._rewrite.attributes.update_attributes`) and those *guessed*, set by
    matching values (options: the new value, then the old one: the guess may be wrong while the
    module's other guesses are right, ``head_dim`` matched a pruned ``v`` while
    ``num_key_value_groups`` was right). The combination in place when verification first
    failed is left out; the others are tried in three rounds: other ambiguous values with every
    guess kept; guesses put back (fewest first) with the ambiguous values as they were; both.
    Ambiguous values go fewest distinct values first (attributes of equal old value mostly keep
    equal values: a one-head attention's ``hidden_size``, ``all_head_size`` and
    ``attention_head_size``), then fewest changes; at most :data:`MAX_COMBINATIONS` of them,
    and ``limit`` (:data:`MAX_TRIES` for a user's prune) combinations in all.
    """

    names: list[str]
    olds: list[int]  # before pruning
    start: tuple[int, ...]  # in place at the first failure
    guessed: int  # the last ``guessed`` names are guesses
    every: list[tuple[int, ...]]
    todo: list[tuple[int, ...]]
    narrow: Any = None  # the module's patch edits before a put-back guess widened them

    @classmethod
    def of(cls, ambiguous: list[tuple[str, int, list[int]]], guessed: list[tuple[str, Any]],
           module: nn.Module, limit: int = MAX_TRIES) -> Choices:
        names = [n for n, _, _ in ambiguous] + [n for n, _ in guessed]
        olds = [o for _, o, _ in ambiguous] + [o for _, o in guessed]
        options = [[o, *cands] for _, o, cands in ambiguous] + [[getattr(module, n), o] for n, o in guessed]
        start = tuple(opt[0] for opt in options)
        k = len(ambiguous)
        amb = list(itertools.islice(itertools.product(*options[:k]), 4096))
        # attributes of equal old value mostly keep equal values: fewest distinct values first
        amb.sort(key=lambda c: (len(set(c)), sum(v != o for v, o in zip(c, start[:k], strict=True))))
        amb = amb[:MAX_COMBINATIONS]
        restores = list(itertools.islice(itertools.product(*options[k:]), 4096))
        restores.sort(key=lambda c: sum(v != s for v, s in zip(c, start[k:], strict=True)))
        every = [a + r for a in amb for r in restores[:1]]  # no guess put back
        every += [start[:k] + r for r in restores[1:]]  # guesses put back, ambiguous values as they were
        every += [a + r for r in restores[1:] for a in amb if a != start[:k]]  # both
        every = [c for c in every if c != start][:limit]
        return cls(names, olds, start, len(guessed), every, list(every))

    def rearm(self) -> None:
        """Try every combination again: the module got a patch since, so combinations that
        failed before may be right now."""
        self.todo = list(self.every)

    def try_next(self, module: nn.Module, *, guesses: bool) -> tuple[str, bool] | None:
        """Set the next combination (``guesses=False``: only those keeping every guess); returns
        what was set, for the log, and whether a guess was put back; or puts the starting values
        back and returns ``None`` when none is left."""
        k = len(self.names) - self.guessed
        while self.todo:
            combo = self.todo.pop(0)
            restored = combo[k:] != self.start[k:]
            if restored and not guesses:
                continue
            for name, value in zip(self.names, combo, strict=True):
                setattr(module, name, value)
            return ", ".join(f"{n}={v}" for n, v in zip(self.names, combo, strict=True)), restored
        for name, value in zip(self.names, self.start, strict=True):
            setattr(module, name, value)
        return None

    def fit_patch(self, patch: Any, restored: bool) -> None:
        """While a guess is put back the module's patch rewrites every changing size (those
        computed from the guess adapted by themselves while the patch watched, and are stale
        now); once every guess is in place again, only those it found literal under them (the
        others would also rewrite sizes that merely equal an old value, at another batch size)."""
        if restored:
            if self.narrow is None:
                self.narrow = patch.edits
            patch.widen()
        elif self.narrow is not None:
            patch.edits, self.narrow = self.narrow, None

    def log(self, path: str, module: nn.Module, changes: list[str]) -> None:
        """Bring ``changes`` (the rewrite log) in line with the values kept."""
        k = len(self.names) - self.guessed
        label = path or "<root>"
        for i, (name, old) in enumerate(zip(self.names, self.olds, strict=True)):
            now = getattr(module, name, old)
            if i >= k:
                if now != self.start[i]:  # a guess put back: it no longer happened
                    line = f"{label}.{name}: {_shown(old)} -> {_shown(self.start[i])}"  # as update_generic wrote it
                    if line in changes:
                        changes.remove(line)
                    if now != old:
                        changes.append(f"{label}.{name}: {old} -> {now} (the value verification accepted)")
            elif now != old:
                changes.append(f"{label}.{name}: {old} -> {now} (ambiguous; the value verification accepted)")


def _shown(value: Any) -> Any:
    """An attribute value as the rewrite log shows it (lists for list and tuple sizes)."""
    return list(value) if isinstance(value, (list, tuple)) else value


@dataclass
class _Repairs:
    """The repairs one prune may make to its slim model, and those made so far."""

    modules: dict[str, nn.Module]
    edits: dict[str, ModuleEdits]
    guesses: dict[str, list[tuple[str, Any]]]
    ambiguous: dict[str, list[tuple[str, int, list[int]]]]
    choices: dict[str, Choices]
    options: PruneOptions
    done: set[str]
    added: list[str]

    def act(self, exc: VerifyFailure) -> bool:
        """Repair the module verification failed in, or its nearest ancestor that can be
        repaired; whether a repair was made."""
        where = exc.module
        chain = [] if where is None else [where[:i] for i in range(len(where), 0, -1)
                                          if i == len(where) or where[i] == "."]
        return any(self._repair(path) for path in [*chain, ""] if path in self.modules)

    def _repair(self, path: str) -> bool:
        """Try the next combination of attribute values of module ``path`` (guesses put back only
        once it cannot be patched), else patch its literal sizes; whether either was done."""
        module = self.modules[path]
        ch = self.choices.get(path)
        if ch is None and (path in self.guesses or path in self.ambiguous):
            ch = self.choices[path] = Choices.of(self.ambiguous.get(path, []), self.guesses.get(path, []), module,
                                                 self.options.repair_tries)
        patchable = path in self.edits and path not in self.done
        if ch is not None:
            tried = ch.try_next(module, guesses=not patchable)
            patch = patch_of(module)
            if patch is not None:
                # out of combinations, every guess is back in place (restored=False)
                ch.fit_patch(patch, restored=tried is not None and tried[1])
            if tried is not None:
                log.debug("verification of %s: trying %s", path or "<root>", tried[0])
                if patch is not None:
                    patch.forget_skips()  # which calls the code skips follows the attributes
                return True
        if not patchable:
            return False
        e = self.edits[path]
        install(module, e.edits, e.templates, e.sigs, path=path)
        patch = patch_of(module)
        if patch is not None:
            patch.forget_skips()
        self.done.add(path)
        self.added.append(path)
        if ch is not None:
            ch.rearm()
        return True


def verify_or_repair(slim: nn.Module, new_snap: Snapshot, edits: dict[str, ModuleEdits], patched: list[str],
                     unresolved: list[str], guesses: dict[str, list[tuple[str, Any]]],
                     ambiguous: dict[str, list[tuple[str, int, list[int]]]], choices: dict[str, Choices],
                     options: PruneOptions, first: Graph | None = None) -> list[str]:
    """Verify the slim model; where it fails, repair the failing module (or its nearest
    ancestor that can be repaired) and retry: first other values of its ambiguous attributes,
    then a patch of its literal sizes, then every combination of ambiguous values and of
    guesses (attributes set by matching values) kept or put back (:class:`Choices`, filled
    in as they are made). Returns the modules patched here (``patched``: those patched
    before; ``first``: the re-trace of the example call of the model as it is, when made already)."""
    modules = dict(slim.named_modules())
    repairs = _Repairs(modules, edits, guesses, ambiguous, choices, options, set(patched), [])
    cap = options.max_repairs
    last: VerifyFailure | None = None
    for _ in range(cap):
        try:
            verify_graph(slim, new_snap, unresolved, list(options.leaf_modules), first)
            for m in modules.values():  # the skipped calls are learnt: stop aligning on every call
                patch = patch_of(m)
                if patch is not None:
                    patch.relearn = False
            break
        except VerifyFailure as exc:
            if not options.repair or not repairs.act(exc):
                raise
            last = exc
            first = None
    else:
        raise RewriteError(
            f"verifying the slim {type(slim).__name__} still failed after {cap} repairs (attributes "
            f"restored, modules patched: {repairs.added}); the model is not returned unverified. Pass the modules "
            "that hold channel sizes in Python in leaf_modules=[...] (their channels stay unprunable), "
            "or report the model.") from last
    if repairs.added:
        log.warning("slim %s: modules %s hold channel sizes as literals in forward; their ops are patched "
                    "at run time by forward hooks (eager PyTorch, gradients included; torch.export, ONNX and "
                    "TorchScript export do not reliably keep them: check exported graphs)",
                    type(slim).__name__, repairs.added)
    return repairs.added
