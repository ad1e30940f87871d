"""Helpers shared by the benchmark scripts (``coverage.py``, ``engine_speed.py``).

Nothing here is part of the library: it puts the repository root and ``tests/`` on
``sys.path`` (so the model zoos and ``pruning_ir`` import from the checkout), builds the
model registry, times calls and formats markdown tables.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import platform
import signal
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
for _p in (REPO / "tests", REPO):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from zoo_types import ZooCase, perturb_constant_tensors  # noqa: E402

CaseFactory = Callable[[], ZooCase]

IMAGENET_SHAPE = (1, 3, 224, 224)

# torchvision / timm architectures covered when the package imports (weights=None).
TORCHVISION_MODELS = (
    "resnet18",
    "mobilenet_v3_small",
    "vit_b_16",
    "swin_t",
    "convnext_tiny",
    "efficientnet_b0",
    "densenet121",
    "shufflenet_v2_x1_0",
    "regnet_y_400mf",
    "squeezenet1_0",
)
TIMM_MODELS = (
    "vit_tiny_patch16_224",
    "deit_tiny_patch16_224",
    "convnext_atto",
    "efficientnet_b0",
    "mobilenetv3_small_100",
    "resnet18",
)


# --------------------------------------------------------------------------- registry
@dataclass
class Registry:
    """Every model a benchmark may run, in table order, plus optional families that were skipped."""

    cases: dict[str, CaseFactory]
    skipped: list[str]  # "family: reason" for optional packages that do not import


def _try_import(name: str) -> tuple[Any, str]:
    """Import ``name``; return (module, "") or (None, reason). A broken install counts as missing."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = __import__(name)
        return mod, ""
    except Exception as exc:  # a wheel built for another torch raises RuntimeError, not ImportError
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:120]


def image_case(name: str, build: Callable[[], nn.Module]) -> CaseFactory:
    def factory() -> ZooCase:
        torch.manual_seed(0)
        model = build()
        perturb_constant_tensors(model, seed=0)  # random BN stats / norm affines: slicing bugs show
        x = torch.randn(IMAGENET_SHAPE, generator=torch.Generator().manual_seed(1234))
        return ZooCase(name=name, model=model.eval(), example_inputs=(x,))

    return factory


def optional_cases() -> tuple[dict[str, CaseFactory], list[str]]:
    """torchvision (``tv_*``) and timm (``timm_*``) cases, or why a family is skipped."""
    cases: dict[str, CaseFactory] = {}
    skipped: list[str] = []
    tv, why = _try_import("torchvision")
    if tv is None:
        skipped.append(f"torchvision ({', '.join(TORCHVISION_MODELS)}): not importable: {why}")
    else:
        import torchvision.models as tvm

        available = set(tvm.list_models())
        for arch in TORCHVISION_MODELS:
            if arch not in available:
                skipped.append(f"tv_{arch}: not in torchvision {tv.__version__}")
                continue
            cases[f"tv_{arch}"] = image_case(f"tv_{arch}", lambda a=arch: tvm.get_model(a, weights=None))
    timm, why = _try_import("timm")
    if timm is None:
        skipped.append(f"timm ({', '.join(TIMM_MODELS)}): not importable: {why}")
    else:
        for arch in TIMM_MODELS:
            if not timm.list_models(arch):
                skipped.append(f"timm_{arch}: not in timm {timm.__version__}")
                continue
            cases[f"timm_{arch}"] = image_case(
                f"timm_{arch}", lambda a=arch: timm.create_model(a, pretrained=False)
            )
    return cases, skipped


def registry(include_optional: bool = True) -> Registry:
    """HF_CASES + TORCH_CASES (+ torchvision / timm when they import)."""
    from torch_zoo import TORCH_CASES

    cases: dict[str, CaseFactory] = {}
    skipped: list[str] = []
    try:
        from hf_zoo import HF_CASES, hf_available

        if hf_available():
            cases.update(HF_CASES)
        else:
            skipped.append("HF_CASES: transformers not importable")
    except Exception as exc:
        skipped.append(f"HF_CASES: {type(exc).__name__}: {exc}")
    cases.update(TORCH_CASES)
    if include_optional:
        extra, why = optional_cases()
        cases.update(extra)
        skipped += why
    return Registry(cases, skipped)


def pick(reg: Registry, names: str | None, default: Sequence[str] | None = None) -> list[str]:
    """Model names from a ``--models a,b,c`` value (or ``default``, or all); exits on unknown names."""
    if names:
        wanted = [n.strip() for n in names.split(",") if n.strip()]
    elif default is not None:
        wanted = [n for n in default if n in reg.cases]
    else:
        wanted = list(reg.cases)
    unknown = [n for n in wanted if n not in reg.cases]
    if unknown:
        sys.exit(f"unknown model(s) {unknown}; known: {', '.join(reg.cases)}")
    return wanted


# --------------------------------------------------------------------------- model plumbing
def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tp_example_inputs(case: ZooCase) -> Any:
    """Torch-Pruning's ``example_inputs``: a kwargs dict when the case has kwargs, else the args.

    Positional inputs are named after the parameters of ``model.forward`` so that
    ``model(**inputs)`` is the same call as ``model(*case.example_inputs, **case.example_kwargs)``.
    """
    if not case.example_kwargs:
        args = case.example_inputs
        return args[0] if len(args) == 1 else tuple(args)
    params = [
        p.name
        for p in inspect.signature(case.model.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    out = dict(zip(params, case.example_inputs))
    out.update(case.example_kwargs)
    return out


def call_model(model: nn.Module, case: ZooCase) -> torch.Tensor:
    """``model`` on the case's inputs, main output tensor, no grad."""
    with torch.no_grad():
        return case.output_to_tensor(model(*case.example_inputs, **case.example_kwargs))


def is_output_layer_type(module: nn.Module) -> bool:
    """A layer that can be a classifier: Linear, Conv*d, or HF's ``Conv1D`` (GPT-2)."""
    return isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) or type(module).__name__ == "Conv1D"


def output_layers(model: nn.Module, case: ZooCase) -> list[nn.Module]:
    """Linear / conv layers whose output *is* the model's main output (the final classifier).

    This is the layer Torch-Pruning's documentation says not to prune
    ("``ignored_layers``: DO NOT prune the final classifier!"); found by forward hooks,
    not by name, so it is ``fc`` for ResNet, ``classifier.1`` for MobileNetV2, ``lm_head``
    for causal LMs and nothing for headless encoders (``BertModel``, ``ViTModel``...).
    """
    seen: list[tuple[nn.Module, torch.Tensor]] = []

    def hook(mod: nn.Module, _inp: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            seen.append((mod, out))

    leaves = [m for m in model.modules() if is_output_layer_type(m)]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        main = call_model(model, case)
    finally:
        for h in handles:
            h.remove()
    found: list[nn.Module] = []
    for mod, out in seen:
        same = out is main or (
            out.shape == main.shape
            and out.device == main.device
            and not out.is_meta
            and out.untyped_storage().data_ptr() == main.untyped_storage().data_ptr()
        )
        if same and all(mod is not f for f in found):
            found.append(mod)
    return found


def module_names(model: nn.Module, modules: Sequence[nn.Module]) -> list[str]:
    ids = {id(m) for m in modules}
    return [n for n, m in model.named_modules() if id(m) in ids]


def fresh(case: ZooCase) -> ZooCase:
    """The case with a deep copy of its model (each library gets its own)."""
    return ZooCase(case.name, copy.deepcopy(case.model), case.example_inputs, case.example_kwargs,
                   case.output_to_tensor)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence warnings and stdout (Torch-Pruning warns and prints while it builds its graph)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


class Timeout(Exception):
    """A benchmark stage ran past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`Timeout` inside the block after ``seconds`` (SIGALRM; main thread, POSIX only)."""
    if seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(_sig: int, _frame: Any) -> None:
        raise Timeout(f"took longer than {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------- timing
def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(fn(), seconds)`` measured with ``time.perf_counter``."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def median_time(fn: Callable[..., Any], repeats: int = 3, warmup: int = 1,
                setup: Callable[[], Any] | None = None) -> float:
    """Median seconds of ``fn(setup())`` (or ``fn()``) over ``repeats`` runs after ``warmup`` runs.

    ``setup`` runs before every call and is not timed (e.g. a fresh pruner per repeat).
    """
    times = []
    for i in range(warmup + repeats):
        args = (setup(),) if setup is not None else ()
        t0 = time.perf_counter()
        fn(*args)
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
    return statistics.median(times)


# --------------------------------------------------------------------------- reporting
def short_error(exc: BaseException, limit: int = 90) -> str:
    msg = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def full_error(exc: BaseException, limit: int = 600) -> str:
    msg = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {msg}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table with columns padded for reading in a terminal."""
    cells = [[md_cell(h) for h in headers]] + [[md_cell(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells[1:]]
    return "\n".join(lines)


def environment() -> str:
    """One line naming the versions and machine the numbers come from."""
    from importlib import metadata

    def ver(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "n/a"

    import os

    load = f", load average {os.getloadavg()[0]:.1f} at start" if hasattr(os, "getloadavg") else ""
    return (f"python {platform.python_version()}, torch {torch.__version__}, transformers {ver('transformers')}, "
            f"torch-pruning {ver('torch-pruning')}, {platform.machine()} with {os.cpu_count()} CPUs, "
            f"torch threads {torch.get_num_threads()}{load}")


def busy_warning() -> str | None:
    """A warning when other processes keep the CPUs busy (timings then mean little)."""
    import os

    if not hasattr(os, "getloadavg"):
        return None
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if load > cpus:
        return (f"warning: load average {load:.1f} on {cpus} CPUs - other processes compete for the CPUs, "
                "so timings are inflated and noisy")
    return None


def write_result(name: str, text: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(text, encoding="utf-8")
    return path


def finish(name: str, doc: Sequence[str], misses: Sequence[str], met: str, *, heading: str = "## Target",
           intro: Sequence[str] = (), echo: bool = True) -> int:
    """End a benchmark: append the target section (``heading``, ``intro`` lines, then ``- MISSED ...``
    for each miss or ``- <met>``), write the result file ``name``, print the text (``echo``) and where
    it went; returns the exit status (1 when a target was missed)."""
    text = "\n".join([*doc, heading, "", *intro, *([f"- MISSED {m}" for m in misses] or [f"- {met}"])]) + "\n"
    if echo:
        print(text)
    print(f"written to {write_result(name, text)}")
    return 1 if misses else 0


def fmt_s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f}"


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f}"


def fmt_ratio(num: float | None, den: float | None) -> str:
    if num is None or den is None or den == 0:
        return "-"
    return f"{num / den:.2f}"


@dataclass
class SeedRow:
    """One method's metric per ``(target, stage)``, one value per seed, and the cost reached.

    ``scale`` and ``digits`` set how :meth:`cell` prints a mean ± std (100 and 1 for percentages).
    """

    method: str
    scale: float = 1.0
    digits: int = 3
    values: dict[tuple[float, str], list[float]] = field(default_factory=dict)
    macs: dict[float, list[float]] = field(default_factory=dict)
    failed: str = ""

    def add(self, target: float, stage: str, value: float) -> None:
        self.values.setdefault((target, stage), []).append(value)

    def mean(self, target: float, stage: str) -> float:
        v = self.values.get((target, stage), [])
        return statistics.fmean(v) if v else float("nan")

    def cell(self, target: float, stage: str) -> str:
        v = self.values.get((target, stage), [])
        if not v:
            return "-"
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        return f"{self.scale * statistics.fmean(v):.{self.digits}f} ± {self.scale * sd:.{self.digits}f}"

    def reached(self, target: float) -> float:
        v = self.macs.get(target, [])
        return statistics.fmean(v) if v else float("nan")


def seed_table(rows: dict[str, SeedRow], targets: Sequence[float], stages: Sequence[str],
               failed_chars: int | None = None) -> list[str]:
    """Markdown table: one row per method, a ``mean ± std`` column per (target, stage), the MACs reached."""
    cols = [f"{t:.2f} MACs: {s}" for t in targets for s in stages]
    out = ["| method | " + " | ".join(cols) + " | MACs reached |", "|" + "---|" * (len(cols) + 2)]
    for r in rows.values():
        cells = [r.cell(t, s) for t in targets for s in stages]
        reached = ", ".join(f"{r.reached(t):.3f}" for t in targets if r.macs.get(t))
        note = f" (failed: {r.failed[:failed_chars]})" if r.failed else ""
        out.append(f"| {r.method}{note} | " + " | ".join(cells) + f" | {reached or '-'} |")
    return out
