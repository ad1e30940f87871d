"""Channel spaces: the algebra that decides which channels are coupled.

Every axis of every tensor in the traced graph is described by a *layout* over
*leaf spaces*. A leaf space of size ``n`` is one label group: its ``n`` slots
are the labels, and removing a slot removes, from every axis that mentions the
leaf, each index whose coordinate in that leaf is the slot.

Grammar (row-major, like ``torch.reshape``)::

    Factor = (leaf, start, stop)      a contiguous range of a leaf's slots
    Term   = (Factor, ...)            a product: the last factor varies fastest
    Layout = (Term, ...)              a concatenation of terms (``torch.cat``)

Worked example: a fused ``qkv`` linear with 2 heads of size 3 has an output
axis of size 18 with layout ``((Q, 0, 18),)``. ``view(B, T, 3, 2, 3)`` refines
leaf ``Q`` into the product ``S3 ⊗ H ⊗ D`` (sizes 3, 2, 3): the new axes get
``((S3, 0, 3),)``, ``((H, 0, 2),)`` and ``((D, 0, 3),)`` and every other axis that
mentioned ``Q`` (the weight's rows, the bias) now reads ``((S3,0,3),(H,0,2),(D,0,3))``
through ``Q``'s definition. Removing slot 1 of ``H`` removes one whole head from
q, k, v and the weight rows; removing slot 0 of ``D`` removes that within-head
feature in every head.

Operations rules use: :meth:`SpaceTable.unify` (two axes index the same
channels), :meth:`SpaceTable.slice` (``narrow``/``split``), concatenation (tuple
``+``), :meth:`SpaceTable.product` (merging axes) and :meth:`SpaceTable.split2`
(splitting one axis into two). When two layouts cannot be aligned (for example
``view`` of ``4 x 6`` into ``3 x 8``) :class:`Misaligned` is raised and the caller
marks every leaf involved *rigid* (unprunable): never a wrong slice.

Union-find is iterative with path halving; every refinement creates strictly
smaller leaves, except the split ``n = 1 x n`` that gives a one-slot factor a partner,
which is made only when the split leaf is absent from the one slot's side (in
``1 x 1 x Y == Y`` it would bring the same pair back after every restart: the slot
is skipped instead); so the restart loops terminate (they are also capped).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

Factor = tuple[int, int, int]
Term = tuple[Factor, ...]
Layout = tuple[Term, ...]

ONE: Layout = ((),)
"""Layout of an axis of size 1 (no channels to prune)."""

_MAX_TERMS = 4096
_MAX_RESTARTS = 10_000


class Misaligned(Exception):
    """Two layouts cannot be reconciled structurally (caller makes them rigid)."""


def term_size(term: Term) -> int:
    n = 1
    for _, s, e in term:
        n *= e - s
    return n


def layout_size(layout: Layout) -> int:
    return sum(term_size(t) for t in layout)


def _points(term: Term) -> Iterable[Term]:
    ranges = [[(leaf, i, i + 1) for i in range(s, e)] for leaf, s, e in term]
    return (tuple(p) for p in itertools.product(*ranges))


class SpaceTable:
    """Union-find over leaf spaces with sum/product refinement.

    Attributes are plain lists/dicts so that the table pickles with the IR.
    """

    def __init__(self) -> None:
        self.size: list[int] = []
        self.parent: list[int] = []
        self.defn: dict[int, Layout] = {}
        self.rigid: dict[int, str] = {}
        self.notes: dict[int, list[str]] = {}
        self.origin: list[str] = []
        self.positional: set[int] = set()
        """Leaves born rigid (model inputs, batch/sequence/spatial axes): sizes read at run time."""
        self.step: dict[int, int] = {}
        """Group leaf -> the multiple its kept size must be (a kernel's alignment, found by the probe)."""
        self._links = 0  # unions made so far: with len(defn) and len(rigid), the table's version
        self._normal: dict[Layout, Layout] = {}  # normalize() results at version _normal_at
        self._normal_at: tuple[int, int, int] = (0, 0, 0)

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state["_normal"] = {}  # a cache: not pickled
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_links", 0)  # tables pickled before the cache existed
        self.__dict__.setdefault("_normal", {})
        self.__dict__.setdefault("_normal_at", (0, 0, 0))

    # ------------------------------------------------------------------ leaves
    def new_leaf(self, size: int, origin: str, rigid: str | None = None) -> Layout:
        """A fresh leaf of ``size`` slots, returned as a whole-leaf layout."""
        if size == 1:
            return ONE
        if size == 0:
            return ()
        leaf = self._alloc(size, origin)
        if rigid is not None:
            self.rigid[leaf] = rigid
            self.positional.add(leaf)
        return (((leaf, 0, size),),)

    def _alloc(self, size: int, origin: str) -> int:
        leaf = len(self.size)
        self.size.append(size)
        self.parent.append(leaf)
        self.origin.append(origin)
        return leaf

    def _child(self, parent: int, size: int, tag: str) -> int:
        child = self._alloc(size, f"{self.origin[parent]}{tag}")
        self.inherit(child, self, parent)
        return child

    def inherit(self, leaf: int, table: SpaceTable, source: int, step: bool = False) -> None:
        """Give ``leaf`` the rigid reason, notes, positional flag (and ``step``) of ``table``'s ``source``."""
        if source in table.rigid:
            self.rigid[leaf] = table.rigid[source]
        if source in table.notes:
            self.notes[leaf] = list(table.notes[source])
        if source in table.positional:
            self.positional.add(leaf)
        if step and source in getattr(table, "step", {}):  # tables pickled before steps have none
            self.step[leaf] = table.step[source]

    def find(self, leaf: int) -> int:
        parent = self.parent
        while parent[leaf] != leaf:
            parent[leaf] = parent[parent[leaf]]
            leaf = parent[leaf]
        return leaf

    def groups(self) -> list[int]:
        """Representative undefined leaves: the label groups, in creation order."""
        return [i for i in range(len(self.size)) if self.parent[i] == i and i not in self.defn]

    # -------------------------------------------------------------- layouts
    def normalize(self, layout: Layout) -> Layout:
        """Rewrite ``layout`` so that every factor names an undefined representative.

        Cached: the result depends only on the unions, definitions and rigid flags made so far
        (none is ever undone, so their counts version the table), and is kept unless computing
        it allocated a leaf (a rigid merge, made afresh by every call). Rules, slicing, remapping
        and the probe normalise the same axes over and over; on a finished table every call after
        the first is a lookup."""
        at = (self._links, len(self.defn), len(self.rigid))
        if at != self._normal_at:
            self._normal.clear()
            self._normal_at = at
        hit = self._normal.get(layout)
        if hit is not None:
            return hit
        n = len(self.size)
        out = self._normalize(layout)
        if len(self.size) == n and self._normal_at == at:
            self._normal[layout] = out
        return out

    def _normalize(self, layout: Layout) -> Layout:
        out: list[Term] = []
        for term in layout:
            acc: Layout = ONE
            for leaf, s, e in term:
                r = self.find(leaf)
                d = self.defn.get(r)
                sub: Layout = (((r, s, e),),) if d is None else self.slice(self.normalize(d), s, e)
                acc = self.product(acc, sub)
            out.extend(acc)
        return self.simplify(tuple(out))

    @staticmethod
    def simplify(layout: Layout) -> Layout:
        """Merge neighbouring terms that are contiguous ranges of one leaf."""
        out: list[Term] = []
        for t in layout:
            if out and t and out[-1]:
                p = out[-1]
                if p[0][0] == t[0][0] and p[0][2] == t[0][1] and p[1:] == t[1:]:
                    out[-1] = ((p[0][0], p[0][1], t[0][2]),) + t[1:]
                    continue
            out.append(t)
        return tuple(out)

    def product(self, a: Layout, b: Layout) -> Layout:
        """Layout of the axis obtained by flattening axes ``a`` (outer) and ``b`` (inner)."""
        if len(b) == 1:
            return tuple(t + b[0] for t in a)
        if a == ONE:
            return b
        if self.all_rigid(b):
            # a rigid axis is never sliced, so its inner structure does not matter
            rigid_term = self._rigid_like(b)
            return tuple(t + rigid_term for t in a)
        total = sum(term_size(t) for t in a) * len(b)
        if total > _MAX_TERMS:
            raise Misaligned(f"flattening would need {total} terms")
        return tuple(p + t for ta in a for p in _points(ta) for t in b)

    def slice(self, layout: Layout, start: int, stop: int) -> Layout:
        """Layout of ``axis[start:stop]``."""
        out: list[Term] = []
        off = 0
        for t in layout:
            n = term_size(t)
            lo, hi = max(start, off), min(stop, off + n)
            if lo < hi:
                out.extend(self._slice_term(t, lo - off, hi - off))
            off += n
            if off >= stop:
                break
        return tuple(out)

    def _slice_term(self, t: Term, lo: int, hi: int) -> list[Term]:
        if lo == 0 and hi == term_size(t):
            return [t]
        (leaf, s, _), inner = t[0], t[1:]
        st = term_size(inner)
        q0, r0 = divmod(lo, st)
        q1, r1 = divmod(hi, st)
        out: list[Term] = []
        if r0:
            if q0 == q1:
                return [((leaf, s + q0, s + q0 + 1),) + x for x in self._slice_term(inner, r0, r1)]
            out += [((leaf, s + q0, s + q0 + 1),) + x for x in self._slice_term(inner, r0, st)]
            q0 += 1
        if q1 > q0:
            out.append(((leaf, s + q0, s + q1),) + inner)
        if r1:
            out += [((leaf, s + q1, s + q1 + 1),) + x for x in self._slice_term(inner, 0, r1)]
        return out

    # ----------------------------------------------------------- refinement
    def _isolate(self, f: Factor) -> tuple[int, bool]:
        """Leaf whose whole range is ``f`` (sum-refining ``f``'s leaf if needed)."""
        leaf, s, e = f
        leaf = self.find(leaf)
        n = self.size[leaf]
        if s == 0 and e == n:
            return leaf, False
        pieces = [(a, b) for a, b in ((0, s), (s, e), (e, n)) if b > a]
        kids = [self._child(leaf, b - a, f"[{a}:{b}]") for a, b in pieces]
        self.defn[leaf] = tuple(((k, 0, self.size[k]),) for k in kids)
        return kids[[a for a, _ in pieces].index(s)], True

    def _refine_product(self, leaf: int, sizes: list[int]) -> None:
        kids = [self._child(leaf, n, f"/{i}") for i, n in enumerate(sizes)]
        self.defn[leaf] = (tuple((k, 0, self.size[k]) for k in kids),)

    def _split_factor(self, f: Factor, outer: int, inner: int) -> None:
        leaf, _ = self._isolate(f)
        self._refine_product(leaf, [outer, inner])

    def split2(self, layout: Layout, a: int, b: int) -> tuple[Layout, Layout]:
        """Layouts ``(Y1, Y2)`` of sizes ``a`` and ``b`` with ``Y1 ⊗ Y2 == layout``."""
        for _ in range(_MAX_RESTARTS):
            x = self.normalize(layout)
            if b == 1:
                return x, ONE
            if a == 1:
                return ONE, x
            if len(x) > 1 and self.all_rigid(x):
                reason = self._rigid_reason(x)
                return (self.new_leaf(a, "rigid-split", reason), self.new_leaf(b, "rigid-split", reason))
            zs: list[Term] = []
            ws: list[Term] = []
            refined = False
            for t in x:
                if term_size(t) % b:
                    raise Misaligned(f"a block of size {term_size(t)} does not split by {b}")
                p, j = 1, len(t)
                while p < b:
                    j -= 1
                    ext = t[j][2] - t[j][1]
                    if p * ext <= b:
                        p *= ext
                        continue
                    if b % p or ext % (b // p):
                        raise Misaligned(f"cannot split a factor of size {ext} to reach {b}")
                    inner = b // p
                    self._split_factor(t[j], ext // inner, inner)
                    refined = True
                    break
                if refined:
                    break
                zs.append(t[:j])
                ws.append(t[j:])
            if refined:
                continue
            for w in ws[1:]:
                self.unify((w,), (ws[0],))
            return tuple(zs), (ws[0],)
        raise Misaligned("split did not converge")

    def unflatten(self, layout: Layout, sizes: list[int]) -> list[Layout]:
        """Split one axis into several (``view``/``reshape``), outermost first."""
        out: list[Layout] = []
        rest = layout
        for i, n in enumerate(sizes[:-1]):
            inner = 1
            for m in sizes[i + 1 :]:
                inner *= m
            head, rest = self.split2(rest, n, inner)
            out.append(head)
        out.append(rest)
        return out

    # ---------------------------------------------------------------- unify
    def unify(self, x: Layout, y: Layout) -> None:
        """Declare that axes ``x`` and ``y`` index the same channels, index by index."""
        for _ in range(_MAX_RESTARTS):
            x = self.normalize(x)
            y = self.normalize(y)
            if x == y:
                return
            if layout_size(x) != layout_size(y):
                raise Misaligned(f"sizes {layout_size(x)} and {layout_size(y)} differ")
            if self._pin_single(x, y) or self._pin_single(y, x):
                continue
            if x == ONE or y == ONE:
                return
            if self._define(x, y) or self._define(y, x):
                return
            x, y = self._align(x, y)
            if not any(self._unify_terms(tx, ty) for tx, ty in zip(x, y, strict=True)):
                return
        raise Misaligned("unify did not converge")

    def _pin_single(self, x: Layout, y: Layout) -> bool:
        """``x`` is a size-1 axis without a channel space (a one-channel slice feeding a layer
        whose width is 1): the one channel of ``y`` it meets cannot be removed. Cuts that
        channel out of its leaf and pins it; True when a cut was made (restart)."""
        if x != ONE or y == ONE:
            return False
        for f in y[0]:
            if self.find(f[0]) in self.rigid:
                continue
            leaf, cut = self._isolate(f)
            if cut:
                return True
            self.rigid.setdefault(leaf, "a one-channel axis meets it (removing the channel would leave it empty)")
        return False

    def _define(self, x: Layout, y: Layout) -> bool:
        """Make ``x``, one whole free leaf, stand for the concatenation ``y``.

        Matching a leaf term by term against a concatenation would cut the leaf at every
        boundary and, through products like ``heads x (rotary pairs ++ pass-through)``,
        cut the other side's leaves too (each head its own one-channel group). Defining the
        leaf as ``y`` says the same (its slots are ``y``'s, in order) and cuts nothing."""
        if len(x) != 1 or len(x[0]) != 1 or len(y) < 2:
            return False
        leaf, s, e = x[0][0]
        if s != 0 or e != self.size[leaf] or leaf in self.rigid or leaf in self.defn:
            return False
        if any(f[0] == leaf for t in y for f in t):
            return False
        notes = self.notes.pop(leaf, [])
        self.defn[leaf] = y
        for note in notes:
            self.add_note(y, note)
        return True

    def _align(self, x: Layout, y: Layout) -> tuple[Layout, Layout]:
        while True:
            cuts = sorted(set(_bounds(x)) | set(_bounds(y)))
            nx = tuple(t for a, b in itertools.pairwise(cuts) for t in self.slice(x, a, b))
            ny = tuple(t for a, b in itertools.pairwise(cuts) for t in self.slice(y, a, b))
            if len(nx) == len(ny) and _bounds(nx) == _bounds(ny):
                return nx, ny
            x, y = nx, ny

    def _unify_terms(self, tx: Term, ty: Term) -> bool:
        """Unify two equal-size products; True when a refinement forces a restart."""
        i = j = 0
        while i < len(tx) and j < len(ty):
            # runs of rigid factors of equal extent need no structure: they are never sliced
            ri, pi = i, 1
            while ri < len(tx) and tx[ri][0] in self.rigid:
                pi *= tx[ri][2] - tx[ri][1]
                ri += 1
            rj, pj = j, 1
            while rj < len(ty) and ty[rj][0] in self.rigid:
                pj *= ty[rj][2] - ty[rj][1]
                rj += 1
            if (ri > i or rj > j) and pi == pj:
                i, j = ri, rj
                continue
            f, g = tx[i], ty[j]
            nf, ng = f[2] - f[1], g[2] - g[1]
            if nf == ng and (f[0] in self.rigid) != (g[0] in self.rigid):
                reason = self.rigid.get(f[0]) or self.rigid[g[0]]
                self.rigid.setdefault(f[0], reason)
                self.rigid.setdefault(g[0], reason)
                i, j = i + 1, j + 1
                continue
            if nf == ng:
                if self.find(f[0]) == self.find(g[0]) and f[1] == g[1]:
                    i, j = i + 1, j + 1
                    continue
                a, ra = self._isolate(f)
                if ra:
                    return True
                b, rb = self._isolate(g)
                if rb:
                    return True
                self._link(a, b)
                i, j = i + 1, j + 1
            elif (nf == 1 and self._meets_itself(g, tx)) or (ng == 1 and self._meets_itself(f, ty)):
                # one slot facing a longer factor whose leaf is on the one slot's side too
                # (``1 x 1 x Y == Y``): splitting that leaf as ``1 x n`` (below) would bring the
                # same pair back after the restart, forever. Cut the slot out of its leaf
                # (restart) and skip it once it is a leaf of its own: a one-slot leaf is inert
                # (a group of one channel is never removed).
                if self._isolate(f if nf == 1 else g)[1]:
                    return True
                i, j = (i + 1, j) if nf == 1 else (i, j + 1)
            elif nf > ng:
                if nf % ng:
                    raise Misaligned(f"factor sizes {nf} and {ng} do not divide")
                self._split_factor(f, ng, nf // ng)
                return True
            else:
                if ng % nf:
                    raise Misaligned(f"factor sizes {nf} and {ng} do not divide")
                self._split_factor(g, nf, ng // nf)
                return True
        return False

    def _meets_itself(self, f: Factor, side: Term) -> bool:
        """True when ``f``'s leaf also occurs in ``side`` (the other term of a unification)."""
        leaf = self.find(f[0])
        return any(self.find(g[0]) == leaf for g in side)

    def _link(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        self.parent[a] = b
        self._links += 1
        if a in self.positional:
            self.positional.add(b)
        if a in self.rigid and b not in self.rigid:
            self.rigid[b] = self.rigid[a]
        if a in self.notes:
            self.notes.setdefault(b, []).extend(n for n in self.notes[a] if n not in self.notes[b])

    # --------------------------------------------------------------- flags
    def all_rigid(self, layout: Layout) -> bool:
        """True when every leaf of the (normalised) layout is rigid."""
        return all(leaf in self.rigid for t in self.normalize(layout) for leaf, _, _ in t)

    def any_positional(self, layout: Layout) -> bool:
        """True when the layout mixes in a batch/sequence/spatial (run-time sized) leaf."""
        return any(leaf in self.positional for t in self.normalize(layout) for leaf, _, _ in t)

    def any_rigid(self, layout: Layout) -> bool:
        """True when some leaf of the (normalised) layout is rigid."""
        return any(leaf in self.rigid for t in self.normalize(layout) for leaf, _, _ in t)

    def _rigid_reason(self, layout: Layout) -> str:
        for t in self.normalize(layout):
            for leaf, _, _ in t:
                return self.rigid[leaf]
        return "rigid"

    def _rigid_like(self, layout: Layout) -> Term:
        n = layout_size(layout)
        return self.new_leaf(n, "rigid-merge", self._rigid_reason(layout))[0]

    def leaves_of(self, layout: Layout) -> set[int]:
        return {leaf for t in self.normalize(layout) for leaf, _, _ in t}

    def mark_rigid(self, layout: Layout, reason: str) -> None:
        for leaf in self.leaves_of(layout):
            self.rigid.setdefault(leaf, reason)

    def add_note(self, layout: Layout, note: str) -> None:
        for leaf in self.leaves_of(layout):
            notes = self.notes.setdefault(leaf, [])
            if note not in notes:
                notes.append(note)


def _bounds(layout: Layout) -> list[int]:
    out = [0]
    for t in layout:
        out.append(out[-1] + term_size(t))
    return out
