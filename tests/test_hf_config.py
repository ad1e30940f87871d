"""Hugging Face ``config`` after pruning: updated when one config can describe the slim model.

Oracle: ``save_pretrained`` + ``from_pretrained`` of the slim model gives the same logits
(``from_pretrained`` rebuilds the model from the config, so a wrong field fails to load);
when no config can describe it, the config is unchanged and the rewrite log says why.
"""

from __future__ import annotations

import tempfile

import pytest
import torch

from pruning_ir import PruningIR, UniformLabelSelector

pytest.importorskip("transformers")

from hf_zoo import HF_CASES


def _llama(name: str = "llama") -> tuple[PruningIR, object]:
    case = HF_CASES[name]()
    ir = PruningIR(case.model, example_inputs=case.example_inputs, example_kwargs=case.example_kwargs)
    return ir, case


def _round_trip(model: torch.nn.Module, case: object) -> float:
    args, kwargs = case.example_inputs, case.example_kwargs  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)  # type: ignore[operator]
        loaded = type(model).from_pretrained(d).eval()  # type: ignore[attr-defined]
    with torch.no_grad():
        return float((model(*args, **kwargs).logits - loaded(*args, **kwargs).logits).abs().max())


def test_uniform_ffn_pruning_updates_intermediate_size() -> None:
    ir, case = _llama()
    ffn = [g for g in ir.prunable_label_groups() if g.size == 80]
    assert len(ffn) == 2, ir.report()
    pruned = ir.prune(labels=[lab for g in ffn for lab in ir.labels(g)[:24]])
    assert pruned.model.config.intermediate_size == 56
    assert "config.intermediate_size: 80 -> 56" in pruned.rewrite_log
    assert ir.model.config.intermediate_size == 80  # the user's config is not touched
    assert _round_trip(pruned.model, case) < 1e-5


def test_kv_head_pruning_updates_head_counts() -> None:
    ir, case = _llama()
    kv = [g for g in ir.prunable_label_groups() if g.structured and g.size == 2]
    assert len(kv) == 2, ir.report()
    pruned = ir.prune(labels=[ir.labels(g)[0] for g in kv])
    cfg = pruned.model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size) == (3, 1, 48)
    assert _round_trip(pruned.model, case) < 1e-5


def test_kv_head_pruning_under_sdpa_round_trips() -> None:
    """The default attention (sdpa) records other ops than eager; the config is updated alike."""
    ir, case = _llama("llama_sdpa")
    assert ir.model.config._attn_implementation == "sdpa"
    kv = [g for g in ir.prunable_label_groups() if g.structured and g.size == 2]
    pruned = ir.prune(labels=[ir.labels(g)[1] for g in kv])
    cfg = pruned.model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (3, 1)
    assert _round_trip(pruned.model, case) < 1e-5


def test_several_fields_change_together() -> None:
    """FFN neurons and kv heads pruned uniformly: intermediate_size, num_attention_heads and
    num_key_value_heads change at once (the heads only together: q's width is their product)."""
    ir, case = _llama()
    ffn = [g for g in ir.prunable_label_groups() if g.size == 80]
    kv = [g for g in ir.prunable_label_groups() if g.structured and g.size == 2]
    pruned = ir.prune(labels=[lab for g in ffn for lab in ir.labels(g)[:24]] + [ir.labels(g)[0] for g in kv])
    cfg = pruned.model.config
    assert (cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (56, 3, 1)
    assert _round_trip(pruned.model, case) < 1e-5


def test_config_left_unchanged_when_layers_differ() -> None:
    ir, _ = _llama()
    ffn = [g for g in ir.prunable_label_groups() if g.size == 80]
    with pytest.warns(UserWarning, match="save_pruned") as caught:
        pruned = ir.prune(labels=ir.labels(ffn[0])[:10] + ir.labels(ffn[1])[:20])  # 70 and 60 neurons
        ir.prune(labels=ir.labels(ffn[0])[:12])  # warned once per IR, not per prune
    assert sum("save_pruned" in str(w.message) for w in caught) == 1
    assert pruned.model.config.intermediate_size == 80
    line = next(x for x in pruned.rewrite_log if x.startswith("config:"))
    assert "layers were pruned to different widths (model.layers.#.mlp." in line and "60x48 / 70x48" in line, line


def test_sliced_rotary_frequencies_are_not_described() -> None:
    """Pruning within heads slices the rotary frequencies, a buffer save_pretrained does not save:
    a config with the slim sizes would load a model with other frequencies (silently different),
    so the config is left as it was and from_pretrained fails loudly on the shapes instead."""
    ir, case = _llama()
    with pytest.warns(UserWarning, match="save_pruned"):
        pruned = ir.prune(labels=UniformLabelSelector(0.5).select(ir))
    assert tuple(pruned.model.model.rotary_emb.inv_freq.shape) == (2,)
    assert pruned.model.config.to_dict() == ir.model.config.to_dict()
    assert any("rotary_emb.inv_freq" in line for line in pruned.rewrite_log)
    with pytest.raises(RuntimeError, match="mismatch"):
        _round_trip(pruned.model, case)


def test_within_head_pruning_cannot_be_described() -> None:
    """BERT derives the head size from hidden_size / num_attention_heads: uniform pruning of
    within-head features and the residual cannot be written in its config."""
    case = HF_CASES["bert"]()
    ir = PruningIR(case.model, example_inputs=case.example_inputs, example_kwargs=case.example_kwargs)
    pruned = ir.prune(labels=UniformLabelSelector(0.3).select(ir))
    assert pruned.model.config.to_dict() == ir.model.config.to_dict()
    assert any(line.startswith("config: no values of") for line in pruned.rewrite_log)
