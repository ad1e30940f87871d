"""The Vitis-style runner: ``ana`` (resumable, distributed sensitivity file) and ``prune(removal_ratio)``.

Oracles: the MACs removed are the asked fraction within 1 % (counted on the slim model); a
known-answer model (one branch scaled by 0.01) is pruned where the analysis says it matters
least; an interrupted analysis resumed runs only the missing evaluations and ends in the file an
uninterrupted run writes; two gloo ranks write that file too; the analysis' scores equal a
direct evaluation of the slim model for a plain group.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from gloo import free_port
from workflow_models import Fidelity, data, make_model

from pruning_ir import InvalidInputError, MacsLatency
from pruning_ir.workflows import get_pruning_runner

HERE = Path(__file__).parent
RATIOS = (0.25, 0.5, 0.75)


def _runner(cache: Path):  # type: ignore[no-untyped-def]
    model, x = make_model(), data()
    return get_pruning_runner(model, (x,), "iterative", cache_dir=cache), Fidelity(model, x), x


def test_ana_then_prune_removes_the_asked_macs(tmp_path: Path) -> None:
    runner, fn, x = _runner(tmp_path)
    sens = runner.ana(fn, (x,), ratios=RATIOS)
    assert runner.sensitivity_path.is_file() and sens["complete"]
    assert fn.calls == 1 + sum(len(g["scores"]) for g in sens["groups"].values())
    count = MacsLatency((x,))
    base = count(runner.model)
    for ratio in (0.3, 0.5):
        slim = runner.prune(ratio)
        removed = 1 - count(slim) / base
        assert abs(removed - ratio) <= 0.01, (ratio, removed)
        assert slim(x).shape == (4, 4)
    assert fn.calls == 1 + sum(len(g["scores"]) for g in sens["groups"].values())  # prune re-analyses nothing


def test_prune_spares_what_the_analysis_found_sensitive(tmp_path: Path) -> None:
    runner, fn, x = _runner(tmp_path)
    runner.ana(fn, (x,), ratios=RATIOS)
    slim = runner.prune(0.3)
    # branch b is scaled by 0.01: the analysis finds it cheap, so it loses more than branch a
    assert slim.b.out_channels < slim.a.out_channels, (slim.a.out_channels, slim.b.out_channels)


def test_analysis_score_is_the_slim_models_score(tmp_path: Path) -> None:
    runner, fn, x = _runner(tmp_path)
    sens = runner.ana(fn, (x,), ratios=RATIOS)
    gid = next(g.gid for g in runner.ir.prunable_label_groups() if any(m == "a.weight" for m, _ in g.members))
    n = int(sorted(sens["groups"][str(gid)]["scores"], key=int)[0])
    order = sens["order"][str(gid)]
    labels = [lab for lab in runner.ir.labels(gid) if lab.index in order[:n]]
    direct = fn(runner.ir.prune(labels=labels).model, x)
    assert direct == pytest.approx(sens["groups"][str(gid)]["scores"][str(n)], rel=1e-5, abs=1e-9)


def test_channel_divisible(tmp_path: Path) -> None:
    runner, fn, x = _runner(tmp_path)
    runner.ana(fn, (x,), ratios=RATIOS)
    slim = runner.prune(0.4, channel_divisible=8)
    for m in (slim.stem, slim.a, slim.b):
        assert m.out_channels % 8 == 0


class _Stop(Exception):
    pass


def test_interrupted_analysis_resumes_and_matches_an_uninterrupted_one(tmp_path: Path) -> None:
    reference, ref_fn, x = _runner(tmp_path / "ref")
    full = reference.ana(ref_fn, (x,), ratios=RATIOS)
    total = ref_fn.calls

    runner, fn, _ = _runner(tmp_path / "resumed")
    stop_after = total // 2

    def flaky(model, inp):  # type: ignore[no-untyped-def]
        if fn.calls >= stop_after:
            raise _Stop
        return fn(model, inp)

    with pytest.raises(_Stop):
        runner.ana(flaky, (x,), ratios=RATIOS)
    assert fn.calls == stop_after
    again = runner.ana(fn, (x,), ratios=RATIOS)
    assert fn.calls == total  # only the missing evaluations ran
    assert again == full
    runner.ana(fn, (x,), ratios=RATIOS)  # finished: read back, nothing recomputed
    assert fn.calls == total
    assert json.loads(runner.sensitivity_path.read_text()) == full


def test_excludes_and_errors(tmp_path: Path) -> None:
    runner, fn, x = _runner(tmp_path)
    with pytest.raises(InvalidInputError, match=r"run runner\.ana"):
        runner.prune(0.3)
    sens = runner.ana(fn, (x,), ratios=RATIOS, excludes=["b"])
    assert not any("b.weight" in g["describe"] for g in sens["groups"].values())
    assert runner.prune(0.2).b.out_channels == 64
    with pytest.raises(InvalidInputError, match="no modules named"):
        runner.ana(fn, (x,), excludes=["nope"])
    with pytest.raises(InvalidInputError, match="ratios"):
        runner.ana(fn, (x,), ratios=(0.5, 1.5))
    with pytest.raises(InvalidInputError, match="one_step"):
        get_pruning_runner(make_model(), (x,), "two_step")


def test_two_gloo_ranks_write_the_one_process_file(tmp_path: Path) -> None:
    worker = str(HERE / "dist_workflow_worker.py")
    port = free_port()
    procs = [subprocess.Popen([sys.executable, worker, str(tmp_path / "two"), str(r), "2", port],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    calls = []
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
        calls.append(int(out.split("calls ")[-1]))
    one = subprocess.run([sys.executable, worker, str(tmp_path / "one"), "0", "1", port], check=True, timeout=300,
                         capture_output=True, text=True)
    single_calls = int(one.stdout.split("calls ")[-1])
    files = [sorted((tmp_path / d).glob("*.sens")) for d in ("two", "one")]
    assert len(files[0]) == len(files[1]) == 1 and files[0][0].name == files[1][0].name
    assert json.loads(files[0][0].read_text()) == json.loads(files[1][0].read_text())
    assert sum(calls) == single_calls  # the tasks (and the baseline) shared out, none twice
    assert not list((tmp_path / "two").glob("*.part*"))


@pytest.mark.parametrize("mode", ["order", "weights", "search"])
def test_ranks_whose_irs_differ_are_refused_on_every_rank(tmp_path: Path, mode: str) -> None:
    """Oracle: the same script as one process runs. Two ranks whose IRs number the groups the other
    way round (annealing), or whose models hold other weights (sensitivity analysis, one-step
    search), each get the refusal instead of a merge of scores of other channels under the same
    group ids."""
    from gloo import two_ranks_and_one

    two_ranks_and_one("dist_guard_worker.py", tmp_path, args=(mode,))
    assert (tmp_path / "one.0").read_text() == "ran"
    for r in range(2):
        text = (tmp_path / f"two.{r}").read_text()
        assert text.startswith("refused:") and "differ between ranks (rank 0 and rank(s) [1])" in text, text


def test_one_rank_reads_a_finished_analysis_back_alone(tmp_path: Path) -> None:
    """Two ranks analyse one model; then rank 0 alone calls ``ana`` again: it reads the file back
    (equal to what it computed) without waiting for rank 1 (a collective call there would hang)."""
    from gloo import two_ranks_and_one

    two_ranks_and_one("dist_guard_worker.py", tmp_path, args=("readback",), timeout=120)
    assert [(tmp_path / f"{n}").read_text() for n in ("two.0", "two.1", "one.0")] == ["ran"] * 3


def test_sensitivity_plot_is_a_png(tmp_path: Path) -> None:
    import matplotlib.image

    from pruning_ir.plots import plot_sensitivity

    runner, fn, x = _runner(tmp_path)
    path = plot_sensitivity(runner.ana(fn, (x,), ratios=RATIOS), tmp_path / "sens.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and matplotlib.image.imread(path).ndim == 3


# ---------------------------------------------------------------------------- one-step search
def _one_step(cache: Path):  # type: ignore[no-untyped-def]
    from workflow_models import make_bn_model

    model, x = make_bn_model(), data()
    return get_pruning_runner(model, (x,), "one_step", cache_dir=cache), Fidelity(model, x), x


def _search(runner, fn, x, **kw):  # type: ignore[no-untyped-def]
    from workflow_models import calib_batches, calibration_fn

    args = {"num_subnet": 10, "removal_ratio": 0.5, **kw}
    return runner.search(calibration_fn=calibration_fn, calib_args=(calib_batches(),), eval_fn=fn, eval_args=(x,),
                         **args)


def test_search_candidates_meet_the_target_and_prune_builds_the_best(tmp_path: Path) -> None:
    from workflow_models import calib_batches, calibration_fn

    runner, fn, x = _one_step(tmp_path)
    found = _search(runner, fn, x, strategy="random")
    assert len(found) == 10 == fn.calls and runner.search_path.is_file()
    count = MacsLatency((x,))
    base = count(runner.model)
    assert all(abs(c["removed_macs"] - 0.5) <= 0.01 for c in found)
    best = max(range(len(found)), key=lambda i: found[i]["score"])
    slim = runner.prune(removal_ratio=0.5)
    assert abs(1 - count(slim) / base - 0.5) <= 0.01
    # the recorded score is the slim model's after adaptive BN (known answer: recompute it)
    from pruning_ir.workflows import adaptive_bn

    for i in (best, 3):
        cand = runner.prune(removal_ratio=0.5, index=i)
        adaptive_bn(cand, calibration_fn, calib_batches())
        assert fn(cand, x) == pytest.approx(found[i]["score"], rel=1e-6, abs=1e-12)
    assert [m.out_channels for m in (slim.c1, slim.c2)] == [
        m.out_channels for m in (runner.prune(removal_ratio=0.5, index=best).c1, runner.prune(0.5, index=best).c2)]
    with pytest.raises(InvalidInputError, match="no finished search"):
        runner.prune(removal_ratio=0.3)


def test_interrupted_evolution_search_resumes_to_the_same_file(tmp_path: Path) -> None:
    ref, ref_fn, x = _one_step(tmp_path / "ref")
    full = _search(ref, ref_fn, x, num_subnet=20)
    runner, fn, _ = _one_step(tmp_path / "resumed")

    def flaky(model, inp):  # type: ignore[no-untyped-def]
        if fn.calls >= 13:  # inside the first evolution generation
            raise _Stop
        return fn(model, inp)

    with pytest.raises(_Stop):
        _search(runner, flaky, x, num_subnet=20)
    again = _search(runner, fn, x, num_subnet=20)
    assert fn.calls == 20 and again == full
    assert json.loads(runner.search_path.read_text()) == json.loads(ref.search_path.read_text())


def test_two_gloo_ranks_search_to_the_one_process_file(tmp_path: Path) -> None:
    worker = str(HERE / "dist_workflow_worker.py")
    port = free_port()
    procs = [subprocess.Popen([sys.executable, worker, str(tmp_path / "two"), str(r), "2", port, "search"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    subprocess.run([sys.executable, worker, str(tmp_path / "one"), "0", "1", port, "search"], check=True, timeout=300)
    files = [sorted((tmp_path / d).glob("*.search")) for d in ("two", "one")]
    assert len(files[0]) == len(files[1]) == 1
    assert json.loads(files[0][0].read_text()) == json.loads(files[1][0].read_text())


# ---------------------------------------------------------------------------- schedules
def test_schedules_known_values() -> None:
    from pruning_ir.workflows import schedule_fractions

    assert schedule_fractions("one_shot", 0.5, 4) == [0.5]
    assert schedule_fractions("linear", 0.6, 3) == pytest.approx([0.2, 0.4, 0.6])
    # Zhu & Gupta: s_t = s_f (1 - (1 - t/n)^3): 0.5 * (1 - 0.75^3), (1 - 0.5^3), (1 - 0.25^3), 1
    assert schedule_fractions("agp", 0.5, 4) == pytest.approx([0.2890625, 0.4375, 0.4921875, 0.5])
    with pytest.raises(InvalidInputError, match="schedule"):
        schedule_fractions("cosine", 0.5, 4)


def test_agp_prunes_step_by_step_rescoring_the_fine_tuned_model() -> None:
    from workflow_models import calib_batches, make_bn_model

    from pruning_ir import LossAwareCriterion, verify_pruning
    from pruning_ir.workflows import IterativePruning

    model, x = make_bn_model(), data()
    before = [p.detach().clone() for p in model.parameters()]
    batches = calib_batches()
    calibrated, tuned = [], []

    def calibrate(ir):  # type: ignore[no-untyped-def]
        calibrated.append(sum(p.numel() for p in ir.model.parameters()))
        with LossAwareCriterion(ir) as collect:
            for b in batches:
                collect(b).square().mean().backward()

    def finetune(m, step):  # type: ignore[no-untyped-def]
        tuned.append(step)
        opt = torch.optim.SGD(m.parameters(), lr=1e-3)
        for b in batches:
            opt.zero_grad()
            m(b).square().mean().backward()
            opt.step()

    job = IterativePruning(model, (x,), target=0.5, steps=3, calibrate=calibrate, finetune=finetune)
    slim = job.run()
    count = MacsLatency((x,))
    assert [round(s.asked, 4) for s in job.history] == [round(f, 4) for f in job.fractions]
    for s in job.history:
        assert s.asked <= s.reached <= s.asked + 0.03, (s.asked, s.reached)
        rep = verify_pruning(s.ir, s.labels)  # every step checkable
        assert rep.exact or rep.inexact_reasons, rep
    assert 1 - count(slim) / count(model) >= 0.5
    assert tuned == [0, 1, 2] and calibrated[0] > calibrated[1] > calibrated[2]  # each step scores the new model
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # the user's model


def test_lottery_ticket_rewind_sets_kept_weights_to_their_initial_values() -> None:
    from workflow_models import make_bn_model

    from pruning_ir import PruningIR
    from pruning_ir.workflows import IterativePruning

    model, x = make_bn_model(), data()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)  # "training" moved every weight
    job = IterativePruning(model, (x,), target=0.4, schedule="one_shot", rewind=init)
    slim = job.run()
    # known answer: the initial model pruned with the same labels (a fresh IR of it: same groups)
    fresh = make_bn_model()
    fresh.load_state_dict(init)
    fresh_ir = PruningIR(fresh, example_inputs=(x,))
    want = fresh_ir.prune(labels=[fresh_ir.labels(lab.group)[lab.index] for lab in job.history[0].labels]).model
    for (k, a), (_, b) in zip(slim.state_dict().items(), want.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    with pytest.raises(InvalidInputError, match="rewind"):
        IterativePruning(model, (x,), target=0.4, rewind={"nope": torch.zeros(1)})


def test_adaptive_bn_resets_and_averages() -> None:
    from pruning_ir.workflows import adaptive_bn

    bn = torch.nn.BatchNorm1d(3)
    bn.running_mean.fill_(100.0)  # the unpruned network's statistics: must not survive
    batches = [torch.randn(8, 3) + 1, torch.randn(8, 3) - 3]

    def calibration_fn(model, data):  # type: ignore[no-untyped-def]
        model.train()
        with torch.no_grad():
            for b in data:
                model(b)
        model.eval()

    adaptive_bn(bn, calibration_fn, batches)
    want = (batches[0].mean(0) + batches[1].mean(0)) / 2
    assert torch.allclose(bn.running_mean, want, atol=1e-6) and bn.momentum == 0.1
