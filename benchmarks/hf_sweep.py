"""HF sweep: build every architecture ``transformers`` knows, tiny and random, and prune it.

A regression check for the promise "any model torch can run prunes correctly, not a list".
For every ``model_type`` in the ``transformers`` auto mappings this script

* makes a tiny config from the config class alone (no downloads): every size field that
  exists is overridden with small, pairwise distinct values (hidden 64 = 4 heads x 16,
  2 kv heads, intermediate 112, 2 layers, vocab 99, 32x32 images with 8x8 patches, ...),
  recursively for sub-configs (``text_config``, ``vision_config``, ...);
* builds the causal-LM, masked-LM or image-classification head model from the auto
  mappings, or the base model (``MODEL_MAPPING``) when there is no such head;
* builds example inputs from the model's ``main_input_name``: ``input_ids`` (+ a
  right-padded ``attention_mask``, + ``decoder_input_ids`` for encoder-decoders) for text,
  ``pixel_values`` for vision; other inputs (audio features, time series, ...) are skipped;
* checks that the model runs on those inputs (otherwise: skipped, the generic recipe does
  not fit it), then ``PruningIR(model, ...)``, ``UniformLabelSelector(0.3).select(ir)`` and
  ``verify_pruning(ir, labels)`` (prune, and compare the slim model with the masked original).

Each model runs in its own forked subprocess under a time limit (``--timeout``), so a hang,
a segfault or a memory blow-up costs one row, not the run. Status per model:

* ``ok-exact``: slim == masked original within float rounding;
* ``ok-inexact-listed``: not exact, and ``verify_pruning`` lists why (a norm, mean or softmax
  over pruned channels, a Python-held scale), and the selection's labels from groups *without*
  such notes, pruned alone, are exact (``note-free diff``);
* ``WRONG``: not exact and **no reason listed**, or the note-free part not exact -- a silently
  wrong model, the worst outcome;
* ``nothing-prunable``: the IR found no prunable label group (or the selector removed nothing);
* ``error``: a ``pruning_ir.errors.PruningIRError`` (a clear refusal: allowed);
* ``CRASH``: any other exception raised while ``pruning_ir`` ran (the innermost frame is
  recorded), or the subprocess died;
* ``timeout`` (with the stage it was in), ``skipped (reason)`` (config, model or inputs could
  not be built generically, or the model does not run on them).

The table is printed and written to ``benchmarks/results/hf_sweep.md``. Exit status 1 when a
model is ``WRONG`` or ``CRASH``; errors, nothing-prunable, timeouts and skips are reported only.

Usage::

    python benchmarks/hf_sweep.py                      # every architecture (~ half an hour on 2 CPUs)
    python benchmarks/hf_sweep.py --quick              # ~12 diverse architectures
    python benchmarks/hf_sweep.py --models llama,bert,vit --timeout 60
    python benchmarks/hf_sweep.py --limit 40           # the first 40 model types (alphabetical)
    python benchmarks/hf_sweep.py --list               # the candidate model types and their classes
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import multiprocessing as mp
import os
import re
import sys
import time
import traceback
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _common import (
    REPO,
    busy_warning,
    environment,
    fmt_s,
    markdown_table,
    md_cell,
    n_params,
    perturb_constant_tensors,
    write_result,
)

RATIO = 0.3

QUICK = (
    "bert", "gpt2", "llama", "gemma2", "mixtral", "falcon", "t5", "deberta-v2",
    "vit", "swin", "convnext", "resnet",
)

# ----------------------------------------------------------------------------- tiny configs
HIDDEN = 64
HEADS = 4
HEAD_DIM = HIDDEN // HEADS  # 16
KV_HEADS = 2
INTER = 112
LAYERS = 2
VOCAB = 99
MAX_POS = 80
IMG = 32
PATCH = 8
CNN_IMG = 64  # input size for vision models without an ``image_size`` field
BATCH = 2
SEQ = 7
DEC_SEQ = 5
MAX_PARAMS = 30_000_000  # models still bigger than this after shrinking are skipped (memory)

# Overridden only where the config has the field (set and not None, unless marked "any").
SIZE_FIELDS: dict[str, int] = {
    # width
    "hidden_size": HIDDEN, "d_model": HIDDEN, "n_embd": HIDDEN, "n_embed": HIDDEN, "dim": HIDDEN,
    "embed_dim": HIDDEN, "embedding_size": HIDDEN, "word_embed_proj_dim": HIDDEN,
    # depth
    "num_hidden_layers": LAYERS, "num_layers": LAYERS, "n_layer": LAYERS, "n_layers": LAYERS,
    "encoder_layers": LAYERS, "decoder_layers": LAYERS, "num_decoder_layers": LAYERS,
    "num_encoder_layers": LAYERS,
    # heads
    "num_attention_heads": HEADS, "n_head": HEADS, "n_heads": HEADS, "encoder_attention_heads": HEADS,
    "decoder_attention_heads": HEADS, "num_heads": HEADS,
    "num_key_value_heads": KV_HEADS, "num_kv_heads": KV_HEADS, "n_kv_heads": KV_HEADS,
    "multi_query_group_num": KV_HEADS,
    "head_dim": HEAD_DIM, "d_kv": HEAD_DIM, "kv_channels": HEAD_DIM, "attention_head_dim": HEAD_DIM,
    # MLP
    "intermediate_size": INTER, "ffn_dim": INTER, "encoder_ffn_dim": INTER, "decoder_ffn_dim": INTER,
    "d_ff": INTER, "n_inner": INTER, "ffn_hidden_size": INTER, "hidden_dim": INTER,
    "ffn_config_hidden": INTER,
    # MoE
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "moe_num_experts": 4,
    "num_experts_per_tok": 2, "moe_topk": 2, "moe_intermediate_size": 48,
    "shared_expert_intermediate_size": 72, "n_shared_experts": 1,
    # MLA (DeepSeek-style)
    "kv_lora_rank": 24, "q_lora_rank": 40, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16, "v_head_dim": 16,
    # vocab / positions
    "vocab_size": VOCAB, "max_position_embeddings": MAX_POS, "n_positions": MAX_POS, "n_ctx": MAX_POS,
    # vision
    "image_size": IMG, "patch_size": PATCH, "num_channels": 3,
}
TOKEN_ID_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id",
                   "sep_token_id", "cls_token_id", "mask_token_id", "unk_token_id")
DROP_KEYS = ("layer_types", "model_type", "transformers_version", "architectures", "_name_or_path",
             "auto_map", "mlp_layer_types", "block_types")


def _shrink_list(name: str, value: list[Any]) -> list[Any] | None:
    """Tiny replacements for per-stage lists of hierarchical models (same length)."""
    if not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return None
    n = len(value)
    if name == "depths":
        return [1] * n
    if name in ("hidden_sizes", "embed_dims", "dims", "widths", "channels"):
        base = (32, 64, 96, 128, 160, 192, 224, 256)  # multiples of 32: GroupNorm(32, ...) in BiT
        return list(base[:n]) if n <= len(base) else None
    if name in ("num_heads", "num_attention_heads"):
        return [min(v, 2 ** i) for i, v in enumerate(value)]
    return None


def _get(config: Any, key: str) -> Any:
    """``config.key``, or None (also when the config refuses to give one global value: per-layer fields)."""
    try:
        return getattr(config, key, None)
    except Exception:
        return None


def tiny_config(cls: type, template: Any = None) -> Any:
    """The config class ``cls`` with its size fields shrunk (``template``: a default instance to start from)."""
    from transformers import PretrainedConfig

    default = template if template is not None else cls()
    base: dict[str, Any] = {}
    if template is not None:  # sub-config: start from what the parent config chose
        base = {k: v for k, v in template.to_dict().items() if k not in DROP_KEYS}
    kw: dict[str, Any] = {}
    for key, val in SIZE_FIELDS.items():
        cur = _get(default, key)
        if cur is None or isinstance(cur, bool) or isinstance(getattr(cls, key, None), property):
            continue
        if isinstance(cur, int):
            kw[key] = val
        elif isinstance(cur, (list, tuple)) and key in ("num_heads", "num_attention_heads"):
            pass  # per-stage list, handled below
        elif isinstance(cur, (list, tuple)) and key in ("image_size", "patch_size"):
            kw[key] = val
    fields = {key: _get(default, key) for key in default.to_dict()}
    for key, cur in fields.items():
        if isinstance(cur, (list, tuple)) and key not in kw:
            small = _shrink_list(key, list(cur))
            if small is not None:
                kw[key] = small
    if isinstance(fields.get("depths"), (list, tuple)):  # hierarchical vision model (Swin, ConvNeXt, ...)
        for key in ("hidden_size", "num_layers", "num_hidden_layers", "patch_size", "num_stages"):
            kw.pop(key, None)  # derived from the per-stage lists, or a stem stride
        if "image_size" in kw:
            kw["image_size"] = CNN_IMG
        if isinstance(fields.get("window_size"), int):
            kw["window_size"] = 2  # 64x64 / patch 4: stages of 16, 8, 4, 2 patches
    if "hidden_sizes" in kw and "embed_dim" in kw:
        kw["embed_dim"] = kw["hidden_sizes"][0]
    if "embedding_size" in kw:  # ALBERT-style factorised embeddings: distinct from hidden
        kw["embedding_size"] = 32
    vocab = kw.get("vocab_size", _get(default, "vocab_size"))
    if isinstance(vocab, int):
        for key in TOKEN_ID_FIELDS:
            cur = _get(default, key)
            if isinstance(cur, int) and cur >= vocab:
                kw[key] = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}.get(key, 2)
    for key, cur in fields.items():  # sub-configs (text_config, vision_config, encoder, ...)
        if isinstance(cur, PretrainedConfig):
            kw[key] = tiny_config(type(cur), cur)
    return _construct(cls, base, kw)


DEPTH_FIELDS = ("num_hidden_layers", "num_layers", "n_layer", "n_layers", "encoder_layers", "decoder_layers",
                "num_decoder_layers", "num_encoder_layers")


def _construct(cls: type, base: dict[str, Any], kw: dict[str, Any]) -> Any:
    """``cls(**base, **kw)``; when the config's validation refuses an override it names, drop that
    override (then the layer counts, which per-layer lists depend on) and try again."""
    kw = dict(kw)
    dropped_depth = False
    for _ in range(12):
        try:
            return cls(**{**base, **kw})
        except Exception as exc:
            msg = str(exc)
            named = [k for k in kw if re.search(rf"(?<![\w.]){re.escape(k)}(?!\w)", msg)
                     or re.search(rf"config\.{re.escape(k)}(?!\w)", msg)]
            if named:
                for k in named:
                    kw.pop(k)
            elif not dropped_depth and any(k in kw for k in DEPTH_FIELDS):
                dropped_depth = True
                for k in DEPTH_FIELDS:
                    kw.pop(k, None)
            else:
                raise
    return cls(**{**base, **kw})


# ----------------------------------------------------------------------------- candidates
HEAD_MAPPINGS = (
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
    "MODEL_MAPPING_NAMES",
)


def candidates() -> dict[str, list[str]]:
    """``model_type -> [model class names, preferred first]`` from the auto mappings."""
    from transformers.models.auto import modeling_auto

    out: dict[str, list[str]] = {}
    for mapping in HEAD_MAPPINGS:
        for model_type, names in getattr(modeling_auto, mapping).items():
            for name in (names,) if isinstance(names, str) else names:
                out.setdefault(model_type, [])
                if name not in out[model_type]:
                    out[model_type].append(name)
    return dict(sorted(out.items()))


# ----------------------------------------------------------------------------- one model (child)
@dataclass
class Row:
    model_type: str
    cls: str = "-"
    status: str = "-"
    detail: str = ""  # error message, skip reason, timeout stage
    where: str = ""  # innermost frame of a crash
    stage: str = "setup"
    params_before: int | None = None
    params_after: int | None = None
    build_s: float | None = None
    groups: int | None = None
    prunable: int | None = None
    labels: int | None = None
    max_abs_diff: float | None = None
    clean_diff: float | None = None  # max_abs_diff when only groups without notes are pruned
    reasons: list[str] = field(default_factory=list)
    seconds: float | None = None

    @property
    def kind(self) -> str:
        return self.status.split(" ")[0]


class Skip(Exception):
    """The generic recipe does not fit this model (config, class or inputs)."""


def _first_line(exc: BaseException, limit: int = 300) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _where(exc: BaseException) -> str:
    """``file:line in fn`` of the innermost frame, plus the innermost pruning_ir frame when different."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""

    def fmt(fr: traceback.FrameSummary) -> str:
        path = fr.filename
        for root in (str(REPO) + os.sep, os.sep + "site-packages" + os.sep):
            if root in path:
                path = path.split(root, 1)[1]
        return f"{path}:{fr.lineno} in {fr.name}"

    inner = frames[-1]
    ours = [fr for fr in frames if f"{os.sep}pruning_ir{os.sep}" in fr.filename]
    if ours and ours[-1] is not inner:
        return f"{fmt(inner)} (last pruning_ir frame {fmt(ours[-1])})"
    return fmt(inner)


def build_case(model_type: str, class_names: list[str]) -> tuple[torch.nn.Module, tuple[Any, ...], dict[str, Any], str]:
    """Tiny model, example args and kwargs, and the class name; raises :class:`Skip`."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        cfg_cls = CONFIG_MAPPING[model_type]
    except Exception as exc:
        raise Skip(f"config class: {_first_line(exc, 120)}") from exc
    try:
        config = tiny_config(cfg_cls)
    except Exception as exc:
        raise Skip(f"tiny config: {_first_line(exc, 120)}") from exc
    cls = None
    for name in class_names:
        cls = getattr(transformers, name, None)
        if cls is not None:
            break
    if cls is None:
        raise Skip(f"model class {class_names[0]} not importable")
    main = getattr(cls, "main_input_name", "input_ids")
    if main not in ("input_ids", "pixel_values"):
        raise Skip(f"input: {main}")
    params = [p for p in inspect.signature(cls.forward).parameters.values() if p.name != "self"]
    names = [p.name for p in params]
    required = [p.name for p in params if p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    gen = torch.Generator().manual_seed(1234)
    kwargs: dict[str, Any] = {}
    if main == "input_ids":
        vocab = getattr(config, "vocab_size", None) or getattr(getattr(config, "text_config", None), "vocab_size",
                                                                  VOCAB)
        main_value = torch.randint(3, max(4, min(int(vocab), VOCAB)), (BATCH, SEQ), generator=gen)
        if "attention_mask" in names:
            mask = torch.ones(BATCH, SEQ, dtype=torch.long)
            mask[-1, -2:] = 0
            kwargs["attention_mask"] = mask
        if "decoder_input_ids" in names and getattr(config, "is_encoder_decoder", False):
            kwargs["decoder_input_ids"] = torch.randint(3, max(4, min(int(vocab), VOCAB)), (BATCH, DEC_SEQ),
                                                        generator=gen)
    else:
        vcfg = getattr(config, "vision_config", None) or config
        size = getattr(vcfg, "image_size", None) or getattr(config, "image_size", None) or CNN_IMG
        h, w = (size, size) if isinstance(size, int) else tuple(size)[-2:]
        ch = getattr(vcfg, "num_channels", None) or 3
        main_value = torch.randn(BATCH, int(ch), int(h), int(w), generator=gen)
    missing = [n for n in required if n != main and n not in kwargs]
    if missing:
        raise Skip(f"forward needs {', '.join(missing)}")
    try:  # size check on meta first: a config whose sizes were not shrunk must not eat the memory
        with torch.device("meta"):
            meta_model = cls(config)
        n_meta = n_params(meta_model)
        del meta_model
    except Exception:
        n_meta = None
    if n_meta is not None and n_meta > MAX_PARAMS:
        raise Skip(f"still {n_meta / 1e6:.0f}M parameters after shrinking the config")
    try:
        torch.manual_seed(0)
        model = cls(config)
        perturb_constant_tensors(model, seed=0)  # random norm affines / BN stats: slicing bugs show
        model.eval()
    except Exception as exc:
        raise Skip(f"model: {_first_line(exc, 120)}") from exc
    extra: dict[str, Any] = {}
    if main == "input_ids" and "pixel_values" in names:  # multimodal: text alone first, then with an image
        vcfg = getattr(config, "vision_config", None)
        size = getattr(vcfg, "image_size", None) if vcfg is not None else None
        if isinstance(size, int):
            extra["pixel_values"] = torch.randn(BATCH, int(getattr(vcfg, "num_channels", 3) or 3), size, size,
                                                generator=gen)
    first_error: Exception | None = None
    for more in ({}, extra) if extra else ({},):
        call_kwargs = {**kwargs, **more}
        if names and names[0] == main:
            args: tuple[Any, ...] = (main_value,)
        else:
            args = ()
            call_kwargs = {main: main_value, **call_kwargs}
        try:
            with torch.no_grad():
                out1 = model(*args, **call_kwargs)
                out2 = model(*args, **call_kwargs)
            kwargs = call_kwargs
            break
        except Exception as exc:
            first_error = first_error or exc
    else:
        assert first_error is not None
        raise Skip(f"does not run on generic inputs: {_first_line(first_error, 120)}") from first_error
    if not _same(out1, out2):  # e.g. ViTMAE's random masking: slim vs masked cannot be compared
        raise Skip("forward is not deterministic (random sampling inside forward)")
    return model, args, kwargs, cls.__name__


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    return []


def _same(a: Any, b: Any) -> bool:
    """Whether two outputs of the same call are identical (NaNs equal)."""
    ta, tb = _tensors(a), _tensors(b)
    return len(ta) == len(tb) and all(
        x.shape == y.shape and bool(torch.isclose(x, y, rtol=0, atol=0, equal_nan=True).all())
        if x.is_floating_point() else torch.equal(x, y) for x, y in zip(ta, tb))


def skip_kind(detail: str) -> str:
    """Coarse skip reason for the summary line (the full reason is in the list)."""
    head = detail.split(":")[0]
    if head.startswith("still "):
        return "still too large after shrinking"
    if head.startswith("forward needs "):
        return "forward needs other inputs"
    if head.startswith("model class "):
        return "model class not importable"
    return head


def run_one(model_type: str, class_names: list[str], conn: Connection, verbose: bool) -> None:
    """Child process: build, prune, verify; send stage updates and the final :class:`Row`."""
    torch.set_num_threads(1)
    if not verbose:  # transformers' and the model's own prints / warnings
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    warnings.simplefilter("ignore")
    with contextlib.suppress(Exception):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    from pruning_ir import PruningIR, UniformLabelSelector, verify_pruning
    from pruning_ir.errors import PruningIRError

    t0 = time.perf_counter()
    row = Row(model_type)

    def stage(name: str) -> None:
        row.stage = name
        conn.send(("stage", name))

    try:
        stage("setup")
        try:
            model, args, kwargs, row.cls = build_case(model_type, class_names)
        except Skip as exc:
            row.status, row.detail = "skipped", str(exc)
            return
        except Exception as exc:  # before pruning_ir runs: the recipe does not fit (a missing extra, ...)
            row.status, row.detail = "skipped", f"setup: {_first_line(exc, 120)}"
            return
        row.params_before = n_params(model)
        stage("build")
        t1 = time.perf_counter()
        ir = PruningIR(model, example_inputs=args, example_kwargs=kwargs)
        row.build_s = time.perf_counter() - t1
        row.groups = len(ir.label_groups())
        row.prunable = len(ir.prunable_label_groups())
        stage("select")
        labels = UniformLabelSelector(RATIO).select(ir)
        row.labels = len(labels)
        if not labels:
            row.status = "nothing-prunable"
            row.params_after = row.params_before
            return
        stage("verify")
        rep = verify_pruning(ir, labels)
        row.params_after = rep.params_after
        row.max_abs_diff = rep.max_abs_diff
        row.reasons = list(rep.inexact_reasons)
        if rep.exact:
            row.status = "ok-exact"
            row.clean_diff = rep.max_abs_diff
        elif rep.inexact_reasons:
            row.status = "ok-inexact-listed"
            # the listed reasons must be the whole story: the groups without notes, pruned
            # alone, must match the masked original exactly
            groups = ir.label_groups()
            clean = [lab for lab in labels if not groups[lab.group].notes]
            if clean:
                stage("verify-clean")
                rep_clean = verify_pruning(ir, clean)
                row.clean_diff = rep_clean.max_abs_diff
                if not rep_clean.exact:
                    row.status = "WRONG"
                    row.detail = (f"groups without notes: max_abs_diff {rep_clean.max_abs_diff:.3e} "
                                  f"(max |ref| {rep_clean.max_reference:.3e}), not exact")
        else:
            row.status = "WRONG"
            row.detail = f"max_abs_diff {rep.max_abs_diff:.3e} (max |ref| {rep.max_reference:.3e}), no reason listed"
    except PruningIRError as exc:
        row.status, row.detail, row.where = "error", _first_line(exc), _where(exc)
    except Exception as exc:
        row.status, row.detail, row.where = "CRASH", _first_line(exc), _where(exc)
    finally:
        row.seconds = time.perf_counter() - t0
        conn.send(("done", asdict(row)))
        conn.close()


def run_isolated(model_type: str, class_names: list[str], timeout: float, verbose: bool) -> Row:
    """:func:`run_one` in a forked subprocess, killed after ``timeout`` seconds."""
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=run_one, args=(model_type, class_names, send, verbose), daemon=True)
    t0 = time.perf_counter()
    proc.start()
    send.close()
    stage, result = "start", None
    while result is None:
        left = timeout - (time.perf_counter() - t0)
        if left <= 0:
            break
        try:
            if recv.poll(min(left, 0.5)):
                kind, payload = recv.recv()
                if kind == "stage":
                    stage = payload
                else:
                    result = payload
            elif not proc.is_alive() and not recv.poll(0):
                break
        except EOFError:
            break
    if result is None and proc.is_alive():
        proc.kill()
        proc.join()
        row = Row(model_type, status="timeout", detail=f"> {timeout:.0f} s in {stage}", stage=stage)
    elif result is None:
        proc.join()
        row = Row(model_type, status="CRASH", stage=stage,
                  detail=f"subprocess died with exit code {proc.exitcode} in {stage}")
    else:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
        row = Row(**result)
    row.seconds = time.perf_counter() - t0
    recv.close()
    return row


def warm_up() -> None:
    """Import what every child needs and run pruning_ir once, before forking.

    The first model class imported pulls in most of ``transformers`` (modeling utils, generation,
    attention integrations: ~15 s on a busy 2-CPU machine); the forked children inherit it.
    """
    with contextlib.suppress(Exception):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    import transformers

    from pruning_ir import PruningIR, UniformLabelSelector

    for name in ("LlamaForCausalLM", "BertForMaskedLM", "ViTForImageClassification", "T5Model"):
        with contextlib.suppress(Exception):
            getattr(transformers, name)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.LayerNorm(8), torch.nn.ReLU(),
                                torch.nn.Linear(8, 5)).eval()
    ir = PruningIR(model, example_inputs=(torch.randn(2, 6),))
    ir.prune(labels=UniformLabelSelector(RATIO).select(ir), verify=True)


# ----------------------------------------------------------------------------- report
HEADERS = ("model_type", "class", "status", "params", "params after", "#groups", "#prunable groups",
           "#prunable labels", "IR build s", "max_abs_diff", "note-free diff", "total s", "detail")


def fmt_params(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def table_row(r: Row) -> list[str]:
    after = fmt_params(r.params_after)
    if r.params_after is not None and r.params_before:
        after += f" ({r.params_after / r.params_before:.2f})"
    detail = r.detail
    if r.status == "ok-inexact-listed":
        detail = f"{len(r.reasons)} reason(s)"
    return [r.model_type, r.cls, r.status, fmt_params(r.params_before), after,
            "-" if r.groups is None else str(r.groups), "-" if r.prunable is None else str(r.prunable),
            "-" if r.labels is None else str(r.labels), fmt_s(r.build_s),
            "-" if r.max_abs_diff is None else f"{r.max_abs_diff:.2e}",
            "-" if r.clean_diff is None else f"{r.clean_diff:.2e}", fmt_s(r.seconds),
            detail if len(detail) <= 110 else detail[:109] + "…"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", help="comma-separated model types (default: all; see --list)")
    ap.add_argument("--quick", action="store_true", help=f"a fixed list of {len(QUICK)} diverse architectures")
    ap.add_argument("--limit", type=int, default=0, help="only the first N model types")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per model, whole subprocess (default 120)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="models run at the same time, each in its own subprocess (default 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each subprocess (default 1)")
    ap.add_argument("--verbose", action="store_true", help="keep the subprocesses' stdout / stderr")
    ap.add_argument("--list", action="store_true", help="list the candidate model types and exit")
    ap.add_argument("--out", default="hf_sweep.md", help="file name under benchmarks/results/")
    args = ap.parse_args(argv)

    torch.set_num_threads(max(args.threads, 1))
    try:
        import transformers  # noqa: F401
    except Exception as exc:
        sys.exit(f"transformers not importable: {_first_line(exc)}")
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    warm_up()
    print(f"[hf_sweep] imports and warm-up in the parent: {time.perf_counter() - t0:.1f}s", file=sys.stderr)

    cands = candidates()
    if args.list:
        print("\n".join(f"{k}: {', '.join(v)}" for k, v in cands.items()))
        return 0
    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
    elif args.quick:
        names = list(QUICK)
    else:
        names = list(cands)
    unknown = [n for n in names if n not in cands]
    if unknown:
        sys.exit(f"unknown model type(s) {unknown}; see --list")
    if args.limit:
        names = names[: args.limit]

    env = environment()
    busy = busy_warning()
    if busy:
        print(busy, file=sys.stderr)
    t_start = time.perf_counter()
    done = 0

    def one(name: str) -> Row:
        nonlocal done
        r = run_isolated(name, cands[name], args.timeout, args.verbose)
        done += 1
        print(f"[hf_sweep {done}/{len(names)}] {name}: {r.status} {r.seconds or 0:.1f}s {r.detail[:100]}",
              file=sys.stderr, flush=True)
        return r

    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:  # threads only wait on subprocesses
        rows = list(pool.map(one, names))
    total = time.perf_counter() - t_start

    counts = Counter(r.kind for r in rows)
    order = ("ok-exact", "ok-inexact-listed", "WRONG", "nothing-prunable", "error", "CRASH", "timeout", "skipped")
    summary = ", ".join(f"{k}: {counts.get(k, 0)}" for k in order)
    attempted = len(rows) - counts.get("skipped", 0)
    bad = [r for r in rows if r.kind in ("WRONG", "CRASH")]
    main_rows = [r for r in rows if r.kind != "skipped"]
    skipped = [r for r in rows if r.kind == "skipped"]
    skip_kinds = Counter(skip_kind(r.detail) for r in skipped)
    table = markdown_table(HEADERS, [table_row(r) for r in main_rows])
    lines = [
        f"{len(rows)} model types, {attempted} built and run through pruning_ir (uniform ratio {RATIO}).",
        f"Status counts: {summary}.",
        "Skipped by reason: " + (", ".join(f"{k}: {v}" for k, v in skip_kinds.most_common()) or "none") + ".",
    ]
    if bad:
        lines.append("FAILED (WRONG or CRASH): " + ", ".join(r.model_type for r in bad))
    print(table)
    print()
    print("\n".join(lines))
    print(f"total {total:.1f}s")

    cmd = "python benchmarks/hf_sweep.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    doc = [
        "# pruning_ir HF architecture sweep",
        "",
        f"Generated by `{cmd}` on {time.strftime('%Y-%m-%d')} ({env}), total {total:.0f} s.",
        "",
        "Every `model_type` of the `transformers` auto mappings, built from its config class alone with "
        "tiny sizes (hidden 64 = 4 heads x 16, 2 kv heads, intermediate 112, 2 layers, vocab 99, 32x32 "
        "images / 8x8 patches; sub-configs too), as the causal-LM, masked-LM or image-classification head "
        "model, else the base model; inputs `input_ids` + padded `attention_mask` (text) or `pixel_values` "
        "(vision). Each model runs in its own subprocess: `PruningIR(model, ...)`, "
        "`UniformLabelSelector(0.3).select(ir)`, `verify_pruning(ir, labels)`. Status: `ok-exact`; "
        "`ok-inexact-listed` (inexact with the reasons listed by the IR, and exact when only the groups "
        "without such notes are pruned: `note-free diff`); `WRONG` (inexact with no reason listed, or the "
        "note-free part inexact: a silently wrong model); `nothing-prunable`; `error` (a `pruning_ir.errors` "
        "refusal); `CRASH` (any "
        "other exception while pruning_ir ran, or the subprocess died); `timeout`; `skipped` (the generic "
        "recipe does not fit the model; listed below). `params after` = parameters of the slim model "
        "(ratio to before); `IR build s` = `PruningIR(...)`; `total s` = the whole subprocess.",
        "",
        *[f"{line}  " for line in lines],
        "",
        table,
    ]
    if busy:
        doc[4:4] = [f"> {busy}.", ""]
    problems = [r for r in rows if r.kind in ("WRONG", "CRASH", "error", "timeout")]
    if problems:
        doc += ["", "## WRONG, CRASH, error and timeout rows", ""]
        doc += [f"- **{r.model_type}** ({r.cls}, {r.status}, stage {r.stage}): {md_cell(r.detail)}"
                + (f" -- at `{r.where}`" if r.where else "") for r in problems]
    if skipped:
        doc += ["", "## Skipped", ""]
        doc += [f"- {r.model_type} ({r.cls}): {md_cell(r.detail)}" for r in skipped]
    path = write_result(args.out, "\n".join(doc) + "\n")
    print(f"written {path}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
