"""Memory of the forward-only criteria on a 1B-parameter random GQA LLaMA, beside LossAware's.

    python benchmarks/forward_criteria_memory.py                 # TinyLlama-1.1B shapes, fp32, 2 batches of 256 tokens
    python benchmarks/forward_criteria_memory.py --layers 4      # a quick run

The model is ``LlamaForCausalLM`` with TinyLlama-1.1B's shapes (hidden 2048, FFN 5632, 22 layers, 32 query
and 4 key/value heads, vocabulary 32000), random weights, eager attention, float32. Measured with the
process's peak resident memory (``VmHWM``, reset before each phase through ``/proc/self/clear_refs``; the
script reruns itself with glibc's mmap threshold fixed, so that freed tensors leave the resident set):

* the model alone, and after building its ``PruningIR`` (example call of 16 tokens);
* calibrating ``WandaCriterion`` and ``FLAPCriterion`` (forward passes under ``torch.no_grad``):
  the peak above the model + IR, beside the size of the largest activation of one layer (the
  ``FFN x tokens`` intermediate) and of the reader statistics;
* calibrating ``LossAwareCriterion`` (forward + backward), for comparison;
* then a prune: 30 % of the FFN channels and key/value heads by Wanda scores, global selection,
  and the slim model's parameters.

A plain ``torch.no_grad`` forward over the same batches is the control. Exit status 1 when a
forward-only calibration's peak above model + IR exceeds ``--limit`` (1.5) times the plain forward's
plus its statistics.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

import _common  # noqa: F401  (puts the repository root on sys.path)
import torch
from _common import environment, finish, markdown_table

from pruning_ir import FLAPCriterion, GlobalScoreLabelSelector, LossAwareCriterion, PruningIR, WandaCriterion

GIB = 1024**3


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def reset_peak() -> None:
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")


def rss() -> int:
    return _status("VmRSS")


def peak() -> int:
    return _status("VmHWM")


def build(layers: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers, num_attention_heads=32,
                      num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048,
                      attn_implementation="eager")
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def main(argv: list[str] | None = None) -> int:
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        # glibc raises its mmap threshold after freeing a large block and then keeps freed blocks of that size
        # in the heap, so resident memory would show what was ever used rather than what is in use: fix the
        # threshold (64 KiB) so that large tensors are mapped and unmapped, and rerun this script under it
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=22)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--limit", type=float, default=1.5)
    p.add_argument("--no-loss-aware", dest="loss_aware", action="store_false")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="forward_criteria_memory.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 32000, (1, args.tokens), generator=gen) for _ in range(args.batches)]
    rows: list[list[str]] = []

    def row(what: str, value: int, note: str = "") -> None:
        rows.append([what, f"{value / GIB:.2f}", note])
        print(f"{what}: {value / GIB:.2f} GiB {note}", flush=True)

    reset_peak()
    start = rss()
    t0 = time.perf_counter()
    model = build(args.layers)
    n_params = sum(p.numel() for p in model.parameters())
    row("model (RSS growth)", rss() - start,
        f"{n_params / 1e9:.2f} B parameters, built in {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    ir = PruningIR(model, example_inputs=(batches[0][:, :16],))
    base = rss()
    row("model + PruningIR (RSS growth)", base - start, f"IR built in {time.perf_counter() - t0:.0f} s")
    one_layer = 5632 * args.tokens * 4  # the FFN intermediate of one layer, one batch of one sequence, fp32
    rows.append(["largest one-layer activation", f"{one_layer / GIB:.3f}", f"FFN 5632 x {args.tokens} tokens, fp32"])
    reset_peak()
    with torch.no_grad():
        for b in batches:
            model(b)
    plain = peak() - base
    row("plain inference forward (control): peak above model + IR", plain, "the same batches, no criterion")
    misses = []
    for name, crit in (("WandaCriterion", WandaCriterion), ("FLAPCriterion", FLAPCriterion)):
        reset_peak()
        t0 = time.perf_counter()
        with crit(ir) as collect:
            for b in batches:
                collect(b)
        stats = sum(st.total.numel() * 3 * 8 for st in collect.stats.values())
        over = peak() - base
        row(f"{name}: peak above model + IR", over, f"{len(batches)} x {args.tokens} tokens in "
            f"{time.perf_counter() - t0:.0f} s; statistics {stats / 2**20:.1f} MiB")
        if over > args.limit * plain + stats:
            misses.append(f"{name} peak {over / GIB:.2f} GiB > {args.limit} x the plain forward's + statistics")
    if args.loss_aware:
        reset_peak()
        t0 = time.perf_counter()
        with LossAwareCriterion(ir) as collect:
            for b in batches:
                out = collect(b, labels=b)
                out.loss.backward()
        model.zero_grad(set_to_none=True)
        row("LossAwareCriterion: peak above model + IR", peak() - base,
            f"forward + backward, {time.perf_counter() - t0:.0f} s")
    with WandaCriterion(ir) as collect:
        for b in batches:
            collect(b)
    wanted = ("mlp.up_proj.weight", "k_proj.weight")
    groups = [g for g in ir.prunable_label_groups() if any(ax == 0 and m.endswith(wanted) for m, ax in g.members)]
    others = [g for g in ir.prunable_label_groups() if g not in groups]
    snap = ir.snapshot()  # only FFN channels and kv heads are candidates: the others score +inf
    snap.scores = {**snap.scores, **{g.gid: torch.full((g.size,), float("inf"), dtype=torch.float64) for g in others}}
    labels = GlobalScoreLabelSelector(int(0.3 * sum(g.size for g in groups))).select(ir)
    reset_peak()
    t0 = time.perf_counter()
    slim = ir.prune(labels=labels).model
    kept = sum(p.numel() for p in slim.parameters())
    row("prune: peak above model + IR", peak() - base, f"{len(labels)} labels (FFN channels, kv-head units) in "
        f"{time.perf_counter() - t0:.0f} s; slim {kept / 1e9:.2f} B parameters")
    doc = ["# Forward-only criteria: memory on a 1B random GQA LLaMA", "",
           f"`python benchmarks/forward_criteria_memory.py {' '.join(argv or sys.argv[1:])}` ({environment()})", "",
           markdown_table(["what", "GiB", "notes"], rows), ""]
    return finish(args.out, doc, misses, f"met: forward-only peaks within {args.limit} x a plain inference "
                  "forward's + the statistics", echo=False)


if __name__ == "__main__":
    sys.exit(main())
