"""The command line: ``inspect`` and ``prune`` on a toy CNN factory and a Hugging Face config directory.

Oracles: the table lists the model's layers with the widths and groups the IR has; ``prune``
writes a directory that ``load_pruned`` loads (alone: the factory or the HF config rebuilds the
architecture) into a model within the asked MACs, measured by counting; the plots are PNG images.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pruning_ir import MacsLatency, PruningIR, load_pruned
from pruning_ir.cli import main


def make_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()


def _png(path: Path) -> tuple[int, ...]:
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    return tuple(matplotlib.image.imread(path).shape)


def test_inspect_lists_layers_and_groups(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "test_cli:make_cnn", "--input", "1,3,16,16"]) == 0
    out = capsys.readouterr().out
    ir = PruningIR(make_cnn(), example_inputs=(torch.randn(1, 3, 16, 16),))
    rows = [line.split() for line in out.splitlines()[1:5]]
    assert [r[:4] for r in rows] == [["0", "Conv2d", "16", "3"], ["1", "BatchNorm2d", "16", "-"],
                                     ["3", "Conv2d", "32", "16"], ["7", "Linear", "10", "32"]]
    sizes = sorted(g.size for g in ir.prunable_label_groups())
    assert sizes == [16, 32] and f"g{ir.prunable_label_groups()[0].gid}:16 prunable" in out
    assert "model output (kept)" in out and "unprunable groups" in out


def test_prune_to_half_the_macs_writes_a_loadable_directory(tmp_path: Path) -> None:
    out = tmp_path / "slim"
    assert main(["prune", "test_cli:make_cnn", "--input", "1,3,16,16", "--macs", "0.5", "--plots",
                 "--out", str(out)]) == 0
    slim = load_pruned(out)  # the factory returns the model: saved as its constructor
    count = MacsLatency((torch.randn(1, 3, 16, 16),))
    assert count(slim) <= 0.5 * count(make_cnn())
    assert slim(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    report = (out / "report.md").read_text()
    assert "knapsack to 0.5 of the MACs" in report and "## Rewrite log" in report
    for name in ("widths.png", "costs.png", "search.png"):
        shape = _png(out / name)
        assert len(shape) == 3 and shape[0] > 100 and shape[1] > 100


def test_hf_config_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=32)
    config.save_pretrained(tmp_path / "bert")
    assert main(["inspect", str(tmp_path / "bert"), "--hf-class", "BertModel"]) == 0
    assert "encoder.layer.0.intermediate.dense" in capsys.readouterr().out
    out = tmp_path / "slim"
    assert main(["prune", str(tmp_path / "bert"), "--hf-class", "BertModel", "--selector", "global",
                 "--ratio", "0.3", "--out", str(out)]) == 0
    slim = load_pruned(out)  # from the saved HF config alone
    ids = torch.randint(0, 50, (2, 8))
    assert slim(input_ids=ids).last_hidden_state.shape == (2, 8, 32)
    assert sum(p.numel() for p in slim.parameters()) < sum(
        p.numel() for p in transformers.BertModel(config).parameters())


def test_bad_model_names_say_what_to_give(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["inspect", "no_such_thing"]) == 2
    assert "package.module:factory" in capsys.readouterr().err
    assert main(["inspect", "test_cli:make_cnn"]) == 2
    assert "--input" in capsys.readouterr().err
    assert main(["prune", "test_cli:make_cnn", "--input", "1,3,16,16", "--out", str(tmp_path)]) == 2
    assert "--ratio" in capsys.readouterr().err


def test_networkx_coupling_graph_matches_the_groups() -> None:
    """Every group's members are its neighbours in the coupling graph, with their axes; modules
    hold their parameters; a residual couples both convs' outputs through one group node."""
    import networkx as nx
    from toy_zoo import TOY_CASES

    model, args = TOY_CASES["residual"]()
    ir = PruningIR(model, example_inputs=args)
    g = ir.to_networkx()
    for grp in ir.label_groups():
        node = ("group", grp.gid)
        assert g.nodes[node]["size"] == grp.size and g.nodes[node]["prunable"] == grp.prunable
        got = {(p[1], ax) for p in g.neighbors(node) for ax in g.edges[p, node]["axes"]}
        assert got == set(grp.members)
    for name, p in model.named_parameters():
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        assert g.has_edge(("module", owner), ("param", name)) and g.nodes[("param", name)]["shape"] == tuple(p.shape)
    wide = max(ir.prunable_label_groups(), key=lambda grp: len(grp.members))
    around = [("group", wide.gid), *g.neighbors(("group", wide.gid))]
    modules = {p[1].rsplit(".", 1)[0] for p in around[1:]}
    assert len(modules) >= 2 and nx.is_connected(g.subgraph(around))


def score_cnn(model: nn.Module) -> float:
    """An eval function for ``analyze``: minus the squared difference to the unpruned outputs."""
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return -float((model(x) - make_cnn()(x)).pow(2).mean())


def test_analyze_prints_the_sensitivity_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "test_cli:make_cnn", "--input", "1,3,16,16", "--eval", "test_cli:score_cnn",
                 "--ratios", "0.25,0.5", "--cache-dir", str(tmp_path), "--plot", str(tmp_path / "sens.png")]) == 0
    out = capsys.readouterr().out
    assert out.split(";")[0] in ("baseline -0", "baseline 0"), out  # the unpruned model scores 0
    lines = [line.split() for line in out.splitlines()[2:] if line.startswith("g")]
    assert len(lines) == 2
    for line in lines:  # pruning more of a group moves the outputs further
        assert 0 > float(line[-2]) > float(line[-1]), line
    assert len(list(tmp_path.glob("*.sens"))) == 1 and _png(tmp_path / "sens.png")
