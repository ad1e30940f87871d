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


def test_fast_meta_rules_equal_the_meta_kernels_and_decline_what_they_would_refuse() -> None:
    """Oracle: each op's own meta kernel (shape, strides, dtype; the input itself for in-place ops),
    on contiguous, channels-last and float64 inputs; sizes the kernel refuses are left to it."""
    from pruning_ir._trace.meta import _UNARY, _UNARY_INPLACE, _fast_meta

    aten = torch.ops.aten
    xs = [torch.empty(2, 6, 5, 5, device="meta"),
          torch.empty(2, 6, 5, 5, device="meta").to(memory_format=torch.channels_last),
          torch.empty(3, 7, device="meta", dtype=torch.float64)]

    def same(a: torch.Tensor, b: torch.Tensor) -> bool:
        return a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype

    for f in _UNARY | _UNARY_INPLACE:
        for x in xs:
            a, b = f(x), _fast_meta(f, (x,), {})
            assert same(a, b) and (a is x) == (b is x), (f, x.stride())
    w = torch.empty(6, device="meta")
    for x in xs[:2]:
        for f, args in ((aten.native_batch_norm.default, (x, w, w, w, w, False, 0.1, 1e-5)),
                        (aten.native_batch_norm.default, (x, w, None, w, w, True, 0.1, 1e-5)),
                        (aten._native_batch_norm_legit_no_training.default, (x, w, w, w, w, 0.1, 1e-5))):
            assert all(same(a, b) for a, b in zip(f(*args), _fast_meta(f, args, {}), strict=True)), f
    s = torch.empty(2, 7, 16, device="meta")
    ln = aten.native_layer_norm.default
    for args in ((s, [16], torch.empty(16, device="meta"), torch.empty(16, device="meta"), 1e-5),
                 (s, [7, 16], torch.empty(7, 16, device="meta"), None, 1e-5), (s, [16], None, None, 1e-5)):
        assert all(same(a, b) for a, b in zip(ln(*args), _fast_meta(ln, args, {}), strict=True))
    # a pruned weight that no longer fits: the rule declines, the kernel raises
    bad_bn = (xs[0], torch.empty(5, device="meta"), None, w, w, False, 0.1, 1e-5)
    assert _fast_meta(aten.native_batch_norm.default, bad_bn, {}) is None
    with pytest.raises(RuntimeError):
        aten.native_batch_norm.default(*bad_bn)
    no_stats = (xs[0], w, w, None, None, False, 0.1, 1e-5)  # eval without running statistics
    assert _fast_meta(aten.native_batch_norm.default, no_stats, {}) is None
    assert _fast_meta(ln, (s, [16], torch.empty(15, device="meta"), None, 1e-5), {}) is None


def test_fast_attention_rule_equals_the_meta_path_and_declines_what_it_would_refuse() -> None:
    """Oracle: ``scaled_dot_product_attention`` on meta tensors (its math decomposition), for
    contiguous and transposed layouts, masks that broadcast, causal, scale, dropout and 3-d inputs;
    inputs the kernel refuses or that the rule does not cover give ``None``."""
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from pruning_ir._trace.meta import _fast_meta

    def m(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.empty(*shape, device="meta", dtype=dtype)

    ok = [((m(2, 4, 8, 16), m(2, 4, 10, 16), m(2, 4, 10, 12)), {}),
          ((m(2, 8, 4, 16).transpose(1, 2), m(2, 10, 4, 16).transpose(1, 2), m(2, 10, 4, 16).transpose(1, 2)), {}),
          ((m(2, 4, 8, 16), m(2, 4, 10, 16), m(2, 4, 10, 16)), {"attn_mask": m(2, 1, 8, 10, dtype=torch.bool)}),
          ((m(2, 4, 8, 16), m(2, 4, 10, 16), m(2, 4, 10, 16), m(8, 10)), {}),
          ((m(2, 4, 8, 16), m(2, 4, 8, 16), m(2, 4, 8, 16)), {"is_causal": True, "scale": 0.5}),
          ((m(2, 4, 8, 16), m(2, 4, 8, 16), m(2, 4, 8, 16), None, 0.1), {}),
          ((m(4, 8, 16, dtype=torch.float64), m(4, 10, 16, dtype=torch.float64), m(4, 10, 16, dtype=torch.float64)),
           {})]
    for args, kwargs in ok:
        a, b = sdpa(*args, **kwargs), _fast_meta(sdpa, args, kwargs)
        assert b is not None and (a.shape, a.stride(), a.dtype) == (b.shape, b.stride(), b.dtype), (args, kwargs)
    refused = [((m(2, 4, 8, 16), m(2, 4, 10, 15), m(2, 4, 10, 16)), {}),  # a pruned head width
               ((m(2, 4, 8, 16), m(2, 4, 10, 16), m(2, 4, 9, 16)), {}),
               ((m(2, 4, 8, 16), m(2, 4, 10, 16), m(2, 4, 10, 16)), {"attn_mask": m(3, 10)})]
    for args, kwargs in refused:
        assert _fast_meta(sdpa, args, kwargs) is None
        with pytest.raises(RuntimeError):
            sdpa(*args, **kwargs)
    gqa = (m(2, 4, 8, 16), m(2, 2, 10, 16), m(2, 2, 10, 16))  # the kernel's business
    assert _fast_meta(sdpa, gqa, {"enable_gqa": True}) is None
    assert _fast_meta(sdpa, gqa[:2] + (m(2, 2, 10, 16),), {}) is None


def test_fast_rules_leave_odd_strides_empty_tensors_and_bad_dropout_to_the_kernels() -> None:
    """Oracle: the meta kernels. Inputs whose size-1 dims carry other strides than ``empty`` gives
    (a sequence-first batch of one, a channels-last 1x1 map) and empty inputs get the kernel's own
    answer (the rules decline them); a dropout probability outside [0, 1] is the kernel's to refuse."""
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from pruning_ir._trace.meta import _fast_meta, meta_call

    aten = torch.ops.aten
    odd = [torch.empty_strided((7, 1, 16), (16, 112, 1), device="meta"),
           torch.empty(1, 8, 1, 1, device="meta").to(memory_format=torch.channels_last),
           torch.empty_strided((0, 2), (3, 2), device="meta")]
    for x in odd:
        for f in (aten.gelu.default, aten.relu.default):
            a, b = f(x), meta_call(f, (x,), {})
            assert (a.shape, a.stride(), a.dtype) == (b.shape, b.stride(), b.dtype), (f, x.stride())
    x = odd[1]
    w = torch.empty(8, device="meta")
    args = (x, w, w, w, w, False, 0.1, 1e-5)
    a, b = aten.native_batch_norm.default(*args), meta_call(aten.native_batch_norm.default, args, {})
    assert [(t.shape, t.stride()) for t in a] == [(t.shape, t.stride()) for t in b]
    q = torch.empty(2, 4, 8, 16, device="meta")
    for p in (1.5, float("inf"), float("nan"), -0.1):
        assert _fast_meta(sdpa, (q, q, q), {"dropout_p": p}) is None
    with pytest.raises(RuntimeError):
        sdpa(q, q, q, dropout_p=1.5)


def test_meta_copy_of_modules_that_define_their_own_copying() -> None:
    """A module whose ``__getstate__`` drops an uncopyable attribute (a lock) and a GraphModule are
    copied as ``deepcopy`` copies them (a GraphModule copy gets its own class); plain modules keep
    the fast module-tree copy. Oracle: the copies run on meta, the originals are untouched."""
    import threading

    from torch import fx, nn

    from pruning_ir._rewrite.slim import meta_copy

    class Locked(nn.Linear):
        def __init__(self) -> None:
            super().__init__(3, 4)
            self.lock = threading.Lock()

        def __getstate__(self) -> dict[str, object]:
            state = dict(self.__dict__)
            state.pop("lock", None)
            return state

    model = nn.Sequential(Locked(), nn.ReLU())
    copy = meta_copy(model)
    assert copy[0].weight.is_meta and not model[0].weight.is_meta
    assert copy(torch.empty(2, 3, device="meta")).shape == (2, 4)
    graph = fx.symbolic_trace(nn.Sequential(nn.Linear(3, 4)))
    gcopy = meta_copy(graph)
    assert type(gcopy) is not type(graph) and gcopy(torch.empty(2, 3, device="meta")).shape == (2, 4)
