"""The channel-space algebra on hand-worked examples (known answers)."""

from __future__ import annotations

import pytest
import torch

from pruning_ir._ir.axes import keep_mask, slot_map
from pruning_ir._ir.spaces import ONE, Misaligned, SpaceTable, layout_size


def leaf(sp: SpaceTable, n: int) -> int:
    return sp.new_leaf(n, f"l{n}")[0][0][0]


def test_slice_of_a_product_splits_rows() -> None:
    sp = SpaceTable()
    h, d = leaf(sp, 3), leaf(sp, 4)
    lay = (((h, 0, 3), (d, 0, 4)),)
    # entries 2..9 of a 3x4 grid: the rest of row 0, all of row 1, the start of row 2
    assert sp.slice(lay, 2, 10) == (((h, 0, 1), (d, 2, 4)), ((h, 1, 2), (d, 0, 4)), ((h, 2, 3), (d, 0, 2)))


def test_split2_refines_a_leaf_into_heads_and_features() -> None:
    sp = SpaceTable()
    q = leaf(sp, 12)
    heads, feats = sp.split2((((q, 0, 12),),), 3, 4)
    assert layout_size(heads) == 3 and layout_size(feats) == 4
    # the original leaf now reads as heads x features
    (term,) = sp.normalize((((q, 0, 12),),))
    assert [e - s for _, s, e in term] == [3, 4]


def test_unify_concat_with_whole_leaf_splits_it() -> None:
    sp = SpaceTable()
    a, b, c = leaf(sp, 5), leaf(sp, 8), leaf(sp, 13)
    sp.unify((((a, 0, 5),), ((b, 0, 8),)), (((c, 0, 13),),))
    assert sp.normalize((((c, 0, 13),),)) == sp.normalize((((a, 0, 5),), ((b, 0, 8),)))
    assert len(sp.groups()) == 2


def test_channel_shuffle_couples_the_two_halves() -> None:
    """cat(A, B) viewed as (2, 6) then transposed: A and B must be pruned alike."""
    sp = SpaceTable()
    a, b = leaf(sp, 6), leaf(sp, 6)
    cat = (((a, 0, 6),), ((b, 0, 6),))
    two, six = sp.split2(cat, 2, 6)
    assert sp.find(a) == sp.find(b)
    assert layout_size(two) == 2 and layout_size(six) == 6


def test_unaligned_reshape_is_refused() -> None:
    sp = SpaceTable()
    a, b = leaf(sp, 4), leaf(sp, 6)
    with pytest.raises(Misaligned, match="split"):
        sp.split2((((a, 0, 4), (b, 0, 6)),), 3, 8)


def test_rigid_spreads_through_unify() -> None:
    sp = SpaceTable()
    a = sp.new_leaf(5, "input", "model input")
    b = sp.new_leaf(5, "param")
    sp.unify(a, b)
    assert sp.all_rigid(b)


def test_keep_mask_and_slot_map_on_a_product() -> None:
    sp = SpaceTable()
    h, d = leaf(sp, 2), leaf(sp, 3)
    lay = (((h, 0, 2), (d, 0, 3)),)
    removed = {d: torch.tensor([False, True, False])}
    mask = keep_mask(sp, lay, removed)
    assert mask is not None and mask.tolist() == [True, False, True, True, False, True]
    assert slot_map(sp, lay, h).tolist() == [0, 0, 0, 1, 1, 1]
    assert slot_map(sp, lay, d).tolist() == [0, 1, 2, 0, 1, 2]
    assert keep_mask(sp, ONE, removed) is None
