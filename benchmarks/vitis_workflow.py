"""The Vitis-style iterative workflow: MACs targets of ``runner.prune(removal_ratio)`` and a killed analysis.

(a) **removal_ratio targets.** For the digits residual CNN (``examples/digits_cnn.py``), a
    torchvision-layout ResNet-50 (``torch_zoo``) and a small HF ViT (``hf_zoo``), ``runner.ana``
    with a fidelity score (minus the mean squared difference to the original's outputs on a fixed
    batch; the allocation needs a score, not accuracy) at ratios 0.1 ... 0.9, then
    ``runner.prune(r)`` for r in 0.3 / 0.5 / 0.7: the MACs removed, counted on the slim model
    with ``MacsLatency``. Target: within 1 % of r (absolute) for every model and r.
(b) **Resumability.** A subprocess runs the digits CNN's analysis, appending a line to a log per
    finished ``eval_fn`` call; after half the calls it is killed with ``SIGKILL``; a second run
    finishes it. Target: the second run makes only the calls whose results the first had not
    saved (at most one more than the total minus the first run's saved results: the call the kill
    interrupted), and its file equals an uninterrupted run's.

Usage::

    python benchmarks/vitis_workflow.py
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: F401  (puts the repository root and tests/ on sys.path)
import torch
from _common import busy_warning, environment, markdown_table, write_result
from torch import nn

REPO = Path(__file__).resolve().parents[1]
RATIOS = (0.3, 0.5, 0.7)
TOLERANCE = 0.01


class Fidelity:
    def __init__(self, reference: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], log: Path | None = None):
        self.args, self.kwargs, self.log = args, kwargs, log
        with torch.no_grad():
            self.want = self._out(reference)
        self.calls = 0

    def _out(self, model: nn.Module) -> torch.Tensor:
        out = model(*self.args, **self.kwargs)
        return out if isinstance(out, torch.Tensor) else out[0]

    def __call__(self, model: nn.Module) -> float:
        with torch.no_grad():
            score = -float((self._out(model) - self.want).pow(2).mean())
        self.calls += 1
        if self.log is not None:
            with self.log.open("a") as f:
                f.write("call\n")
        return score


def digits() -> tuple[nn.Module, tuple[Any, ...], dict[str, Any]]:
    sys.path.insert(0, str(REPO / "examples"))
    from digits_cnn import make_model

    return make_model(0).eval(), (torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)),), {}


def resnet50() -> tuple[nn.Module, tuple[Any, ...], dict[str, Any]]:
    from torch_zoo import TORCH_CASES

    c = TORCH_CASES["resnet50"]()
    return c.model.eval(), tuple(c.example_inputs), dict(c.example_kwargs)


def vit() -> tuple[nn.Module, tuple[Any, ...], dict[str, Any]]:
    from hf_zoo import HF_CASES

    c = HF_CASES["vit"]()
    return c.model.eval(), tuple(c.example_inputs), dict(c.example_kwargs)


MODELS = {"digits CNN": digits, "ResNet-50": resnet50, "HF ViT (small)": vit}


def targets(cache: Path) -> tuple[list[list[str]], list[str]]:
    from pruning_ir import MacsLatency
    from pruning_ir.workflows import get_pruning_runner

    rows, misses = [], []
    for name, build in MODELS.items():
        model, args, kwargs = build()
        runner = get_pruning_runner(model, args, "iterative", example_kwargs=kwargs, cache_dir=cache,
                                    name=name.replace(" ", "_"))
        fn = Fidelity(model, args, kwargs)
        t0 = time.perf_counter()
        runner.ana(lambda m, fn=fn: fn(m))
        ana_s = time.perf_counter() - t0
        count = MacsLatency(args, kwargs)
        base = count(model)
        cells = [name, str(fn.calls), f"{ana_s:.1f}"]
        for r in RATIOS:
            t0 = time.perf_counter()
            slim = runner.prune(r)
            removed = 1 - count(slim) / base
            cells.append(f"{removed:.4f} ({time.perf_counter() - t0:.1f} s)")
            if abs(removed - r) > TOLERANCE:
                misses.append(f"{name} removal_ratio {r}: removed {removed:.4f}")
        rows.append(cells)
    return rows, misses


_CHILD = """
import sys, torch
sys.path.insert(0, {bench!r})
from vitis_workflow import Fidelity, digits
from pathlib import Path
from pruning_ir.workflows import get_pruning_runner
model, args, kwargs = digits()
runner = get_pruning_runner(model, args, "iterative", cache_dir={cache!r}, name="digits")
fn = Fidelity(model, args, kwargs, log=Path({log!r}))
runner.ana(lambda m: fn(m))
print("calls", fn.calls)
"""


def _child(cache: Path, log: Path) -> subprocess.Popen[str]:
    script = _CHILD.format(bench=str(Path(__file__).resolve().parent), cache=str(cache), log=str(log))
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def resumability(work: Path) -> tuple[list[list[str]], list[str]]:
    ref = _child(work / "ref", work / "ref.log")
    ref.communicate(timeout=600)
    total = _lines(work / "ref.log")
    killed = _child(work / "run", work / "run.log")
    while _lines(work / "run.log") < total // 2 and killed.poll() is None:
        time.sleep(0.01)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    first = _lines(work / "run.log")
    saved = 0
    for part in (work / "run").glob("*.part*"):
        saved += len(json.loads(part.read_text())["results"])
    again = _child(work / "run", work / "run2.log")
    again.communicate(timeout=600)
    second = _lines(work / "run2.log")
    ref_file = json.loads(next((work / "ref").glob("*.sens")).read_text())
    run_file = json.loads(next((work / "run").glob("*.sens")).read_text())
    same = ref_file == run_file
    misses = []
    if second > total - saved + 1:
        misses.append(f"resumed run made {second} calls, more than the {total - saved} missing (+1)")
    if not same:
        misses.append("the resumed analysis' file differs from the uninterrupted one's")
    row = [str(total), str(first), str(saved), str(second), "yes" if same else "NO"]
    return [row], misses


def main() -> int:
    torch.set_num_threads(1)
    busy = busy_warning()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        rows_a, miss_a = targets(Path(d) / "a")
        rows_b, miss_b = resumability(Path(d))
    table_a = markdown_table(["model", "eval_fn calls (ana)", "ana s",
                              *[f"removed at removal_ratio {r} (prune s)" for r in RATIOS]], rows_a)
    table_b = markdown_table(["calls, uninterrupted", "calls before SIGKILL", "results saved then",
                              "calls of the resumed run", "file equals uninterrupted"], rows_b)
    misses = miss_a + miss_b
    verdict = "All targets met." if not misses else "TARGET MISSED: " + "; ".join(misses)
    print(table_a, table_b, verdict, sep="\n\n")
    doc = ["# Vitis-style workflow: removal_ratio targets and a killed analysis", "",
           f"Generated by `python benchmarks/vitis_workflow.py` on {time.strftime('%Y-%m-%d')} ({environment()}), "
           f"{time.perf_counter() - t0:.0f} s.", "", *([f"> {busy}", ""] if busy else []),
           "(a) MACs removed by `runner.prune(removal_ratio)` after one `runner.ana` (target: within 1 %):", "",
           table_a, "", "(b) An analysis killed with SIGKILL halfway, then run again:", "", table_b, "", verdict, ""]
    print(f"written {write_result('vitis_workflow.md', chr(10).join(doc))}")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
