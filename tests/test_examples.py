"""Examples run in CI (an example that was never executed is a defect)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _row(out: str, name: str) -> tuple[float, float, float]:
    """``original, pruned, ratio`` of the quickstart's summary-table row ``name``."""
    line = next((line for line in out.splitlines() if line.startswith(name)), None)
    assert line is not None, f"no {name!r} row in the quickstart's output:\n{out}"
    a, b, r = (float(tok) for tok in line[len(name):].split())
    return a, b, r


def test_quickstart_trains_prunes_to_half_the_macs_and_recovers() -> None:
    pytest.importorskip("sklearn")
    pytest.importorskip("tqdm")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), "--quiet"], capture_output=True,
                         text=True, timeout=600, check=True, env=env).stdout
    # the slim model is the original with the removed labels masked, to float rounding
    assert "slim == masked original: exact=True" in out
    assert "original model untouched by prune and fine-tune: True" in out
    assert "reloaded model identical: True" in out

    acc_before, acc_after, _ = _row(out, "test accuracy %")
    assert acc_before >= 95.0, out  # the CNN learned digits
    assert acc_after >= acc_before - 3.0, out  # BN recalibration + a short fine-tune recover the accuracy

    macs_before, macs_after, _ = _row(out, "MACs per image")
    assert macs_after <= 0.5 * macs_before, out  # the budget is never exceeded...
    assert macs_after >= 0.45 * macs_before, out  # ...and the bisection lands close to it

    params_before, params_after, _ = _row(out, "params")
    assert params_after < 0.6 * params_before, out  # channels removed, physically


def test_vitis_iterative_example_removes_the_asked_macs(tmp_path: Path) -> None:
    """The Vitis guide's iterative workflow as written (ana once per model, prune, fine-tune): each
    step lands within 1 % of its MACs target and fine-tuning recovers the accuracy."""
    pytest.importorskip("sklearn")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "vitis_iterative.py"), "--quiet", "--cache-dir",
                          str(tmp_path)], capture_output=True, text=True, timeout=600, check=True, env=env,
                         cwd=ROOT / "examples").stdout
    steps = [line for line in out.splitlines() if line.startswith("step ")]
    assert len(steps) == 2, out
    for line, target in zip(steps, (0.7, 0.5), strict=True):
        got = float(line.split("-> MACs ")[1].split()[0])
        assert abs(got - target) <= 0.01, line
        assert float(line.split("fine-tuned ")[1].split("%")[0]) >= 95.0, line
    assert len(list(tmp_path.glob("*.sens"))) == 2


def test_vitis_one_step_example_finds_a_subnetwork_at_the_target(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "vitis_one_step.py"), "--quiet", "--cache-dir",
                          str(tmp_path)], capture_output=True, text=True, timeout=600, check=True, env=env,
                         cwd=ROOT / "examples").stdout
    line = next(line for line in out.splitlines() if line.startswith("best of"))
    assert abs(float(line.split("MACs ")[1].split()[0]) - 0.3) <= 0.01, line
    assert float(line.split("adaptive BN ")[1].split("%")[0]) >= 80.0, line  # adaptive BN alone recovers most
    assert float(line.split("fine-tuned ")[1].split("%")[0]) >= 95.0, line
    assert len(list(tmp_path.glob("*.search"))) == 1


def test_compose_example_reaches_its_objectives() -> None:
    """The README's composition on the digits CNN: each pruner within half the MACs (counted on the slim
    model), the AGP steps on the schedule, the fine-grained step at exactly 0.7, accuracy recovered."""
    pytest.importorskip("sklearn")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "compose_digits.py"), "--quiet"],
                         capture_output=True, text=True, timeout=600, check=True, env=env,
                         cwd=ROOT / "examples").stdout
    rows = [line for line in out.splitlines() if "MACs " in line and "of the original" in line]
    assert len(rows) == 2, out
    for line in rows:
        assert float(line.split("MACs ")[1].split()[0]) <= 0.5, line
    agp = [float(v) for v in rows[1].split("after each step: ")[1].split(")")[0].split(", ")]
    assert agp[0] >= 0.5 * (1 - (2 / 3) ** 3) and agp[1] >= 0.5 * (1 - (1 / 3) ** 3) and agp[2] >= 0.5, rows[1]
    assert float(rows[1].split("test accuracy ")[1].rstrip("%")) >= 95.0, rows[1]
    fine = next(line for line in out.splitlines() if line.startswith("then fine-grained"))
    assert "sparsity 0.700" in fine and float(fine.split("test accuracy ")[1].rstrip("%")) >= 95.0, fine
