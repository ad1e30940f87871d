"""Coverage: does pruning_ir trace, prune and stay equivalent on every zoo model, and Torch-Pruning?

For each model (``tests/hf_zoo.py`` HF_CASES, ``tests/torch_zoo.py`` TORCH_CASES, and
torchvision / timm architectures when those packages import) this runs, on separate
deep copies of the model:

* pruning_ir: ``PruningIR(model, example_inputs=..., example_kwargs=...)``, then
  ``UniformLabelSelector(0.3).select(ir)`` + ``ir.prune(labels=..., verify=True)``, then
  ``verify_pruning(ir, labels)`` (slim model == original with the labels masked).
* Torch-Pruning, used as its documentation shows:
  ``tp.pruner.MagnitudePruner(model, example_inputs,
  importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.3,
  ignored_layers=<the final classifier>)`` then ``pruner.step()``, then a forward pass
  on the example inputs and a check that the main output kept its shape. The only
  ignored layer is the Linear / conv layer whose output *is* the model's output
  (``fc``, ``classifier.1``, ``lm_head``; none for headless encoders), per the docs'
  "DO NOT prune the final classifier!". HF models get ``example_inputs`` as a dict of
  keyword inputs.

Every exception is caught and recorded. The table is printed and written to
``benchmarks/results/coverage.md``. The exit status is 1 when a pruning_ir row fails
(trace, prune or verification error) or is inexact without a listed reason
(``exact == False`` and no ``inexact_reasons``); Torch-Pruning failures never fail the run.

Usage::

    python benchmarks/coverage.py                 # every model (a few minutes)
    python benchmarks/coverage.py --quick         # small models only, well under a minute
    python benchmarks/coverage.py --models bert,gpt2,resnet50 [--no-tp]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _common import (
    Registry,
    ZooCase,
    busy_warning,
    call_model,
    environment,
    fmt_s,
    fresh,
    full_error,
    markdown_table,
    module_names,
    n_params,
    output_layers,
    pick,
    quiet,
    registry,
    short_error,
    time_limit,
    timed,
    tp_example_inputs,
    write_result,
)
from torch import nn

RATIO = 0.3

# --quick: the tiny HF models plus the small CNN; no ResNet-50 and no torchvision/timm.
QUICK = (
    "bert", "gpt2", "llama", "qwen2", "phi", "opt", "t5", "vit", "swin", "convnext",
    "resnet", "clip_vision", "whisper_encoder", "mobilenet_v2_torch",
)


@dataclass
class PIResult:
    traced: bool = False
    groups: int | None = None
    prunable: int | None = None
    labels: int | None = None
    pruned: bool = False
    max_abs_diff: float | None = None
    exact: bool | None = None
    reasons: list[str] = field(default_factory=list)
    param_ratio: float | None = None
    build_s: float | None = None
    prune_s: float | None = None
    error: BaseException | None = None
    stage: str = ""

    @property
    def failed(self) -> bool:
        """A row that makes the run fail: an error, or inexact with no reason given."""
        return self.error is not None or (self.exact is False and not self.reasons)

    def equivalence(self) -> str:
        if self.exact is None:
            return "-"
        if self.exact:
            return "exact"
        if self.reasons:
            return f"inexact ({len(self.reasons)} reasons)"
        return "INEXACT (no reason!)"


@dataclass
class TPResult:
    ok: bool = False
    shape: str = "-"
    param_ratio: float | None = None
    seconds: float | None = None
    ignored: list[str] = field(default_factory=list)
    error: BaseException | None = None
    stage: str = ""

    def status(self) -> str:
        if self.error is not None:
            return f"fail@{self.stage}"
        if self.ok and self.param_ratio == 1.0:
            return "ok (pruned nothing)"
        return "ok" if self.ok else "-"


def run_pruning_ir(case: ZooCase, timeout: float) -> PIResult:
    from pruning_ir import PruningIR, UniformLabelSelector, verify_pruning

    res = PIResult()
    try:
        res.stage = "trace"
        with time_limit(timeout):
            ir, res.build_s = timed(lambda: PruningIR(
                case.model, example_inputs=case.example_inputs, example_kwargs=case.example_kwargs))
        res.traced = True
        res.groups = len(ir.label_groups())
        prunable = ir.prunable_label_groups()
        res.prunable = len(prunable)

        res.stage = "prune"
        t0 = time.perf_counter()
        with time_limit(timeout):
            labels = UniformLabelSelector(RATIO).select(ir)
            ir.prune(labels=labels, verify=True)
        res.prune_s = time.perf_counter() - t0
        res.labels = len(labels)
        res.pruned = True

        res.stage = "verify"
        with time_limit(timeout):
            rep = verify_pruning(ir, labels)
        res.max_abs_diff = rep.max_abs_diff
        res.exact = rep.exact
        res.reasons = list(rep.inexact_reasons)
        res.param_ratio = rep.params_after / rep.params_before if rep.params_before else None
        res.stage = ""
    except Exception as exc:
        res.error = exc
    return res


def run_torch_pruning(case: ZooCase, ref_shape: torch.Size, timeout: float) -> TPResult:
    import torch_pruning as tp

    res = TPResult()
    model: nn.Module = case.model
    before = n_params(model)
    try:
        res.stage = "setup"
        ignored = output_layers(model, case)
        res.ignored = module_names(model, ignored)
        inputs = tp_example_inputs(case)
        t0 = time.perf_counter()
        res.stage = "build"
        with time_limit(timeout), quiet():
            pruner = tp.pruner.MagnitudePruner(
                model,
                inputs,
                importance=tp.importance.MagnitudeImportance(p=2),
                pruning_ratio=RATIO,
                ignored_layers=ignored,
            )
            res.stage = "step"
            pruner.step()
        res.seconds = time.perf_counter() - t0
        res.param_ratio = n_params(model) / before if before else None
        res.stage = "forward"
        with time_limit(timeout), quiet():
            out = call_model(model, case)
        res.shape = "kept" if out.shape == ref_shape else f"{tuple(ref_shape)}->{tuple(out.shape)}"
        res.ok = True
        res.stage = ""
    except Exception as exc:
        res.error = exc
    return res


def warm_up(with_tp: bool) -> None:
    """One tiny model through both libraries: first-call costs (imports, dispatch caches) go here."""
    from pruning_ir import PruningIR, UniformLabelSelector

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3),
                          nn.Flatten(), nn.Linear(6 * 5 * 5, 5)).eval()
    x = torch.randn(2, 3, 9, 9)
    case = ZooCase("warmup", model, (x,))
    ir = PruningIR(model, example_inputs=(x,))
    ir.prune(labels=UniformLabelSelector(RATIO).select(ir), verify=True)
    if with_tp:
        run_torch_pruning(fresh(case), call_model(model, case).shape, timeout=0)


def fmt_params(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def fmt_diff(x: float | None) -> str:
    return "-" if x is None else f"{x:.2e}"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


HEADERS = (
    "model", "params", "traced", "#groups", "#prunable groups", "#prunable labels", "pruned",
    "max_abs_diff", "equivalence", "param ratio", "IR build s", "select+prune s", "pruning_ir error",
    "TP", "TP out shape", "TP param ratio", "TP s", "TP ignored layers", "TP error",
)


def row(name: str, params: int | None, pi: PIResult, tp_res: TPResult | None) -> list[str]:
    tp_cells = ["skipped"] + ["-"] * 5
    if tp_res is not None:
        tp_cells = [
            tp_res.status(), tp_res.shape, fmt_ratio(tp_res.param_ratio), fmt_s(tp_res.seconds),
            ",".join(tp_res.ignored) or "none", short_error(tp_res.error) if tp_res.error else "",
        ]
    return [
        name,
        fmt_params(params),
        "ok" if pi.traced else "err",
        "-" if pi.groups is None else str(pi.groups),
        "-" if pi.prunable is None else str(pi.prunable),
        "-" if pi.labels is None else str(pi.labels),
        "ok" if pi.pruned else "err",
        fmt_diff(pi.max_abs_diff),
        pi.equivalence(),
        fmt_ratio(pi.param_ratio),
        fmt_s(pi.build_s),
        fmt_s(pi.prune_s),
        f"{pi.stage}: {short_error(pi.error)}" if pi.error else "",
        *tp_cells,
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", help="comma-separated model names (default: all; see --list)")
    ap.add_argument("--quick", action="store_true", help="small models only (no ResNet-50, torchvision, timm)")
    ap.add_argument("--no-tp", action="store_true", help="skip the Torch-Pruning comparison")
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="seconds allowed per pruning_ir stage (default 600)")
    ap.add_argument("--tp-timeout", type=float, default=None,
                    help="seconds allowed per Torch-Pruning stage (default 60, 30 with --quick)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch.set_num_threads(N) (default 1: steady numbers on a shared machine, where every "
                         "multi-threaded op waits for a free core; 0 keeps torch's default)")
    ap.add_argument("--list", action="store_true", help="list the model names and exit")
    ap.add_argument("--out", default="coverage.md", help="file name under benchmarks/results/")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    reg: Registry = registry(include_optional=not args.quick or bool(args.models))
    if args.list:
        print("\n".join(reg.cases))
        return 0
    names = pick(reg, args.models, QUICK if args.quick else None)
    with_tp = not args.no_tp
    if with_tp:
        try:
            import torch_pruning  # noqa: F401
        except Exception as exc:
            print(f"torch-pruning not importable ({short_error(exc)}): comparison skipped")
            with_tp = False

    tp_timeout = args.tp_timeout if args.tp_timeout is not None else (30.0 if args.quick else 60.0)
    t_start = time.perf_counter()
    env = environment()
    busy = busy_warning()
    if busy:
        print(busy, file=sys.stderr)
    warm_up(with_tp)
    rows, errors, failed = [], [], []
    summary = {"pi_ok": 0, "pi_exact": 0, "tp_ok": 0, "tp_nothing": 0, "tp_shape": 0}
    for name in names:
        print(f"[coverage] {name} ...", end="", flush=True, file=sys.stderr)
        t0 = time.perf_counter()
        params = None
        try:
            case = reg.cases[name]()
            params = n_params(case.model)
            ref_shape = call_model(case.model, case).shape
        except Exception as exc:
            pi = PIResult(error=exc, stage="model")
            rows.append(row(name, params, pi, None))
            errors.append(f"- **{name}** (building the zoo case): {full_error(exc)}")
            failed.append(name)
            print(f" model error: {short_error(exc)}", file=sys.stderr)
            continue
        pi = run_pruning_ir(fresh(case), args.timeout)
        tp_res = run_torch_pruning(fresh(case), ref_shape, tp_timeout) if with_tp else None
        rows.append(row(name, params, pi, tp_res))
        if pi.error is not None:
            errors.append(f"- **{name}** pruning_ir ({pi.stage}): {full_error(pi.error)}")
        elif pi.reasons and not pi.exact:
            errors.append(f"- {name} pruning_ir inexact reasons: " + "; ".join(pi.reasons))
        if tp_res is not None and tp_res.error is not None:
            errors.append(f"- {name} Torch-Pruning ({tp_res.stage}): {full_error(tp_res.error)}")
        if pi.failed:
            failed.append(name)
        summary["pi_ok"] += pi.pruned and pi.error is None
        summary["pi_exact"] += bool(pi.exact)
        if tp_res is not None:
            summary["tp_ok"] += tp_res.ok
            summary["tp_nothing"] += tp_res.ok and tp_res.param_ratio == 1.0
            summary["tp_shape"] += tp_res.shape == "kept"
        print(f" {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        del case

    table = markdown_table(HEADERS, rows)
    n = len(names)
    lines = [
        f"pruning_ir: {summary['pi_ok']}/{n} pruned and verified, {summary['pi_exact']}/{n} exact "
        f"(uniform ratio {RATIO}).",
    ]
    if with_tp:
        lines.append(f"Torch-Pruning (MagnitudePruner, ratio {RATIO}): {summary['tp_ok']}/{n} pruned and ran "
                     f"a forward pass ({summary['tp_nothing']} of them pruned nothing), "
                     f"{summary['tp_shape']}/{n} kept the output shape.")
    if failed:
        lines.append(f"FAILED pruning_ir rows: {', '.join(failed)}")
    total = time.perf_counter() - t_start
    print(table)
    print()
    print("\n".join(lines))
    if reg.skipped:
        print("skipped: " + "; ".join(reg.skipped))
    print(f"total {total:.1f}s")

    doc = [
        "# pruning_ir coverage (vs Torch-Pruning)",
        "",
        f"Generated by `python benchmarks/coverage.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}` "
        f"on {time.strftime('%Y-%m-%d')} ({env}), total {total:.0f} s.",
        "",
        "Columns: `traced`/`pruned` = pruning_ir built the IR / pruned at uniform ratio 0.3 "
        "(`ir.prune(verify=True)`); `max_abs_diff`, `equivalence` = `verify_pruning` (slim vs. masked "
        "original; inexact is expected where the IR lists reasons: norms / softmax over pruned channels); "
        "`param ratio` = params after / before; times in seconds (IR build = trace + label inference; "
        "select+prune = `UniformLabelSelector(0.3).select` + `prune(verify=True)`). `TP*` = Torch-Pruning "
        "`MagnitudePruner(pruning_ratio=0.3, importance=MagnitudeImportance(p=2))` + `step()` + a forward pass "
        "(`TP s` = pruner construction + step), ignoring only the final classifier as its docs ask; "
        "`TP out shape` says whether the main output kept its shape.",
        "",
        table,
        "",
        *[f"{line}  " for line in lines],
    ]
    if busy:
        doc[4:4] = [f"> {busy}.", ""]
    if reg.skipped:
        doc += ["", "Skipped (optional packages):", "", *[f"- {s}" for s in reg.skipped]]
    if errors:
        doc += ["", "## Errors and inexact reasons", "", *errors]
    path = write_result(args.out, "\n".join(doc) + "\n")
    print(f"written {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
