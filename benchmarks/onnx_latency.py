"""ONNX Runtime latency of slim models: does half the MACs make the exported model faster too?

For each model: ``L1NormCriterion`` scores, ``KnapsackLabelSelector`` to half the MACs
(``MacsLatency`` on the example inputs), ``prune``; then the original and the slim model are
exported with ``pruning_ir.export.export_onnx`` (checked in ONNX Runtime against the eager model)
and timed, eager (torch, one thread) and in ONNX Runtime (CPU provider, one intra-op thread), in
adjacent pairs (original, slim, original, slim, ...) so that a change of the machine's load hits
both; the ratio is the median of the per-pair ratios.

Target (exit status 1 on a miss): for every model whose original takes at least
``MIN_TARGET_MS`` (5 ms) in ONNX Runtime, the ONNX Runtime latency ratio slim / original at MACs 0.5
is at most ``TARGET_ORT_RATIO`` (0.8): the slim model is genuinely faster where it is deployed, not
only in eager PyTorch. Smaller models (the tiny test configs of BERT and LLaMA, well under a
millisecond) are reported: their time is the runtime's per-call overhead, which no pruning removes.

Usage::

    python benchmarks/onnx_latency.py                 # resnet50, mobilenet_v2_torch, vit, bert, llama
    python benchmarks/onnx_latency.py --models resnet50 --pairs 11
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _common import busy_warning, environment, markdown_table, pick, registry, write_result
from torch.utils import _pytree as pytree

TARGET_MACS = 0.5
TARGET_ORT_RATIO = 0.8
MIN_TARGET_MS = 5.0
DEFAULT = ("resnet50", "mobilenet_v2_torch", "vit_b_16_torch", "bert", "llama")


def _session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _feed(session: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    return {i.name: t.numpy() for i, t in zip(session.get_inputs(), tensors, strict=True)}


def _paired(a: Any, b: Any, pairs: int) -> tuple[float, float, float]:
    """Median ratio b/a over adjacent pairs, and the medians of a and b (seconds)."""
    for _ in range(2):
        a()
        b()
    ta, tb, ratios = [], [], []
    for _ in range(pairs):
        t0 = time.perf_counter()
        a()
        t1 = time.perf_counter()
        b()
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
        ratios.append((t2 - t1) / (t1 - t0))
    return statistics.median(ratios), statistics.median(ta), statistics.median(tb)


def measure(name: str, pairs: int) -> dict[str, Any]:
    from pruning_ir import KnapsackLabelSelector, L1NormCriterion, MacsLatency, PruningIR
    from pruning_ir.export import export_onnx, patched_modules

    case = registry().cases[name]()
    model, args, kwargs = case.model.eval(), tuple(case.example_inputs), dict(case.example_kwargs)
    if "use_cache" in model.forward.__code__.co_varnames:
        kwargs["use_cache"] = False
    ir = PruningIR(model, example_inputs=args, example_kwargs=kwargs)
    L1NormCriterion(ir).score()
    count = MacsLatency(args, kwargs)
    base = count(model)
    labels = KnapsackLabelSelector(TARGET_MACS * base, count, verbose=False).select(ir)
    slim = ir.prune(labels=labels).model.eval()
    row: dict[str, Any] = {"model": name, "macs": count(slim) / base, "baked": bool(patched_modules(slim))}
    with torch.no_grad():
        row["eager"], row["eager_a"], row["eager_b"] = _paired(lambda: model(*args, **kwargs),
                                                               lambda: slim(*args, **kwargs), pairs)
    with tempfile.TemporaryDirectory() as d:
        export_onnx(model, Path(d) / "original.onnx", args, kwargs)
        export_onnx(slim, Path(d) / "slim.onnx", args, kwargs)
        sa, sb = _session(Path(d) / "original.onnx"), _session(Path(d) / "slim.onnx")
        fa, fb = _feed(sa, args, kwargs), _feed(sb, args, kwargs)
        row["ort"], row["ort_a"], row["ort_b"] = _paired(lambda: sa.run(None, fa), lambda: sb.run(None, fb), pairs)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help=f"comma-separated (default {','.join(DEFAULT)})")
    ap.add_argument("--pairs", type=int, default=21, help="adjacent timing pairs per measurement (default 21)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    names = pick(registry(), args.models, DEFAULT)
    busy = busy_warning()
    rows, misses = [], []
    t0 = time.perf_counter()
    for name in names:
        print(f"[onnx_latency] {name} ...", file=sys.stderr, flush=True)
        try:
            r = measure(name, args.pairs)
        except Exception as exc:
            rows.append([name, "-", "-", "-", "-", "-", f"{type(exc).__name__}: {str(exc)[:120]}"])
            misses.append(f"{name}: failed ({type(exc).__name__})")
            continue
        rows.append([name, f"{r['macs']:.3f}", f"{r['eager']:.3f}", f"{r['ort']:.3f}",
                     f"{1e3 * r['eager_a']:.2f} / {1e3 * r['eager_b']:.2f}",
                     f"{1e3 * r['ort_a']:.2f} / {1e3 * r['ort_b']:.2f}", "baked" if r["baked"] else ""])
        if r["ort"] > TARGET_ORT_RATIO and 1e3 * r["ort_a"] >= MIN_TARGET_MS:
            misses.append(f"{name}: ONNX Runtime latency ratio {r['ort']:.3f} > {TARGET_ORT_RATIO}")
    headers = ["model", "MACs slim/orig", "eager latency slim/orig", "ORT latency slim/orig",
               "eager ms orig / slim", "ORT ms orig / slim", "notes"]
    table = markdown_table(headers, rows)
    verdict = (f"Target met: ONNX Runtime latency ratio <= {TARGET_ORT_RATIO} at MACs {TARGET_MACS} for every model "
               f"whose original takes >= {MIN_TARGET_MS:.0f} ms there."
               if not misses else "TARGET MISSED: " + "; ".join(misses))
    print(table)
    print(verdict)
    doc = ["# ONNX Runtime latency of slim models", "",
           f"Generated by `python benchmarks/onnx_latency.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}` "
           f"on {time.strftime('%Y-%m-%d')} ({environment()}), {time.perf_counter() - t0:.0f} s; one thread "
           f"(torch and ONNX Runtime), {args.pairs} adjacent pairs, median of the per-pair ratios.", "",
           *( [f"> {busy}", ""] if busy else []), table, "", verdict, ""]
    print(f"written {write_result('onnx_latency.md', chr(10).join(doc))}")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
