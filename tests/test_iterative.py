"""Iterative pruning: the pruned IR (derived without re-tracing) prunes again correctly."""

from __future__ import annotations

import pytest
import torch
from checks import outputs
from hf_zoo import HF_CASES, hf_available
from toy_zoo import TOY_CASES

from pruning_ir import PruningIR, UniformLabelSelector, verify_pruning


def _rounds(ir: PruningIR, rounds: int, ratio: float) -> PruningIR:
    """Prune ``rounds`` times; each round's groups without notes must prune exactly."""
    for _ in range(rounds):
        labels = UniformLabelSelector(ratio).select(ir)
        groups = ir.label_groups()
        clean = [lab for lab in labels if not groups[lab.group].notes]
        if clean:
            assert verify_pruning(ir, clean).exact
        ir = ir.prune(labels=labels)
        ir.lint()
    return ir


@pytest.mark.parametrize("name", ["residual_downsample", "concat", "split_chunk", "channel_shuffle",
                                  "grouped_conv", "gqa", "flatten_linear", "embedding_tied"])
def test_three_rounds_on_toys(name: str) -> None:
    model, x = TOY_CASES[name]()
    ir = _rounds(PruningIR(model, example_inputs=x), 3, 0.25)
    assert [t.shape for t in outputs(ir.model, x, {})] == [t.shape for t in outputs(model, x, {})]


def test_pruned_ir_matches_a_fresh_trace_of_the_slim_model() -> None:
    """The derived IR has the same label-group sizes as tracing the slim model anew."""
    model, x = TOY_CASES["inception"]()
    ir = PruningIR(model, example_inputs=x)
    pruned = ir.prune(labels=UniformLabelSelector(0.4).select(ir))
    fresh = PruningIR(pruned.model, example_inputs=x)
    assert sorted(g.size for g in pruned.prunable_label_groups()) == sorted(
        g.size for g in fresh.prunable_label_groups())


@pytest.mark.skipif(not hf_available(), reason="transformers is not installed")
@pytest.mark.parametrize("name", ["llama", "bert", "swin"])
def test_two_rounds_on_hf(name: str) -> None:
    case = HF_CASES[name]()
    ir = PruningIR(case.model, example_inputs=case.example_inputs, example_kwargs=case.example_kwargs)
    ref = outputs(case.model, case.example_inputs, case.example_kwargs)
    ir = _rounds(ir, 2, 0.3)
    got = outputs(ir.model, case.example_inputs, case.example_kwargs)
    assert [t.shape for t in got] == [t.shape for t in ref]
    assert all(torch.isfinite(t).all() for t in got if t.is_floating_point())
