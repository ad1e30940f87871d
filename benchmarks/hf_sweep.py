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
  not fit it), then builds ``PruningIR(model, ...)`` and prunes three selections of labels:

  - ``uniform 0.3``: ``UniformLabelSelector(0.3).select(ir)``;
  - ``random 0`` and ``random 1``: :func:`random_selection` with seeds 0 and 1 (every prunable
    group loses a random 5-90 % of its labels, a random subset, keeping at least one step and
    a multiple of the group's step; a draw that ``ir.check_labels`` refuses because it would
    empty a concatenation of slices is redrawn, up to 20 times).

  For each selection ``verify_pruning(ir, labels)`` prunes and compares the slim model with the
  original whose removed labels' parameter entries are set to zero (the masked original), on
  outputs **and** the gradients of every kept parameter entry (of a fixed random projection of
  the outputs), under three conditions: the example call (modules in their traced modes),
  ``train mode`` (every module training, dropout keeping every entry, same seeds) and
  ``batch N`` (the example call with one more example). A condition the masked original itself
  cannot run (BatchNorm training on one example, no batch axis, ...) is *skipped* by
  ``verify_pruning`` with the reason; this script reports which conditions ran and which were
  skipped.

Outcome of one selection:

* ``exact``: every check that ran matches within float rounding, outputs and gradients
  (``Check.exact``: ``diff <= 1e-4 * max(1, max |reference|)``, each separately);
* ``listed``: not exact, ``verify_pruning`` lists why (a norm, mean or softmax over pruned
  channels, a Python-held scale), no check failed, and the selection's labels from groups
  *without* such notes, pruned together in one ``verify_pruning``, are exact under every
  condition (``note-free diff``);
* ``WRONG``: not exact with **no reason listed**; or the note-free part not exact; or a check
  with ``error`` set (the slim model raises where the masked original runs), in the selection's
  run or its note-free run; or no condition could run at all -- a silently wrong (or broken)
  model, the worst outcome;
* ``refused``: a ``pruning_ir.errors.PruningIRError`` raised by ``prune``/``verify_pruning``
  (or by ``check_labels`` refusing every random draw) for labels of groups the IR marked
  prunable -- a defect: the IR promised the group can be pruned;
* ``CRASH``: any other exception while selecting, pruning or verifying (innermost frame kept);
* ``none``: the selection is empty.

Status per model (the table's ``status`` column), the worst over its three selections
(``WRONG`` > ``CRASH`` > ``refused-at-prune`` > ``timeout`` > ``ok-inexact-listed`` >
``ok-exact`` > ``nothing-prunable``):

* ``ok-exact``, ``ok-inexact-listed``, ``WRONG``, ``refused-at-prune``, ``CRASH``: the worst
  selection outcome (``CRASH`` also when the subprocess died);
* ``nothing-prunable``: the IR found no prunable label group (every selection empty);
* ``error``: a ``PruningIRError`` while building the IR (a clear refusal: allowed);
* ``CRASH``: any other exception while building the IR;
* ``timeout`` (with the stage it was in; selections finished before it are still shown, and a
  ``WRONG``/``CRASH``/``refused`` among them wins), ``skipped (reason)`` (config, model or inputs
  could not be built generically, or the model does not run on them).

The table (one row per model: the model status, a column per selection, the conditions that
ran, worst differences) is printed and written to ``benchmarks/results/hf_sweep.md``, with a
summary line counting models per status, per selection outcome and per condition (ran in every
verified selection / skipped in one / slim failed), and the skip reasons grouped. Exit status 1
when a model is ``WRONG``, ``CRASH`` or ``refused-at-prune``; errors, nothing-prunable, timeouts
and skips are reported only.

Usage::

    python benchmarks/hf_sweep.py --timeout 240        # every architecture (~ 18 min on 2 CPUs with --jobs 1;
                                                       # zamba / zamba2 take 60-105 s each)
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
import random
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
TARGET_BUILD_S = 20.0  # no model's IR build may take longer (issue 13)
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
    if isinstance(fields.get("mamba_d_ssm"), int):  # Falcon-H1: an SSM width of its own (1024 = 128 heads x 8)
        kw.update(mamba_d_ssm=64, mamba_n_heads=8, mamba_d_head=8, mamba_d_state=16, mamba_chunk_size=16)
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
SELECTIONS = ("uniform 0.3", "random 0", "random 1")
CONDITIONS = ("example", "train", "batch")  # kinds of verify_pruning's checks
SEL_STATUS = {"exact": "ok-exact", "listed": "ok-inexact-listed", "WRONG": "WRONG", "refused": "refused-at-prune",
              "CRASH": "CRASH", "none": "nothing-prunable"}
SEVERITY = ("nothing-prunable", "ok-exact", "ok-inexact-listed", "timeout", "refused-at-prune", "CRASH", "WRONG")


@dataclass
class Sel:
    """The outcome of one selection (see the module docstring)."""

    name: str
    outcome: str = "-"  # exact / listed / WRONG / refused / CRASH / none; "-": not reached
    labels: int | None = None
    params_after: int | None = None
    max_abs_diff: float | None = None  # outputs, worst over the checks that ran
    max_grad_diff: float | None = None  # kept parameter entries' gradients, worst over the checks
    clean_diff: float | None = None  # outputs of the note-free run (the main run when exact)
    clean_grad_diff: float | None = None
    reasons: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)  # names of the checks that ran (Check.name)
    failed: list[str] = field(default_factory=list)  # checks whose slim model raised
    skipped: list[str] = field(default_factory=list)  # verify_pruning's skipped (main and note-free runs)
    unverified: int = 0
    detail: str = ""
    where: str = ""


@dataclass
class Row:
    model_type: str
    cls: str = "-"
    status: str = "-"
    detail: str = ""  # error message, skip reason, timeout stage
    where: str = ""  # innermost frame of a crash
    stage: str = "setup"
    params_before: int | None = None
    build_s: float | None = None
    groups: int | None = None
    prunable: int | None = None
    sels: list[dict[str, Any]] = field(default_factory=list)  # asdict(Sel) per selection reached
    seconds: float | None = None
    fx: str = "-"  # ir.to_fx() replayed on the example call: exact / DIFF / FAIL (see fx_replay)
    saved: str = "-"  # save_pruned -> load_pruned of the "random 0" slim model (see deploy)
    exported: str = "-"  # export_onnx + ONNX Runtime of the same slim model
    deploy_detail: str = ""

    @property
    def kind(self) -> str:
        return self.status.split(" ")[0]

    def selections(self) -> list[Sel]:
        return [Sel(**d) for d in self.sels]


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


# Copied from tests/checks.py (random_selection, commit a490574) so that the benchmark does not
# depend on tests/: what a selector could produce, drawn at random. Differences: the rounding to
# the step grid is corrected (the original's ``n -= (g.size - n) % g.step`` adds the remainder to
# the kept count, which stays off the grid for steps other than 1 and 2, and check_labels rightly
# refuses such draws); a draw refused for another reason than an emptied concatenation is
# re-raised (reported, not asserted); running out of draws raises NoRandomSelection.
class NoRandomSelection(Exception):
    """``check_labels`` refused every random draw (each emptied a concatenation of slices)."""


def random_selection(ir: Any, seed: int) -> list[Any]:
    """Every prunable group loses a random fraction (0.05-0.9) of its labels, a random subset of
    them, keeping at least one step and a multiple of the group's step; draws that empty a
    concatenation of slices (a ``LabelError`` "... none of ...") are redrawn, up to 20 times."""
    from pruning_ir.errors import LabelError

    gen = random.Random(seed)
    last = ""
    for _ in range(20):
        out: list[Any] = []
        for g in ir.prunable_label_groups():
            n = int(gen.uniform(0.05, 0.9) * g.size)
            n = min(n, g.size - g.step)
            n -= -(g.size - n) % g.step  # kept count rounded up onto the step grid
            if n > 0:
                out += gen.sample(ir.labels(g), n)
        try:
            ir.check_labels(out)
        except LabelError as exc:
            if "none of" not in str(exc):
                raise
            last = _first_line(exc, 200)
            continue
        return out
    raise NoRandomSelection(f"check_labels refused 20 random draws, last: {last}")


def condition_kind(name: str) -> str:
    """``example`` / ``train`` / ``batch`` for a Check name or a skipped entry of verify_pruning."""
    if name.startswith("example"):
        return "example"
    if name.startswith("train"):
        return "train"
    if name.startswith(("batch", "other batch")):
        return "batch"
    return name.split(":")[0]


def _check_text(c: Any) -> str:
    if c.error:
        msg = c.error.strip().splitlines()[0] if c.error.strip() else c.error
        return f"{c.name}: the slim model fails where the masked original runs: {msg[:200]}"
    # Check.exact's tolerance: diff <= 1e-4 * max(1, max |reference|); "!" marks what exceeds it
    bad = c.max_abs_diff > 1e-4 * max(1.0, c.max_reference)
    text = f"{c.name}: out {c.max_abs_diff:.2e}{' !' if bad else ''} (max |ref| {c.max_reference:.2e})"
    if c.max_grad_diff is not None:
        bad = c.max_grad_diff > 1e-4 * max(1.0, c.max_grad_reference)
        text += f", grad {c.max_grad_diff:.2e}{' !' if bad else ''} (max |ref| {c.max_grad_reference:.2e})"
    return text


def _grad_worst(rep: Any) -> float | None:
    vals = [c.max_grad_diff for c in rep.checks if c.max_grad_diff is not None]
    return max(vals) if vals else None


def judge(ir: Any, labels: list[Any], sel: Sel, stage: Any) -> None:
    """``verify_pruning`` of one selection (and of its note-free part); fills ``sel``."""
    from pruning_ir import verify_pruning

    rep = verify_pruning(ir, labels)
    sel.params_after = rep.params_after
    sel.max_abs_diff = None if not rep.checks else rep.max_abs_diff
    sel.max_grad_diff = _grad_worst(rep)
    sel.reasons = list(rep.inexact_reasons)
    sel.ran = [c.name for c in rep.checks]
    sel.failed = [c.name for c in rep.checks if c.error]
    sel.skipped = list(rep.skipped)
    sel.unverified = len(rep.unverified)
    if sel.failed:
        sel.outcome = "WRONG"
        sel.detail = "; ".join(_check_text(c) for c in rep.checks if c.error)
        return
    if not rep.checks:
        sel.outcome = "WRONG"
        sel.detail = "no condition could run: " + "; ".join(rep.skipped)[:300]
        return
    if rep.exact:
        sel.outcome = "exact"
        sel.clean_diff, sel.clean_grad_diff = sel.max_abs_diff, sel.max_grad_diff
        return
    if not rep.inexact_reasons:
        sel.outcome = "WRONG"
        sel.detail = "inexact, no reason listed: " + "; ".join(_check_text(c) for c in rep.checks if not c.exact)
        return
    sel.outcome = "listed"
    # the listed reasons must be the whole story: the labels of groups without notes, pruned
    # together, must match the masked original exactly (outputs and gradients, every condition)
    groups = ir.label_groups()
    clean = [lab for lab in labels if not groups[lab.group].notes]
    if not clean:
        return
    stage(f"verify-clean {sel.name}")
    rc = verify_pruning(ir, clean)
    sel.clean_diff = None if not rc.checks else rc.max_abs_diff
    sel.clean_grad_diff = _grad_worst(rc)
    sel.skipped += [f"note-free run, {s}" for s in rc.skipped if s not in rep.skipped]
    if any(c.error for c in rc.checks):
        sel.outcome = "WRONG"
        sel.failed += [f"note-free {c.name}" for c in rc.checks if c.error]
        sel.detail = "groups without notes: " + "; ".join(_check_text(c) for c in rc.checks if c.error)
    elif not rc.checks:
        sel.outcome = "WRONG"
        sel.detail = "groups without notes: no condition could run: " + "; ".join(rc.skipped)[:300]
    elif not rc.exact:
        sel.outcome = "WRONG"
        sel.detail = "groups without notes, not exact: " + "; ".join(_check_text(c) for c in rc.checks if not c.exact)


def fx_replay(ir: Any, row: Row) -> None:
    """``ir.to_fx()`` run on the example call's tensors against the model itself (stock
    ``nn.MultiheadAttention`` run through the explicit forward the trace used): ``exact``, or
    ``DIFF`` / ``FAIL`` with the reason in ``deploy_detail``."""
    from torch.utils import _pytree as pytree

    from pruning_ir._trace.run import call_modes, flat_tensors
    from pruning_ir.modules import explicit_forward, traces_explicitly

    args, kwargs = ir.snapshot().example
    try:
        gm = ir.to_fx()
        tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        explicit = [m for m in ir.model.modules() if traces_explicitly(m)]
        for m in explicit:
            m.forward = explicit_forward(m)
        try:
            with torch.no_grad(), call_modes(ir.model, ir.snapshot().modes, seed="always"):
                want = flat_tensors(ir.model(*args, **kwargs))
            with torch.no_grad(), call_modes(ir.model, ir.snapshot().modes, seed="always"):
                got = list(gm(*tensors))
        finally:
            for m in explicit:
                m.__dict__.pop("forward", None)
        row.fx = "exact" if _same(want, got) else "DIFF"
        if row.fx == "DIFF":
            row.deploy_detail = "to_fx: outputs differ; "
    except Exception as exc:
        row.fx = "FAIL"
        row.deploy_detail = f"to_fx: {_first_line(exc, 200)} at {_where(exc)}; "


DEPLOY_BAD = ("DIFFERS", "CRASH")
"""Save/load outcomes that fail the sweep (save_pruned checks its own round trip, so a model it
cannot save comes back as ``refused``, reported only)."""


def deploy(ir: Any, row: Row, stage: Any, progress: Any) -> None:
    """Deployment of the ``random 0`` slim model (non-uniform widths): ``save_pruned`` to a
    temporary directory and ``load_pruned`` back (``ok`` when the outputs on the example call are
    identical; ``refused`` when save_pruned's own check refuses it; ``DIFFERS``/``CRASH`` otherwise),
    then ``export_onnx`` with its ONNX Runtime check (``ok``, ``ok (baked)`` for literal-patched
    models; when it fails, whether the *original* model exports: ``original does not export``
    when it does not either, else ``BLOCKED`` with the error and the innermost frame)."""
    import tempfile

    from pruning_ir import load_pruned, save_pruned
    from pruning_ir.errors import PruningIRError
    from pruning_ir.export import export_onnx, patched_modules

    stage("deploy prune")
    pruned = ir.prune(labels=random_selection(ir, 0))
    args, traced_kwargs = ir.snapshot().example
    kwargs = dict(traced_kwargs)
    if "use_cache" in inspect.signature(ir.model.forward).parameters:
        kwargs["use_cache"] = False  # exported as deployed: a KV cache object is no output a program returns
    notes = []
    with tempfile.TemporaryDirectory() as d:
        stage("deploy save")
        try:
            save_pruned(pruned, d)
            loaded = load_pruned(d)
            with torch.no_grad():  # the traced call (a call the IR did not trace may take another path)
                same = _same(pruned.model(*args, **traced_kwargs), loaded(*args, **traced_kwargs))
            row.saved = "ok" if same else "DIFFERS"
        except PruningIRError as exc:
            row.saved = "refused"
            notes.append(f"save: {_first_line(exc, 200)}")
        except Exception as exc:
            row.saved = "CRASH"
            notes.append(f"save: {_first_line(exc, 200)} at {_where(exc)}")
        progress()
        stage("deploy export")
        baked = " (baked)" if patched_modules(pruned.model) else ""
        try:
            export_onnx(pruned.model, Path(d) / "slim.onnx", args, kwargs)
            row.exported = "ok" + baked
        except Exception as exc:
            stage("deploy export original")
            try:
                export_onnx(ir.model, Path(d) / "original.onnx", args, kwargs)
                row.exported = "BLOCKED" + baked
            except Exception:
                row.exported = "original does not export"
            notes.append(f"export: {_first_line(exc, 200)} at {_where(exc)}")
    row.deploy_detail += "; ".join(notes)


def run_one(model_type: str, class_names: list[str], conn: Connection, verbose: bool, with_deploy: bool = True
            ) -> None:
    """Child process: build, then prune and verify each selection; send stage updates, the row
    so far after each step (kept when the model times out) and the final :class:`Row`."""
    torch.set_num_threads(1)
    if not verbose:  # transformers' and the model's own prints / warnings
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    warnings.simplefilter("ignore")
    with contextlib.suppress(Exception):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    from pruning_ir import PruningIR, UniformLabelSelector
    from pruning_ir.errors import PruningIRError

    t0 = time.perf_counter()
    row = Row(model_type)

    def stage(name: str) -> None:
        row.stage = name
        conn.send(("stage", name))

    def progress() -> None:
        row.seconds = time.perf_counter() - t0
        conn.send(("row", asdict(row)))

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
        try:
            ir = PruningIR(model, example_inputs=args, example_kwargs=kwargs)
            row.build_s = time.perf_counter() - t1
            row.groups = len(ir.label_groups())
            row.prunable = len(ir.prunable_label_groups())
        except PruningIRError as exc:
            row.status, row.detail, row.where = "error", _first_line(exc), _where(exc)
            return
        except Exception as exc:
            row.status, row.detail, row.where = "CRASH", _first_line(exc), _where(exc)
            return
        progress()
        pickers = {
            "uniform 0.3": lambda: UniformLabelSelector(RATIO).select(ir),
            "random 0": lambda: random_selection(ir, 0),
            "random 1": lambda: random_selection(ir, 1),
        }
        for name in SELECTIONS:
            sel = Sel(name)
            try:
                stage(f"select {name}")
                labels = list(pickers[name]())
                sel.labels = len(labels)
                if not labels:
                    sel.outcome = "none"
                else:
                    stage(f"verify {name}")
                    judge(ir, labels, sel, stage)
            except (PruningIRError, NoRandomSelection) as exc:
                sel.outcome, sel.detail, sel.where = "refused", _first_line(exc), _where(exc)
            except Exception as exc:
                sel.outcome, sel.detail, sel.where = "CRASH", _first_line(exc), _where(exc)
            row.sels.append(asdict(sel))
            progress()
        row.status, row.detail, row.where = model_status(row.selections())
        if with_deploy and row.prunable and row.kind in ("ok-exact", "ok-inexact-listed"):
            try:
                stage("deploy to_fx")
                fx_replay(ir, row)
                deploy(ir, row, stage, progress)
                progress()
            except Exception as exc:  # pruning the deployed selection itself
                row.saved, row.deploy_detail = "CRASH", f"{_first_line(exc)} at {_where(exc)}"
    except Exception as exc:  # in the benchmark itself
        row.status, row.detail, row.where = "CRASH", _first_line(exc), _where(exc)
    finally:
        row.seconds = time.perf_counter() - t0
        conn.send(("done", asdict(row)))
        conn.close()


def model_status(sels: list[Sel], floor: str = "nothing-prunable") -> tuple[str, str, str]:
    """(status, detail, where) of a model: the worst selection outcome (not better than ``floor``)."""
    status, detail, where = floor, "", ""
    for s in sels:
        st = SEL_STATUS.get(s.outcome)
        if st is not None and SEVERITY.index(st) > SEVERITY.index(status):
            status, detail, where = st, (f"{s.name}: {s.detail}" if s.detail else ""), s.where
    if status == "ok-inexact-listed":
        reasons = {r for s in sels for r in s.reasons}
        detail = f"{len(reasons)} reason(s)"
    return status, detail, where


def run_isolated(model_type: str, class_names: list[str], timeout: float, verbose: bool, with_deploy: bool = True
                 ) -> Row:
    """:func:`run_one` in a forked subprocess, killed after ``timeout`` seconds."""
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=run_one, args=(model_type, class_names, send, verbose, with_deploy), daemon=True)
    t0 = time.perf_counter()
    proc.start()
    send.close()
    stage, result, partial = "start", None, None
    while result is None:
        left = timeout - (time.perf_counter() - t0)
        if left <= 0:
            break
        try:
            if recv.poll(min(left, 0.5)):
                kind, payload = recv.recv()
                if kind == "stage":
                    stage = payload
                elif kind == "row":
                    partial = payload
                else:
                    result = payload
            elif not proc.is_alive() and not recv.poll(0):
                break
        except EOFError:
            break
    if result is None:
        if proc.is_alive():
            proc.kill()
            proc.join()
            status, detail = "timeout", f"> {timeout:.0f} s in {stage}"
        else:
            proc.join()
            status, detail = "CRASH", f"subprocess died with exit code {proc.exitcode} in {stage}"
        row = Row(**partial) if partial is not None else Row(model_type)
        row.stage = stage
        if stage.startswith("deploy"):  # the selections are judged; deployment ran out of time
            row.status, row.detail, row.where = model_status(row.selections())
            if stage in ("deploy prune", "deploy save"):
                row.saved = "timeout"
            row.exported = "timeout"
            row.deploy_detail = f"> {timeout:.0f} s in {stage}"
            row.seconds = time.perf_counter() - t0
            recv.close()
            return row
        # selections finished before: a WRONG / CRASH / refused among them wins over a timeout
        worst, sdetail, swhere = model_status(row.selections(), floor=status)
        if worst == status:
            row.status, row.detail, row.where = status, detail, ""
        else:
            row.status, row.detail, row.where = worst, f"{sdetail}; then {status}: {detail}", swhere
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

    from pruning_ir import PruningIR, UniformLabelSelector, verify_pruning

    for name in ("LlamaForCausalLM", "BertForMaskedLM", "ViTForImageClassification", "T5Model"):
        with contextlib.suppress(Exception):
            getattr(transformers, name)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.LayerNorm(8), torch.nn.ReLU(),
                                torch.nn.Linear(8, 5)).eval()
    ir = PruningIR(model, example_inputs=(torch.randn(2, 6),))
    verify_pruning(ir, UniformLabelSelector(RATIO).select(ir))


# ----------------------------------------------------------------------------- report
HEADERS = ("model_type", "class", "status", "params", "params after", "#groups", "#prunable groups",
           "#labels u/r0/r1", "IR build s", *SELECTIONS, "conditions", "max_abs_diff out/grad",
           "note-free diff out/grad", "to_fx", "save/load", "export+ORT", "total s", "detail")
VERIFIED = ("exact", "listed", "WRONG")  # outcomes with a verify_pruning report


def fmt_params(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def _e(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"


def _worst(vals: list[float | None]) -> float | None:
    vals = [v for v in vals if v is not None]
    return max(vals) if vals else None


def conditions(r: Row) -> dict[str, str]:
    """Per condition kind: ``ran`` (in every verified selection), ``failed`` (the slim model raised
    in one), ``skipped`` (in one), or ``-`` (no verified selection)."""
    sels = [s for s in r.selections() if s.outcome in VERIFIED and (s.ran or s.skipped)]
    out: dict[str, str] = {}
    for kind in CONDITIONS:
        if not sels:
            out[kind] = "-"
        elif any(condition_kind(f.removeprefix("note-free ")) == kind for s in sels for f in s.failed):
            out[kind] = "failed"
        elif any(condition_kind(k.removeprefix("note-free run, ")) == kind for s in sels for k in s.skipped):
            out[kind] = "skipped"
        else:
            out[kind] = "ran"
    return out


def conditions_cell(r: Row) -> str:
    c = conditions(r)
    if all(v == "-" for v in c.values()):
        return "-"
    ran = " ".join(k[0].upper() for k in CONDITIONS if c[k] == "ran") or "none ran"
    other = [f"{k} {c[k]}" for k in CONDITIONS if c[k] not in ("ran", "-")]
    return ran + (f" ({', '.join(other)})" if other else "")


def sel_cell(s: Sel | None) -> str:
    if s is None:
        return "-"
    if s.outcome == "listed":
        return f"listed ({len(s.reasons)})"
    return s.outcome


def table_row(r: Row) -> list[str]:
    sels = {s.name: s for s in r.selections()}
    uni = sels.get(SELECTIONS[0])
    after = fmt_params(uni.params_after if uni else None)
    if uni is not None and uni.params_after is not None and r.params_before:
        after += f" ({uni.params_after / r.params_before:.2f})"
    labels = "/".join("-" if sels.get(n) is None or sels[n].labels is None else str(sels[n].labels)
                      for n in SELECTIONS)
    ss = list(sels.values())
    diff = f"{_e(_worst([s.max_abs_diff for s in ss]))}/{_e(_worst([s.max_grad_diff for s in ss]))}"
    clean = f"{_e(_worst([s.clean_diff for s in ss]))}/{_e(_worst([s.clean_grad_diff for s in ss]))}"
    detail = r.detail
    return [r.model_type, r.cls, r.status, fmt_params(r.params_before), after,
            "-" if r.groups is None else str(r.groups), "-" if r.prunable is None else str(r.prunable),
            labels if ss else "-", fmt_s(r.build_s), *[sel_cell(sels.get(n)) for n in SELECTIONS],
            conditions_cell(r), diff if ss else "-", clean if ss else "-", r.fx, r.saved, r.exported, fmt_s(r.seconds),
            detail if len(detail) <= 110 else detail[:109] + "…"]


def skip_reason_key(text: str) -> str:
    """A skipped condition's reason with numbers blanked, to group models by it."""
    text = text.removeprefix("note-free run, ")
    text = text.split(": ", 1)[1] if ": " in text else text
    return re.sub(r"\d+", "N", text)[:240]


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
    ap.add_argument("--no-deploy", action="store_true",
                    help="skip the deployment stage (save/load round trip, ONNX export + ONNX Runtime)")
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
        r = run_isolated(name, cands[name], args.timeout, args.verbose, not args.no_deploy)
        done += 1
        per_sel = " ".join(sel_cell(s) for s in r.selections())
        print(f"[hf_sweep {done}/{len(names)}] {name}: {r.status} [{per_sel}] {conditions_cell(r)} "
              f"fx {r.fx} save {r.saved} export {r.exported} {r.seconds or 0:.1f}s {r.detail[:100]} "
              f"{r.deploy_detail[:100]}",
              file=sys.stderr, flush=True)
        return r

    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:  # threads only wait on subprocesses
        rows = list(pool.map(one, names))
    total = time.perf_counter() - t_start

    counts = Counter(r.kind for r in rows)
    order = ("ok-exact", "ok-inexact-listed", "WRONG", "refused-at-prune", "CRASH", "nothing-prunable", "error",
             "timeout", "skipped")
    summary = ", ".join(f"{k}: {counts.get(k, 0)}" for k in order)
    attempted = len(rows) - counts.get("skipped", 0)
    bad = [r for r in rows if r.kind in ("WRONG", "CRASH", "refused-at-prune")]
    main_rows = [r for r in rows if r.kind != "skipped"]
    skipped = [r for r in rows if r.kind == "skipped"]
    skip_kinds = Counter(skip_kind(r.detail) for r in skipped)
    sel_order = ("exact", "listed", "WRONG", "refused", "CRASH", "none", "-")
    per_sel = []
    for n in SELECTIONS:
        c = Counter(next((s.outcome for s in r.selections() if s.name == n), "-") for r in main_rows)
        per_sel.append(f"{n}: " + ", ".join(f"{k} {c[k]}" for k in sel_order if c.get(k)))
    per_cond = []
    for kind, label in zip(CONDITIONS, ("example call", "train mode", "batch +1")):
        c = Counter(conditions(r)[kind] for r in main_rows)
        per_cond.append(f"{label}: " + ", ".join(f"{k} {c[k]}" for k in ("ran", "skipped", "failed", "-")
                                                  if c.get(k)))
    lines = [
        f"{len(rows)} model types, {attempted} built and run through pruning_ir (selections: "
        f"{', '.join(SELECTIONS)}; outputs and gradients).",
        f"Status counts (worst over the selections): {summary}.",
        "Per selection (models): " + "; ".join(per_sel) + " (`-`: not reached).",
        "Conditions (models; ran = in every verified selection, skipped = in at least one, failed = the slim "
        "model raised in one, - = no verified selection): " + "; ".join(per_cond) + ".",
        "Skipped models by reason: " + (", ".join(f"{k}: {v}" for k, v in skip_kinds.most_common()) or "none") + ".",
    ]
    deployed = [r for r in main_rows if r.saved != "-"]
    if deployed:
        cs, ce = Counter(r.saved for r in deployed), Counter(r.exported for r in deployed)
        cf = Counter(r.fx for r in deployed)
        lines.append("Trace replay (ir.to_fx() on the example call vs the model): "
                     + ", ".join(f"{k} {v}" for k, v in cf.most_common()) + ".")
        lines.append(f"Deployment of the random 0 slim model ({len(deployed)} models): save_pruned -> load_pruned "
                     + ", ".join(f"{k} {v}" for k, v in cs.most_common()) + "; export_onnx + ONNX Runtime "
                     + ", ".join(f"{k} {v}" for k, v in ce.most_common()) + ".")
    bad += [r for r in deployed if r.saved in DEPLOY_BAD and r not in bad]
    if bad:
        lines.append("FAILED (WRONG, CRASH, refused-at-prune, or a save/load that differs or crashes): "
                     + ", ".join(r.model_type for r in bad))
    built = [r for r in rows if r.build_s is not None]
    slow = sorted((r for r in built if r.build_s is not None and r.build_s > TARGET_BUILD_S),
                  key=lambda r: -(r.build_s or 0.0))
    slowest = max(built, key=lambda r: r.build_s or 0.0, default=None)
    lines.append(f"Target: IR build <= {TARGET_BUILD_S:.0f} s for every model: "
                 + (f"missed by {', '.join(f'{r.model_type} ({r.build_s:.1f} s)' for r in slow)}" if slow else
                    f"met (slowest {slowest.model_type}, {slowest.build_s:.1f} s)" if slowest else "not measured")
                 + ".")
    if slow:
        print(f"TARGET MISSED: IR build over {TARGET_BUILD_S:.0f} s: " + ", ".join(r.model_type for r in slow))
    table = markdown_table(HEADERS, [table_row(r) for r in main_rows])
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
        "(vision). Each model runs in its own subprocess: `PruningIR(model, ...)`, then three selections, "
        "`UniformLabelSelector(0.3)` and two random ones (seeds 0 and 1: every prunable group loses a random "
        "5-90 % of its labels, a random subset on the group's step grid), each through "
        "`verify_pruning(ir, labels)`: the slim model against the original with the removed labels masked to "
        "zero, outputs and kept parameter entries' gradients, on the example call (`E`), in train mode "
        "(`T`: dropout keeps everything, same seeds) and at batch size + 1 (`B`); a condition the masked "
        "original itself cannot run is skipped (listed below). Tolerance per check (`Check.exact`): "
        "diff <= 1e-4 * max(1, max |reference|), for outputs and for gradients; in the details `!` marks "
        "the differences above it. Selection outcome: `exact`; `listed (n)` "
        "(inexact with n reasons listed by the IR, and the selection's labels of groups without such notes, "
        "pruned together, exact: `note-free diff`); `WRONG` (inexact with no reason listed, the note-free "
        "part inexact, or the slim model raising where the masked original runs: a silently wrong or broken "
        "model); `refused` (a `pruning_ir.errors` refusal from prune/verify for groups the IR marked "
        "prunable: a defect); `CRASH` (any other exception); `none` (empty selection). Model status = the "
        "worst over the selections (`ok-exact`, `ok-inexact-listed`, `WRONG`, `refused-at-prune`, `CRASH`, "
        "`nothing-prunable`), or `error` (a `pruning_ir.errors` refusal while building the IR: allowed), "
        "`CRASH` (building the IR, or the subprocess died), `timeout`, `skipped` (the generic recipe does "
        "not fit the model; listed below). `conditions`: the conditions that ran in every verified "
        "selection. `params after` = parameters of the slim model for the uniform selection (ratio to "
        "before); diffs are the worst over the selections; `IR build s` = `PruningIR(...)`; `total s` = the "
        "whole subprocess.",
        "",
        *[f"{line}  " for line in lines],
        "",
        table,
    ]
    if busy:
        doc[4:4] = [f"> {busy}.", ""]
    problems = [r for r in rows if r.kind in ("WRONG", "CRASH", "refused-at-prune", "error", "timeout")]
    if problems:
        doc += ["", "## WRONG, CRASH, refused-at-prune, error and timeout rows", ""]
        for r in problems:
            where_stage = f", stage {r.stage}" if r.kind in ("timeout", "error") or not r.sels else ""
            doc.append(f"- **{r.model_type}** ({r.cls}, {r.status}{where_stage}): {md_cell(r.detail)}"
                       + (f" -- at `{r.where}`" if r.where else ""))
            for s in r.selections():
                if s.outcome in ("WRONG", "refused", "CRASH"):
                    doc.append(f"  - {s.name}: {s.outcome}: {md_cell(s.detail)}"
                               + (f" -- at `{s.where}`" if s.where else ""))
    undeployed = [r for r in main_rows if r.deploy_detail]
    if undeployed:
        doc += ["", "## Deployment problems (save/load refused or failed, export blocked)", ""]
        doc += [f"- **{r.model_type}** (save/load {r.saved}, export {r.exported}): {md_cell(r.deploy_detail)}"
                for r in undeployed]
    cond_skips: dict[tuple[str, str], list[str]] = {}
    for r in main_rows:
        seen: set[tuple[str, str]] = set()
        for s in r.selections():
            for k in s.skipped:
                key = (condition_kind(k.removeprefix("note-free run, ")), skip_reason_key(k))
                if key not in seen:
                    seen.add(key)
                    cond_skips.setdefault(key, []).append(r.model_type)
    if cond_skips:
        doc += ["", "## Conditions skipped (the masked original itself cannot run there), by reason", ""]
        for (kind, reason), models in sorted(cond_skips.items(), key=lambda kv: (kv[0][0], -len(kv[1]))):
            doc.append(f"- {kind}: {md_cell(reason)} -- {len(models)} model(s): {', '.join(models)}")
    if skipped:
        doc += ["", "## Skipped", ""]
        doc += [f"- {r.model_type} ({r.cls}): {md_cell(r.detail)}" for r in skipped]
    path = write_result(args.out, "\n".join(doc) + "\n")
    print(f"written {path}")
    return 1 if bad or slow else 0


if __name__ == "__main__":
    sys.exit(main())
