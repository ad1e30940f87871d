"""Engine speed: pruning_ir vs Torch-Pruning on graph building and (re-)pruning, plus LLaMA-7B on meta.

(a) IR build: ``PruningIR(model, example_inputs=..., example_kwargs=...)`` vs Torch-Pruning's
    ``tp.DependencyGraph().build_dependency(model, example_inputs)``, median of N runs
    after one warm-up run each, in the same process, the two libraries' runs alternating
    (``gc.collect()`` before each), under fixed malloc thresholds (:func:`steady_allocator`:
    otherwise a case's place in the run decides whether its large buffers page-fault).
(b) Pruning from a built graph: ``UniformLabelSelector(0.3).select(ir)`` +
    ``ir.prune(labels=..., verify=False)`` (and with ``verify=True``) from one already
    built IR, vs ``pruner.step()`` of a fresh ``tp.pruner.MagnitudePruner(pruning_ratio=0.3)``
    on a fresh copy of the model each repeat (its construction, which builds the
    dependency graph, is not timed). Select and select + prune(verify=False) take the
    median of at least 5 runs (they are cheap, and one run on a shared machine is mostly
    noise). Before each of these measurements ``gc.collect()`` runs, so that the garbage
    of building the IR (or the model copies) is not collected inside a timed call; the
    collector stays on while timing.
(c) ``META_CASES['llama_7b_meta']`` (LLaMA-7B on the ``meta`` device): IR build time and
    the peak RSS during the build, in a fresh subprocess that only imports, builds the model
    and builds the IR, so other models' memory does not count (Linux ``VmHWM`` reset just
    before the build; a psutil sampling thread where that is unavailable).

Targets (the exit status is 1 when one is missed; each miss is printed):

* ResNet-50 re-pruning a built IR (select + prune, ``verify=False``): <= 50 ms
* median over the full-size CNN/ViT cases (:data:`CNN_VIT_CASES`: three torchvision-layout
  models and five HF architectures at their published sizes) of IR build / Torch-Pruning's
  ``build_dependency``: <= 1.5. The tiny configs' median (:data:`TINY_CASES`) is printed beside
  it, not judged: at a few hundred ops it measures fixed per-op and per-group costs rather than
  the cost on a model of real size.
* LLaMA-7B (meta) IR build: <= 30 s
* LLaMA-7B (meta) peak RSS of the building process: <= 2 GB

Usage::

    python benchmarks/engine_speed.py           # the CNN/ViT cases, bert, gpt2, llama; median of 3
    python benchmarks/engine_speed.py --quick   # resnet50 and bert, one timed run each
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import dataclasses
import gc
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _common import (
    REPO,
    CaseFactory,
    ZooCase,
    busy_warning,
    environment,
    fmt_ms,
    fmt_ratio,
    fmt_s,
    full_error,
    image_case,
    markdown_table,
    median_time,
    n_params,
    output_layers,
    quiet,
    registry,
    short_error,
    time_limit,
    tp_example_inputs,
    write_result,
)
from torch import nn

RATIO = 0.3


def _hf_image(name: str, model_cls: str, config_cls: str) -> CaseFactory:
    """A full-size HF vision model (the default config of its class: the published architecture,
    random weights), on one 224 x 224 image."""

    def build() -> nn.Module:
        import transformers

        return getattr(transformers, model_cls)(getattr(transformers, config_cls)())

    def case() -> ZooCase:
        return dataclasses.replace(image_case(name, build)(), output_to_tensor=lambda out: out.logits)

    return case


FULL_HF_CASES: dict[str, CaseFactory] = {
    "hf_resnet50": _hf_image("hf_resnet50", "ResNetForImageClassification", "ResNetConfig"),
    "hf_convnext_tiny": _hf_image("hf_convnext_tiny", "ConvNextForImageClassification", "ConvNextConfig"),
    "hf_vit_base": _hf_image("hf_vit_base", "ViTForImageClassification", "ViTConfig"),
    "hf_swin_tiny": _hf_image("hf_swin_tiny", "SwinForImageClassification", "SwinConfig"),
    "hf_mobilenet_v2": _hf_image("hf_mobilenet_v2", "MobileNetV2ForImageClassification", "MobileNetV2Config"),
}
"""Full-size HF vision architectures (default configs: ResNet-50, ConvNeXt-T, ViT-B/16, Swin-T,
MobileNetV2 1.0), random weights: no download."""
CNN_VIT_CASES = ("resnet50", "mobilenet_v2_torch", "vit_b_16_torch", *FULL_HF_CASES)
"""The CNN and ViT cases whose median build ratio to Torch-Pruning is a target: full-size
architectures, as users prune them (the issue's outside zoo is of such models)."""
TINY_CASES = ("resnet", "mobilenet_v2", "convnext", "vit", "swin")
"""Tiny random configs of the same families (a few hundred ops, Torch-Pruning builds them in ~5 ms):
their median ratio is reported, not a target. It measures the fixed cost per traced op and per
prunable group (each group's removal is checked by a traced, verified prune at build time)."""
CASES = (*CNN_VIT_CASES, *TINY_CASES, "bert", "gpt2", "llama")
QUICK_CASES = ("resnet50", "bert")

REPRUNE_MIN_REPEATS = 5
TARGET_REPRUNE_RESNET50_S = 0.050
TARGET_BUILD_RATIO_CNN_VIT = 1.5
TARGET_LLAMA7B_BUILD_S = 30.0
TARGET_LLAMA7B_RSS_MB = 2048.0


@dataclass
class SpeedRow:
    name: str
    ir_build: float | None = None
    tp_build: float | None = None
    select: float | None = None
    reprune: float | None = None  # select + prune(verify=False)
    reprune_verify: float | None = None  # select + prune(verify=True)
    tp_step: float | None = None
    errors: list[str] = field(default_factory=list)


def measure_case(case: ZooCase, repeats: int, with_tp: bool, timeout: float) -> SpeedRow:
    from pruning_ir import PruningIR, UniformLabelSelector

    row = SpeedRow(case.name)
    model = case.model

    def build_ir() -> Any:
        return PruningIR(model, example_inputs=case.example_inputs, example_kwargs=case.example_kwargs)

    tp_model = copy.deepcopy(model) if with_tp else model  # TP hooks into the model while tracing
    inputs = tp_example_inputs(case)

    def build_tp() -> Any:
        import torch_pruning as tp

        with quiet():
            return tp.DependencyGraph().build_dependency(tp_model, inputs)

    ir = None
    try:
        with time_limit(timeout):
            ir = build_ir()  # the warm-up run (and the IR the prune timings use)
    except Exception as exc:
        row.errors.append(f"pruning_ir build: {full_error(exc)}")
    tp_ok = with_tp
    if with_tp:
        try:
            with time_limit(timeout):
                build_tp()
        except Exception as exc:
            row.errors.append(f"TP build_dependency: {full_error(exc)}")
            tp_ok = False
    # both builds alternate, one run each per repeat: a shared machine's load changes over
    # seconds, and timing one library's runs before the other's would put it into the ratio
    ir_times: list[float] = []
    tp_times: list[float] = []
    try:
        with time_limit(timeout * 2):
            for _ in range(repeats):
                for fn, times, wanted in ((build_ir, ir_times, ir is not None), (build_tp, tp_times, tp_ok)):
                    if wanted:
                        gc.collect()
                        t0 = time.perf_counter()
                        fn()
                        times.append(time.perf_counter() - t0)
    except Exception as exc:
        row.errors.append(f"timing the builds: {full_error(exc)}")
    row.ir_build = statistics.median(ir_times) if ir_times else None
    row.tp_build = statistics.median(tp_times) if tp_times else None

    if ir is not None:
        selector = UniformLabelSelector(RATIO)
        try:
            with time_limit(timeout):
                n = max(repeats, REPRUNE_MIN_REPEATS)
                gc.collect()
                row.select = median_time(lambda: selector.select(ir), n)
                gc.collect()
                row.reprune = median_time(lambda: ir.prune(labels=selector.select(ir), verify=False), n)
                gc.collect()
                row.reprune_verify = median_time(lambda: ir.prune(labels=selector.select(ir), verify=True), repeats)
        except Exception as exc:
            row.errors.append(f"pruning_ir prune: {full_error(exc)}")

    if with_tp:
        import torch_pruning as tp

        def fresh_pruner() -> Any:
            m = copy.deepcopy(model)
            with quiet():
                return tp.pruner.MagnitudePruner(
                    m, inputs, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=RATIO,
                    ignored_layers=output_layers(m, case))

        pruned_params: list[tuple[int, int]] = []

        def step(pruner: Any) -> None:
            before = n_params(pruner.model)
            with quiet():
                pruner.step()
            pruned_params.append((before, n_params(pruner.model)))

        try:
            gc.collect()
            with time_limit(timeout):
                row.tp_step = median_time(step, repeats, setup=fresh_pruner)
            if pruned_params and pruned_params[-1][0] == pruned_params[-1][1]:
                row.errors.append("TP step removed no parameter (nothing to compare)")
        except Exception as exc:
            row.errors.append(f"TP step: {full_error(exc)}")
    return row


# --------------------------------------------------------------------------- LLaMA-7B (meta) child
def _vm_hwm_mb() -> float | None:
    """Peak RSS of this process's address space (``VmHWM``, Linux); fresh after ``exec``."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _RssSampler:
    """Fallback peak-RSS probe: polls psutil every 5 ms in a thread."""

    def __init__(self) -> None:
        import threading

        import psutil

        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def llama7b_child() -> None:
    """Runs in a fresh interpreter: import, build the meta model, build the IR; print one JSON line.

    The peak RSS *during the build* is ``VmHWM`` after resetting it just before the build
    (``ru_maxrss`` is not used: Linux carries it over from the parent across fork + exec).
    Where ``/proc`` cannot do that, a psutil thread samples the RSS every 5 ms instead.
    """
    t0 = time.perf_counter()
    from torch_zoo import META_CASES

    from pruning_ir import PruningIR

    case = META_CASES["llama_7b_meta"]()
    t1 = time.perf_counter()

    def rss_mb() -> float | None:
        try:
            with open("/proc/self/statm", encoding="ascii") as f:
                import os

                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, AttributeError):
            return None

    before = rss_mb()
    setup_peak = _vm_hwm_mb()
    method = "VmHWM reset before the build" if _reset_hwm() and _vm_hwm_mb() is not None else "psutil sampling"
    sampler = _RssSampler() if method == "psutil sampling" else contextlib.nullcontext()
    with sampler:
        t2 = time.perf_counter()
        ir = PruningIR(case.model, example_inputs=case.example_inputs, example_kwargs=case.example_kwargs)
        t3 = time.perf_counter()
    peak = _vm_hwm_mb() if method.startswith("VmHWM") else sampler.peak / 2**20  # type: ignore[union-attr]
    out = {
        "setup_s": t1 - t0,
        "build_s": t3 - t2,
        "rss_before_mb": before,
        "setup_peak_mb": setup_peak,
        "rss_after_mb": rss_mb(),
        "peak_rss_mb": peak,
        "peak_method": method,
        "params": sum(p.numel() for p in case.model.parameters()),
        "nodes": len(ir.graph.nodes),
        "groups": len(ir.label_groups()),
        "prunable": len(ir.prunable_label_groups()),
    }
    print("RESULT " + json.dumps(out))


def measure_llama7b(timeout: float, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-llama7b", "--threads", str(threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"subprocess took longer than {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
    return {"error": f"exit {proc.returncode}: {tail[-500:]}"}


# --------------------------------------------------------------------------- main
def steady_allocator() -> str:
    """Fix glibc malloc's thresholds for large blocks (mmap at 32 MB and above, no trimming) in
    this process, so that every case runs under the same allocator state. By default glibc raises
    its mmap threshold as a process frees large blocks: the first full-size model timed in a run
    gets its big buffers (Torch-Pruning's autograd-saved activations above all) from fresh
    mmaps, with page faults, and later ones from the reused heap (ResNet-50's
    ``build_dependency``: ~146 ms first in a run, ~117 ms later). Returns what was done."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        if libc.mallopt(m_mmap_threshold, 32 * 2**20) and libc.mallopt(m_trim_threshold, 2**30):
            return "glibc malloc: mmap threshold 32 MB, no trimming"
    except (OSError, AttributeError):
        pass
    return "allocator as is (not glibc)"


def warm_up(with_tp: bool) -> None:
    from pruning_ir import PruningIR, UniformLabelSelector

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3),
                          nn.Flatten(), nn.Linear(6 * 5 * 5, 5)).eval()
    x = torch.randn(2, 3, 9, 9)
    ir = PruningIR(model, example_inputs=(x,))
    ir.prune(labels=UniformLabelSelector(RATIO).select(ir), verify=True)
    if with_tp:
        import torch_pruning as tp

        with quiet():
            pruner = tp.pruner.MagnitudePruner(copy.deepcopy(model), x, pruning_ratio=RATIO, ignored_layers=[],
                                               importance=tp.importance.MagnitudeImportance(p=2))
            pruner.step()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="resnet50 + bert, one timed run each")
    ap.add_argument("--models", help=f"comma-separated case names (default: {','.join(CASES)})")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default 3, 1 with --quick)")
    ap.add_argument("--no-tp", action="store_true", help="skip Torch-Pruning")
    ap.add_argument("--no-llama7b", action="store_true", help="skip the LLaMA-7B meta measurement")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per model and library (default 300)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch.set_num_threads(N) (default 1: steady numbers on a shared machine, where every "
                         "multi-threaded op waits for a free core; 0 keeps torch's default)")
    ap.add_argument("--out", default="engine_speed.md", help="file name under benchmarks/results/")
    ap.add_argument("--child-llama7b", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child_llama7b:
        llama7b_child()
        return 0

    repeats = args.repeats or (1 if args.quick else 3)
    reg = registry(include_optional=False)
    reg.cases.update(FULL_HF_CASES)
    names = [n.strip() for n in args.models.split(",")] if args.models else list(QUICK_CASES if args.quick else CASES)
    unknown = [n for n in names if n not in reg.cases]
    if unknown:
        sys.exit(f"unknown model(s) {unknown}; known: {', '.join(reg.cases)}")
    with_tp = not args.no_tp
    if with_tp:
        try:
            import torch_pruning  # noqa: F401
        except Exception as exc:
            print(f"torch-pruning not importable ({short_error(exc)}): comparison skipped")
            with_tp = False

    t_start = time.perf_counter()
    allocator = steady_allocator()
    env = f"{environment()}, {allocator}"
    busy = busy_warning()
    if busy:
        print(busy, file=sys.stderr)
    warm_up(with_tp)
    rows: list[SpeedRow] = []
    for name in names:
        print(f"[engine_speed] {name} ...", end="", flush=True, file=sys.stderr)
        t0 = time.perf_counter()
        try:
            case = reg.cases[name]()
        except Exception as exc:
            rows.append(SpeedRow(name, errors=[f"building the zoo case: {full_error(exc)}"]))
            print(" model error", file=sys.stderr)
            continue
        rows.append(measure_case(case, repeats, with_tp, args.timeout))
        print(f" {time.perf_counter() - t0:.1f}s", file=sys.stderr)

    llama: dict[str, Any] | None = None
    if not args.no_llama7b:
        print("[engine_speed] llama_7b_meta (subprocess) ...", end="", flush=True, file=sys.stderr)
        t0 = time.perf_counter()
        llama = measure_llama7b(timeout=600, threads=args.threads)
        print(f" {time.perf_counter() - t0:.1f}s", file=sys.stderr)

    # ---------------------------------------------------------------- tables
    stat = (f"median of {repeats} runs" if repeats > 1 else "time of 1 run") + (
        f" (select and select+prune verify=False: median of {max(repeats, REPRUNE_MIN_REPEATS)})")
    headers = ("model", "IR build s", "TP build_dependency s", "build PI/TP", "select ms",
               "select+prune ms (verify=False)", "select+prune ms (verify=True)", "TP step ms",
               "prune PI/TP", "errors / notes")
    table = markdown_table(headers, [
        (r.name, fmt_s(r.ir_build), fmt_s(r.tp_build), fmt_ratio(r.ir_build, r.tp_build), fmt_ms(r.select),
         fmt_ms(r.reprune), fmt_ms(r.reprune_verify), fmt_ms(r.tp_step), fmt_ratio(r.reprune, r.tp_step),
         "; ".join(short_error_text(e) for e in r.errors))
        for r in rows
    ])

    checks: list[tuple[str, str, str, bool | None]] = []  # (target, measured, limit, ok)
    by_name = {r.name: r for r in rows}
    if "resnet50" in by_name:
        t = by_name["resnet50"].reprune
        checks.append(("ResNet-50 re-prune (select + prune, verify=False)", fmt_ms(t) + " ms",
                       f"<= {TARGET_REPRUNE_RESNET50_S * 1e3:.0f} ms",
                       None if t is None else t <= TARGET_REPRUNE_RESNET50_S))
    ratios = build_ratios(rows, CNN_VIT_CASES)
    if ratios:
        median = statistics.median(ratios)
        checks.append((f"median IR build / TP build_dependency over {len(ratios)} full-size CNN/ViT cases",
                       f"{median:.2f}x", f"<= {TARGET_BUILD_RATIO_CNN_VIT:.1f}x", median <= TARGET_BUILD_RATIO_CNN_VIT))
    tiny = build_ratios(rows, TINY_CASES)
    tiny_note = (f"Tiny configs ({', '.join(TINY_CASES)}; not a target): median IR build / TP build_dependency "
                 f"{statistics.median(tiny):.2f}x over {len(tiny)} cases." if tiny else "")
    llama_table = ""
    if llama is not None:
        if "error" in llama:
            checks.append(("LLaMA-7B (meta) IR build", "error", f"<= {TARGET_LLAMA7B_BUILD_S:.0f} s", None))
            checks.append(("LLaMA-7B (meta) peak RSS during build", "error",
                           f"<= {TARGET_LLAMA7B_RSS_MB:.0f} MB", None))
        else:
            checks.append(("LLaMA-7B (meta) IR build", f"{llama['build_s']:.2f} s",
                           f"<= {TARGET_LLAMA7B_BUILD_S:.0f} s", llama["build_s"] <= TARGET_LLAMA7B_BUILD_S))
            checks.append(("LLaMA-7B (meta) peak RSS during build", f"{llama['peak_rss_mb']:.0f} MB",
                           f"<= {TARGET_LLAMA7B_RSS_MB:.0f} MB", llama["peak_rss_mb"] <= TARGET_LLAMA7B_RSS_MB))

            def mb(x: float | None) -> str:
                return "-" if x is None else f"{x:.0f}"

            llama_table = markdown_table(
                ("case", "params (meta)", "IR nodes", "#groups", "#prunable groups", "import + model s",
                 "IR build s", "RSS before build MB", "RSS after build MB", "peak RSS during build MB"),
                [("llama_7b_meta", f"{llama['params'] / 1e9:.2f}B", llama["nodes"], llama["groups"],
                  llama["prunable"], f"{llama['setup_s']:.2f}", f"{llama['build_s']:.2f}",
                  mb(llama["rss_before_mb"]), mb(llama["rss_after_mb"]), mb(llama["peak_rss_mb"]))])
    targets = markdown_table(("target", "measured", "limit", "met"), [
        (name, value, limit, "yes" if ok else ("ERROR" if ok is None else "NO")) for name, value, limit, ok in checks
    ])
    missed = [c for c in checks if c[3] is not True]
    total = time.perf_counter() - t_start

    print(table)
    print()
    if llama_table:
        print(llama_table)
        print()
    elif llama is not None:
        print(f"llama_7b_meta: {llama['error']}")
    print(targets)
    if tiny_note:
        print(tiny_note)
    for name, value, limit, ok in missed:
        print(f"TARGET {'MISSED' if ok is False else 'NOT MEASURED'}: {name}: {value} (limit {limit})")
    print(f"total {total:.1f}s")

    errors = [f"- {r.name}: {e}" for r in rows for e in r.errors]
    if llama is not None and "error" in llama:
        errors.append(f"- llama_7b_meta: {llama['error']}")
    doc = [
        "# pruning_ir engine speed (vs Torch-Pruning)",
        "",
        f"Generated by `python benchmarks/engine_speed.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}` "
        f"on {time.strftime('%Y-%m-%d')} ({env}), total {total:.0f} s. Times are the {stat} "
        "after one warm-up run; the IR and Torch-Pruning build runs alternate.",
        "",
        "`IR build` = `PruningIR(...)` (trace + label inference); `TP build_dependency` = "
        "`tp.DependencyGraph().build_dependency(model, example_inputs)`; `select+prune` = "
        f"`UniformLabelSelector({RATIO}).select(ir)` + `ir.prune(labels=...)` from an already built IR; "
        f"`TP step` = `MagnitudePruner(pruning_ratio={RATIO}).step()` on a fresh pruner and model copy "
        "(construction not timed). Ratios are pruning_ir / Torch-Pruning (lower is faster for pruning_ir).",
        "",
        table,
        "",
    ]
    if busy:
        doc[4:4] = [f"> {busy}.", ""]
    if llama_table:
        doc += ["LLaMA-7B architecture on the `meta` device, measured in a fresh subprocess that only "
                "builds this IR. Peak RSS during build is that whole process's (torch and transformers "
                f"imports included), measured by {llama['peak_method']}.", "",
                llama_table, ""]
    doc += ["## Targets", "", targets, ""]
    if tiny_note:
        doc += [tiny_note, ""]
    if errors:
        doc += ["## Errors and notes", "", *errors, ""]
    path = write_result(args.out, "\n".join(doc))
    print(f"written {path}")
    return 1 if missed else 0


def build_ratios(rows: list[SpeedRow], names: tuple[str, ...]) -> list[float]:
    """IR build / TP build_dependency of the rows named in ``names`` that have both."""
    return [r.ir_build / r.tp_build for r in rows if r.name in names and r.ir_build and r.tp_build]


def short_error_text(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


if __name__ == "__main__":
    sys.exit(main())
