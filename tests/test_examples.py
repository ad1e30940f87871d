"""Examples run in CI (an example that was never executed is a defect)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_runs_and_prunes_exactly() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], capture_output=True,
                         text=True, timeout=600, check=True).stdout
    assert "slim == masked original: exact=True" in out
    assert "reloaded model identical: True" in out
    params = next(line for line in out.splitlines() if line.startswith("params"))
    assert float(params.split()[-1]) < 0.5  # half of every group pruned: about a quarter of the weights left
