"""Does fine-grained sparsity make a linear layer faster on this CPU? Dense vs CSR vs 2:4, by sparsity.

    python benchmarks/sparse_speed.py                 # 4096 x 4096 fp32 weight, 1 / 32 / 256 tokens, 1 thread
    python benchmarks/sparse_speed.py --size 2048 --threads 2

A weight masked by ``pruning_ir.sparsity.unstructured`` (random entries, so no structure helps) at each
sparsity is multiplied with ``x`` three ways, timed in interleaved rounds (median of ``--repeats``):

* dense: ``F.linear(x, W)`` with the zeros in place (what a masked or ``make_permanent`` model runs);
* CSR: ``W.to_sparse_csr() @ x.T`` (``torch.sparse``'s compressed-row kernel);
* ``SparseLinear``: the module :func:`pruning_ir.sparsity.to_sparse` puts in place of such a layer (the
  same kernel, plus the transposes of ``x`` and of the result);
* 2:4 semi-structured (``torch.sparse.to_sparse_semi_structured`` on a 2:4 mask from ``n_m``): tried, and its
  error reported where the platform has no kernel for it (it needs a CUDA GPU with sparse tensor cores).

Printed: time per call and the speed-up over dense, and per token count the lowest sparsity from
which CSR is faster at every higher sparsity measured ("pays from"). The whole measurement runs twice;
exit status 1 when the two passes disagree on "pays from" by more than one sparsity step (the
statement would not be reproducible) or a measurement fails.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import _common  # noqa: F401  (puts the repository root on sys.path)
import torch
import torch.nn.functional as F
from _common import busy_warning, environment, finish, markdown_table
from torch import nn

from pruning_ir.sparsity import SparseLinear, make_permanent, n_m, unstructured

SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)


def timed(fn: object, repeats: int) -> float:
    assert callable(fn)
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def masked_weight(size: int, sparsity: float, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    layer = nn.Linear(size, size, bias=False)
    unstructured(layer, sparsity, criterion="random", modules=[nn.Linear],
                 generator=torch.Generator().manual_seed(seed))
    make_permanent(layer)
    return layer.weight.detach()


def measure(size: int, tokens: list[int], repeats: int) -> dict[tuple[int, float], tuple[float, float, float]]:
    out: dict[tuple[int, float], tuple[float, float, float]] = {}
    for s in SPARSITIES:
        w = masked_weight(size, s, 0)
        csr = w.to_sparse_csr()
        module = SparseLinear(w, None)
        for n in tokens:
            x = torch.randn(n, size)
            xt = x.T.contiguous()
            dense = timed(lambda w=w, x=x: F.linear(x, w), repeats)
            sparse = timed(lambda csr=csr, xt=xt: csr @ xt, repeats)
            with torch.no_grad():
                layer = timed(lambda module=module, x=x: module(x), repeats)
            out[(n, s)] = (dense, sparse, layer)
    return out


def pays_from(res: dict[tuple[int, float], tuple[float, float, float]], n: int) -> float | None:
    """The lowest sparsity from which CSR beats dense at every higher sparsity measured."""
    best = None
    for s in reversed(SPARSITIES):
        dense, sparse, _ = res[(n, s)]
        if sparse < dense:
            best = s
        else:
            break
    return best


def semi_structured(size: int) -> str:
    layer = nn.Linear(size, size, bias=False)
    n_m(layer, 2, 4, modules=[nn.Linear])
    make_permanent(layer)
    try:
        from torch.sparse import to_sparse_semi_structured

        to_sparse_semi_structured(layer.weight.detach())
    except Exception as exc:  # the platform has no kernel: the point of the row
        return f"not available here: {type(exc).__name__}: {str(exc).splitlines()[0][:140]}"
    return "converted (timing not implemented on this platform)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--tokens", default="1,32,256")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="sparse_speed.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tokens = [int(t) for t in args.tokens.split(",")]
    passes = [measure(args.size, tokens, args.repeats) for _ in range(2)]
    rows = []
    for n in tokens:
        for s in SPARSITIES:
            d = statistics.fmean(r[(n, s)][0] for r in passes)
            c = statistics.fmean(r[(n, s)][1] for r in passes)
            m = statistics.fmean(r[(n, s)][2] for r in passes)
            rows.append([n, f"{s:.2f}", f"{1e3 * d:.2f}", f"{1e3 * c:.2f}", f"{d / c:.2f}", f"{1e3 * m:.2f}",
                         f"{d / m:.2f}"])
    verdict = []
    misses = []
    steps = list(SPARSITIES)
    for n in tokens:
        a, b = pays_from(passes[0], n), pays_from(passes[1], n)
        verdict.append(f"- {n} token(s): CSR pays from sparsity {a if a is not None else 'never (up to 0.99)'}"
                       f" (second pass: {b if b is not None else 'never'})")
        ia = steps.index(a) if a is not None else len(steps)
        ib = steps.index(b) if b is not None else len(steps)
        if abs(ia - ib) > 1:
            misses.append(f"{n} tokens: the passes disagree on where CSR pays ({a} vs {b})")
    doc = ["# Fine-grained sparsity on CPU: dense vs CSR", "",
           f"`python benchmarks/sparse_speed.py {' '.join(argv or sys.argv[1:])}` ({environment()}); "
           f"weight {args.size} x {args.size} fp32, random unstructured masks, median of {args.repeats} calls, "
           "mean of 2 passes.", ""]
    warn = busy_warning()
    if warn:
        doc += [f"> {warn}", ""]
    doc += [markdown_table(["tokens", "sparsity", "dense ms", "CSR ms", "dense / CSR", "SparseLinear ms",
                                "dense / SparseLinear"], rows), "", *verdict, "",
            f"- 2:4 semi-structured: {semi_structured(args.size)}", ""]
    return finish(args.out, doc, misses, "the two passes agree on where CSR pays (within one step)")


if __name__ == "__main__":
    sys.exit(main())
