"""Tracing needs no parameter memory: a LLaMA built on the meta device gets an IR."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")


def test_llama_on_meta_device_gets_the_same_groups_as_on_cpu() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from pruning_ir import PruningIR

    cfg = LlamaConfig(vocab_size=101, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                      num_attention_heads=6, num_key_value_heads=2, head_dim=8, max_position_embeddings=32)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    cpu = LlamaForCausalLM(cfg).eval()
    with torch.device("meta"):
        meta = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 101, (1, 7))
    mask = torch.ones(1, 7, dtype=torch.long)
    kw = {"attention_mask": mask, "use_cache": False}
    ir_cpu = PruningIR(cpu, example_inputs=(ids,), example_kwargs=kw)
    ir_meta = PruningIR(meta, example_inputs=(ids.to("meta"),),
                        example_kwargs={"attention_mask": mask.to("meta"), "use_cache": False})
    shape = [(g.size, g.prunable, g.structured) for g in ir_cpu.label_groups()]
    assert [(g.size, g.prunable, g.structured) for g in ir_meta.label_groups()] == shape
    assert all(p.device.type == "meta" for p in meta.parameters())
