"""The re-pruning hot path's shortcuts give the answers of the plain code they replace.

* ``check_labels``' vectorised pass (:func:`pruning_ir._ir.masks.removed_masks`) against a
  per-label reference loop; labels it refuses get ``check_labels``' usual errors.
* ``selector_label_groups``' per-snapshot label lists against an ``argsort`` of the scores,
  after the scores are replaced or changed in place, and after the weights change.
* The label-list cache is left out of pickles and rebuilt identically after loading.
"""

from __future__ import annotations

import pickle

import pytest
import torch
from toy_zoo import TOY_CASES

from pruning_ir import Label, PruningIR, UniformLabelSelector
from pruning_ir._ir.masks import removed_masks
from pruning_ir.errors import LabelError


def _ir(case: str = "residual") -> PruningIR:
    torch.manual_seed(0)
    model, inputs = TOY_CASES[case]()
    return PruningIR(model, example_inputs=inputs)


def _reference_masks(ir: PruningIR, labels: list[Label]) -> dict[int, torch.Tensor]:
    """Group leaf -> removed mask, one label at a time (no validation)."""
    out: dict[int, torch.Tensor] = {}
    for lab in labels:
        g = ir.snapshot().groups[lab.group]
        out.setdefault(g.leaf, torch.zeros(g.size, dtype=torch.bool))[lab.index] = True
    return out


@pytest.mark.parametrize("case", ["residual", "concat", "grouped_conv", "mha_separate"])
def test_vectorised_masks_match_reference(case: str) -> None:
    ir = _ir(case)
    for ratio in (0.2, 0.5):
        labels = UniformLabelSelector(ratio).select(ir)
        labels = labels[::-1] + labels[:3]  # any order, duplicates allowed
        got = removed_masks(ir.snapshot(), labels)
        assert got is not None
        want = _reference_masks(ir, labels)
        assert list(got) == list(want)  # leaves in order of their first label
        for leaf, mask in want.items():
            assert torch.equal(got[leaf], mask)
        assert list(ir.check_labels(labels)) == list(want)


def test_refused_labels_get_check_labels_errors() -> None:
    ir = _ir()
    snap = ir.snapshot()
    g = ir.prunable_label_groups()[0]
    assert removed_masks(snap, [Label(snap.owner, g.gid, g.size)]) is None
    with pytest.raises(LabelError, match="out of range"):
        ir.check_labels([Label(snap.owner, g.gid, 0), Label(snap.owner, g.gid, g.size)])
    with pytest.raises(LabelError, match="remove every channel"):
        ir.check_labels(ir.labels(g))
    with pytest.raises(LabelError, match="another IR or snapshot"):
        ir.check_labels([Label(snap.owner + 1, g.gid, 0)])
    with pytest.raises(LabelError, match="expected pruning_ir Labels"):
        ir.check_labels([(snap.owner, g.gid, 0)])  # type: ignore[list-item]


def test_labels_given_as_an_iterator() -> None:
    ir = _ir()
    labels = UniformLabelSelector(0.3).select(ir)
    want = ir.prune(labels=labels, verify=False).model.state_dict()
    got = ir.prune(labels=iter(labels), verify=False).model.state_dict()  # type: ignore[arg-type]
    assert all(torch.equal(want[k], got[k]) for k in want)


def _argsort_labels(ir: PruningIR) -> list[list[Label]]:
    owner = ir.snapshot().owner
    return [[Label(owner, gid, int(i)) for i in torch.argsort(s, stable=True)] for gid, s in ir.label_scores().items()]


def test_label_lists_follow_score_changes() -> None:
    ir = _ir()
    snap = ir.snapshot()
    assert ir.selector_label_groups() == _argsort_labels(ir)
    gid, score = next(iter(ir.label_scores().items()))
    snap.scores = {gid: -score}  # a criterion writes new scores
    assert ir.selector_label_groups() == _argsort_labels(ir)
    assert ir.selector_label_groups()[0][0].index == int(score.argmax())
    snap.scores[gid][0] = -1e9  # changed in place
    assert ir.selector_label_groups()[0][0] == Label(snap.owner, gid, 0)
    assert ir.selector_label_groups() == _argsort_labels(ir)
    ir.selector_label_groups()[0].clear()  # callers get their own lists
    assert ir.selector_label_groups() == _argsort_labels(ir)


def test_label_lists_follow_weight_changes() -> None:
    ir = _ir()
    before = ir.selector_label_groups()
    g = ir.prunable_label_groups()[0]
    name, axis = g.members[0]
    weight = dict(ir.model.named_parameters())[name]
    low = before[0][0].index
    with torch.no_grad():
        weight.select(axis, low).fill_(1e3)  # the lowest-scored label becomes the largest
    after = ir.selector_label_groups()
    assert after == _argsort_labels(ir)
    assert after[0][-1].index == low


def test_label_list_cache_is_not_pickled() -> None:
    ir = _ir()
    labels = UniformLabelSelector(0.3).select(ir)
    assert "selector_label_groups" in ir.snapshot().cache
    loaded = pickle.loads(pickle.dumps(ir))
    assert "selector_label_groups" not in loaded.snapshot().cache
    assert UniformLabelSelector(0.3).select(loaded) == labels
    assert "selector_label_groups" in ir.snapshot().cache  # pickling left the original's cache alone


@pytest.mark.parametrize("case", ["residual", "grouped_conv", "mha_separate"])
def test_one_label_validator_agrees_with_the_per_label_rules(case: str) -> None:
    """``checked_labels`` (the vectorised rules shared by check_labels and the cost models)
    accepts exactly the label lists the per-label loop accepts, on random draws that include
    duplicates and whole groups; the MACs of accepted lists agree between the labels path and
    the masks path."""
    import random

    from pruning_ir import MacsModel
    from pruning_ir._ir.masks import checked_labels
    from pruning_ir.errors import LabelError

    ir = _ir(case)
    snap = ir.snapshot()
    macs = MacsModel(ir)
    every = [lab for g in ir.prunable_label_groups() for lab in ir.labels(g)]
    gen = random.Random(0)
    accepted = refused = 0
    for _ in range(60):
        labels = gen.sample(every, gen.randint(1, len(every)))
        labels += gen.sample(labels, min(len(labels), gen.randint(0, 3)))  # duplicates
        fast = checked_labels(snap, labels) is not None
        try:
            removed = ir.check_labels(labels)
            slow = True
        except LabelError:
            slow = False
        assert fast == slow, labels
        if slow:
            accepted += 1
            by_gid = {g.gid: removed[g.leaf] for g in ir.prunable_label_groups() if g.leaf in removed}
            assert macs.cost(labels) == macs.cost_from_removed(by_gid)
        else:
            refused += 1
    assert accepted and refused  # both outcomes drawn
