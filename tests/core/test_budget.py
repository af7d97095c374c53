"""The overhead budget (trainviz.core.budget): the scheduler's credit, what a callback runs within it, both ends of
a run kept, a new clock per fit, and the range check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import trainviz
from trainviz.callbacks.base import ProbeCallback
from trainviz.core.budget import Scheduler

ROBUST = dict(
    corruptions=["grayscale", "gaussian_blur_3x3", "gaussian_noise"],
    severities=[1],
    epsilons=[4 / 255],
    flip_max_steps=2,
    probe_size=16,
)


def _records(root: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (root / "trainviz" / name / "metrics.jsonl").read_text().splitlines()]


def test_scheduler_credit_counts_training_not_probe_time():
    s = Scheduler()
    s.register("a", 0.1)
    s.register("b", 0.5)
    s.start(now=100.0)
    s.cpu_load = lambda: 0.25  # the fit keeps a quarter of the machine's cores busy
    s.charge("a", 2.0, foreground=True, run=True)
    s.charge("b", 1.0, foreground=False)  # 1 CPU second of b's background thread
    # 20 s of wall time, 2 s of it in a probe: 18 s of training
    assert s.training_seconds(now=120.0) == pytest.approx(18.0)
    assert s.credit("a", now=120.0) == pytest.approx(0.1 * 18 - 2.0)
    # no batch beside it was slower: its CPU second displaced a quarter of a second of the fit's work
    assert s.credit("b", now=120.0) == pytest.approx(0.5 * 18 - 0.25)
    s.ledgers["b"].slowdown = 1.0  # measured: the batches beside b's work were 1 s slower than the quiet ones
    assert s.training_seconds(now=120.0) == pytest.approx(17.0)
    assert s.credit("b", now=120.0) == pytest.approx(0.5 * 17 - 1.0)
    s.skip("a", 3, "run", "too dear")
    summary = s.summary()
    assert summary["callbacks"]["a"]["runs"] == 1 and summary["callbacks"]["a"]["skipped"][0]["epoch"] == 3


def test_a_pool_is_fitted_to_what_each_callback_needs_and_keeps_its_sum():
    s = Scheduler()
    s.register("a", 0.04, pooled=True)
    s.register("r", 0.06, pooled=True, interval=2)
    s.register("own", 0.1)  # a callback's own budget stays out of the pool
    s.start(now=0.0)
    s.charge("a", 0.5, foreground=True, run=True)
    s.fit(epochs=2, now=40.5)
    assert s.ledgers["a"].fitted is None  # r has no cost yet: the fractions stay as given
    s.set_floor("r", 0.6)  # elastic: its least run takes 0.6 s
    s.charge("r", 3.0, foreground=True, run=True)
    s.fit(epochs=2, now=43.5)  # 40 s of training (43.5 less 3.5 in probes): 20 s an epoch
    # needs: a 0.5 s a run every epoch = 0.025; r 0.6 s every other epoch = 0.015. They fit the pool of 0.1, so a
    # gets 1.25 x its need and r the rest
    assert s.ledgers["a"].share == pytest.approx(0.03125) and s.ledgers["r"].share == pytest.approx(0.06875)
    assert s.credit("a", now=43.5) == pytest.approx(0.03125 * 40 - 0.5)
    assert s.credit("r", now=43.5) == pytest.approx(0.06875 * 40 - 3.0)
    assert s.credit("a", now=43.5) + s.credit("r", now=43.5) == pytest.approx(0.1 * 40 - 3.5)  # the pool's credit
    assert s.credit("own", now=43.5) == pytest.approx(0.1 * 40) and s.overhead(now=43.5)[1] == pytest.approx(0.2)
    ledgers = s.summary()["callbacks"]
    assert ledgers["a"]["fraction"] == pytest.approx(0.03125) and ledgers["a"]["fraction_given"] == 0.04
    assert ledgers["a"]["pooled"] and not ledgers["own"]["pooled"] and ledgers["r"]["need_seconds"] == 0.6


def test_a_short_pool_meets_the_least_runs_then_the_elastic_floor_then_the_rest():
    s = Scheduler()
    s.register("cam", 0.07, pooled=True)
    s.register("r", 0.03, pooled=True)
    s.start(now=0.0)
    s.charge("cam", 1.2, foreground=True, run=True, least=0.2)  # its maps take 0.2 s, its scores the rest
    s.ledgers["cam"].slowdown = 0.1  # its background work cost the batches 0.1 s
    s.set_floor("r", 0.5)
    s.charge("r", 0.5, foreground=True, run=True)
    s.fit(epochs=1, now=11.8)  # 10 s of training (11.8 less 1.2 + 0.5 in probes and 0.1 of slowdown)
    # needs: cam 1.3 s = 0.13, r's floor 0.05: more than the pool of 0.1. CAM's least run (0.2 s + its 0.1 s of
    # background) 0.03 and 1.25 x the floor, 0.0625, first, then the 0.0075 left goes to the rest of CAM's need
    assert s.ledgers["cam"].share == pytest.approx(0.0375) and s.ledgers["r"].share == pytest.approx(0.0625)
    assert s.credit("cam", now=11.8) + s.credit("r", now=11.8) == pytest.approx(0.1 * 10 - 1.8)  # the pool's credit
    s.charge("cam", 0.0, foreground=True, least=1.3)  # its least run as dear as its whole: shared as before
    s.fit(epochs=1, now=11.8)
    assert s.ledgers["cam"].share == pytest.approx(0.1 * 0.13 / 0.18)
    assert s.ledgers["r"].share == pytest.approx(0.1 * 0.05 / 0.18)


def test_a_pool_is_fitted_to_a_whole_run_a_callback_says_it_has_due_not_to_its_cut_runs():
    s = Scheduler()
    s.register("cam", 0.05, pooled=True)
    s.register("r", 0.05, pooled=True)
    s.start(now=0.0)
    s.charge("cam", 0.2, foreground=True, run=True, least=0.2)  # a short credit left its 1 s of scores out
    s.set_floor("r", 0.5)
    s.charge("r", 0.5, foreground=True, run=True)
    s.fit(epochs=1, now=10.7)  # 10 s of training
    # by its mean run CAM needs only its maps: 1.25 x 0.02; the floor 1.25 x 0.05 and the rest, 0.0125, to r
    assert s.ledgers["cam"].share == pytest.approx(0.025) and s.ledgers["r"].share == pytest.approx(0.075)
    s.set_whole("cam", 1.2)  # its maps and its due scores: 0.12, of which 0.1 beyond its least run
    s.fit(epochs=1, now=10.7)
    # the least runs and floor first (0.0875), then the 0.0125 left goes to CAM's scores
    assert s.ledgers["cam"].share == pytest.approx(0.0375) and s.ledgers["r"].share == pytest.approx(0.0625)
    s.set_whole("cam", None)
    s.fit(epochs=1, now=10.7)
    assert s.ledgers["cam"].share == pytest.approx(0.025)


def test_a_fixed_cost_callback_short_of_credit_borrows_the_others_spare_and_the_pool_keeps_its_sum():
    s = Scheduler()
    s.register("a", 0.05, pooled=True)
    s.register("b", 0.05, pooled=True)
    s.register("r", 0.05, pooled=True, interval=2)
    s.register("own", 0.1)
    s.set_floor("r", 0.5)  # elastic: neither lends nor borrows
    s.start(now=0.0)
    s.charge("a", 1.0, foreground=True, run=True)  # a's dear first run: 1 s
    s.charge("b", 0.2, foreground=True, run=True)
    s.charge("r", 0.5, foreground=True, run=True)
    now = 21.7  # 20 s of training
    pool = sum(s.credit(n, now=now) for n in "abr")
    assert s.credit("a", now=now) == pytest.approx(0.05 * 20 - 1.0)  # 0: short of its next run
    assert s.lend("r", 5.0, now=now) == pytest.approx(0.05 * 20 - 0.5)  # elastic: no loan
    assert s.lend("own", 5.0, now=now) == pytest.approx(0.1 * 20)  # out of the pool: no loan
    # a wants 1 s; b, which has not said what its least run takes, spares its credit beyond its need (0.8 - 0.2)
    assert s.lend("a", 1.0, now=now) == pytest.approx(0.6)
    assert s.ledgers["a"].loan == pytest.approx(0.6) and s.ledgers["b"].loan == pytest.approx(-0.6)
    assert s.credit("b", now=now) == pytest.approx(0.2) and s.credit("r", now=now) == pytest.approx(0.5)
    assert sum(s.credit(n, now=now) for n in "abr") == pytest.approx(pool)  # a loan moves credit, no more
    assert s.lend("b", 0.1, now=now) == pytest.approx(0.2)  # enough credit for its least run (0.1 s): no loan
    # b keeps only its least run now: a borrows 0.1 s more, r still lends nothing
    assert s.lend("a", 1.0, now=now) == pytest.approx(0.7)
    assert s.credit("b", now=now) == pytest.approx(0.1) and s.credit("r", now=now) == pytest.approx(0.5)
    assert sum(s.credit(n, now=now) for n in "abr") == pytest.approx(pool)
    assert s.summary()["callbacks"]["a"]["loan_seconds"] == 0.7
    s.charge("b", 0.0, foreground=True, least=0.05)  # a run says what b's least run now takes
    assert s.lend("a", 1.0, now=now) == pytest.approx(0.75) and s.credit("b", now=now) == pytest.approx(0.05)


def test_the_credit_its_essential_last_run_would_lack_is_held_back_before_it():
    s = Scheduler()
    s.register("a", 0.01, pooled=True)
    s.register("b", 0.01, pooled=True, interval=2)
    s.register("r", 0.03, pooled=True, interval=2)
    s.start(now=0.0)
    s.cpu_load = lambda: 1.0
    assert s.hold("a", ahead=5, epochs=1, now=1.0) == 0.0  # no run yet, nothing said: nothing to hold for
    s.charge("a", 0.3, foreground=True, run=True, least=0.25)  # its least run: 0.25 s
    s.charge("a", 0.1, foreground=False)  # and 0.1 CPU second of its writer's work a run
    s.charge("b", 0.4, foreground=True, run=True)  # runs whole or waits: its mean run
    s.set_floor("r", 0.5)  # elastic: its least run takes 0.5 s
    s.charge("r", 0.5, foreground=True, run=True)
    now = 21.2  # 20 s of training, 10 s an epoch after 2 epochs
    # a: its least run and its background's part of a run (0.35 s), less the 0.1 s one epoch at 1% brings
    assert s.hold("a", ahead=3, epochs=2, now=now) == pytest.approx(0.25 + 0.1 - 0.1)
    assert s.credit("a", now=now) == pytest.approx(0.01 * 20 - 0.4 - 0.25)
    assert s.ledgers["a"].spent == pytest.approx(0.4)  # a hold is not spent
    assert s.hold("a", ahead=3, epochs=2, least=0.05, now=now) == pytest.approx(0.05)  # the least it says now
    # b: its mean run (0.4 s) less what two epochs (its interval) bring; one epoch before the last, one epoch's
    assert s.hold("b", ahead=4, epochs=2, now=now) == pytest.approx(0.4 - 0.2)
    assert s.hold("b", ahead=1, epochs=2, now=now) == pytest.approx(0.4 - 0.1)
    # r: its floor less what its interval brings at 3%: nothing held
    assert s.hold("r", ahead=4, epochs=2, now=now) == 0.0
    # a pool's lenders keep what they hold: b spares 0.2 - 0.4 - 0.3 < 0, nothing; a's credit is what it has
    assert s.lend("a", 1.0, now=now) == pytest.approx(s.credit("a", now=now))
    assert s.ledgers["b"].loan == 0.0
    # the last epoch (ahead 0), or an unknown last (None): nothing held, the credit saved is spent
    assert s.hold("b", ahead=0, epochs=2, now=now) == 0.0 and s.hold("a", ahead=None, epochs=2, now=now) == 0.0
    assert s.credit("b", now=now) == pytest.approx(0.01 * 20 - 0.4)


def test_an_elastic_callback_borrows_what_it_holds_from_the_pools_spare_once():
    s = Scheduler()
    s.register("a", 0.05, pooled=True)
    s.register("r", 0.02, pooled=True, interval=2)
    s.start(now=0.0)
    s.cpu_load = lambda: 1.0
    s.charge("a", 0.2, foreground=True, run=True)  # a needs 0.2 s a run and has 1 s: 0.8 s beyond its run
    s.set_floor("r", 0.5)
    now = 20.2  # 20 s of training, 10 s an epoch
    # r, one epoch before the last, holds its floor less the epoch's 0.2 s at 2%: 0.3 s, of its 0.4 s credit
    assert s.hold("r", ahead=1, epochs=2, now=now) == pytest.approx(0.3)
    assert s.credit("r", now=now) == pytest.approx(0.1)
    pool = s.credit("a", now=now) + s.credit("r", now=now)
    # short of its floor by 0.4 s: it borrows the 0.3 s it holds from a's spare, not the whole 0.4 s
    assert s.lend("r", 0.5, now=now) == pytest.approx(0.4) and s.ledgers["r"].loan == pytest.approx(0.3)
    assert s.credit("a", now=now) + s.credit("r", now=now) == pytest.approx(pool)  # a loan moves credit
    assert s.ledgers["r"].least is None  # an elastic callback's least run is its floor
    assert s.lend("r", 0.5, now=now) == pytest.approx(0.4) and s.ledgers["r"].loan == pytest.approx(0.3)  # once
    s.charge("r", 0.4, foreground=True, run=True)  # its run takes its credit
    now += 0.4  # still 20 s of training
    assert s.hold("r", ahead=0, epochs=2, now=now) == 0.0  # the last epoch: the held 0.3 s is its credit
    assert s.credit("r", now=now) == pytest.approx(0.3)


def test_holding_for_the_last_run_keeps_a_fit_within_its_budget():
    """Ten epochs of 10 s, a callback at 1% (0.1 s an epoch) whose every run takes 0.3 s, essential at the first
    and last epoch. Planned on its credit alone, its runs spend what the epochs bring and the last run overshoots;
    with what its last run lacks held back, the last is paid from credit saved."""

    def fit(hold: bool) -> tuple[list[int], float]:
        s = Scheduler()
        s.register("a", 0.01)
        s.start(now=0.0)
        runs: list[int] = []
        for epoch in range(10):
            now = 10.0 * (epoch + 1) + 0.3 * len(runs)
            if hold:
                s.hold("a", ahead=9 - epoch, epochs=epoch + 1, now=now)
            if epoch in (0, 9) or s.credit("a", now=now) >= 0.3:
                s.charge("a", 0.3, foreground=True, run=True)
                runs.append(epoch)
        s.stop(now=100.0 + 0.3 * len(runs))
        return runs, s.overhead()[0]

    runs, share = fit(hold=False)
    assert runs == [0, 5, 8, 9] and share == pytest.approx(1.2 / 100)  # over the budget by its last run
    runs, share = fit(hold=True)
    assert runs == [0, 7, 9] and share == pytest.approx(0.9 / 100)  # within it: a run fewer
    # held: 0.3 s less the 0.1 s an epoch brings, from its first run's cost on (epochs 1 to 8)


def test_a_callback_knows_the_epochs_before_the_fits_last():
    from types import SimpleNamespace

    cb = trainviz.DynamicsCallback()
    assert cb._ahead(SimpleNamespace(max_epochs=6, should_stop=False), 2) == 3
    assert cb._ahead(SimpleNamespace(max_epochs=6, should_stop=False), 5) == 0
    assert cb._ahead(SimpleNamespace(max_epochs=6, should_stop=True), 2) == 0  # early stopping: this is the last
    assert cb._ahead(SimpleNamespace(max_epochs=-1, should_stop=False), 2) is None  # max_steps alone: not known
    assert cb._ahead(SimpleNamespace(max_epochs=None, should_stop=False), 2) is None


def test_plans_leave_the_margin_unplanned_in_credit_and_loans(tmp_path, tiny_dm, demo_model, make_trainer):
    from trainviz.core.budget import MARGIN

    s = Scheduler(margin=0.1)
    s.register("a", 0.05, pooled=True)
    s.register("b", 0.05, pooled=True)
    s.start(now=0.0)
    s.charge("a", 1.0, foreground=True, run=True)
    s.charge("b", 0.2, foreground=True, run=True)
    now = 21.2  # 20 s of training
    assert s.credit("a", now=now) == pytest.approx(0.9 * 0.05 * 20 - 1.0)  # -0.1
    assert s.credit("b", now=now) == pytest.approx(0.9 * 0.05 * 20 - 0.2)  # 0.7
    # b spares its credit beyond its need (0.7 - 0.2): a borrows it, short of its 1 s still
    assert s.lend("a", 1.0, now=now) == pytest.approx(-0.1 + 0.5)
    assert s.credit("a", now=now) + s.credit("b", now=now) == pytest.approx(0.9 * 0.1 * 20 - 1.2)
    # in a fit, the callbacks' scheduler keeps MARGIN of each allowance
    cb = trainviz.DynamicsCallback(probe_size=8, budget=0.5)
    trainer = make_trainer(tmp_path, [trainviz.RunManifestCallback(), cb], max_epochs=1)
    trainer.fit(demo_model(), tiny_dm)
    assert MARGIN == 0.05 and cb.budget_runner.scheduler.margin == MARGIN
    manifest = json.loads((tmp_path / "trainviz" / "manifest" / "manifest.json").read_text())
    assert manifest["budget"]["overhead"]["margin"] == MARGIN
    assert Scheduler().margin == 0.0


@pytest.mark.parametrize("pooled", [False, True])
def test_a_pool_lets_a_cheap_callback_run_every_epoch(pooled):
    """Ten epochs of 10 s. A cheap callback (0.5 s a run) with a static 1% runs at the first and last epoch
    only; in the pool of 10% it gets what it needs and runs at every epoch, the elastic one (0.6 s at least,
    every other epoch) takes the rest, and the pool spends no more than its 10% after the first epoch's runs."""
    s = Scheduler()
    s.register("cheap", 0.01, pooled=pooled)
    s.register("dear", 0.09, pooled=pooled, interval=2)
    s.start(now=0.0)
    runs: dict[str, list[int]] = {"cheap": [], "dear": []}
    spent = 0.0
    for epoch in range(10):
        now = 10.0 * (epoch + 1) + spent  # probe time on the training thread lengthens the fit
        essential = epoch in (0, 9)
        s.set_floor("dear", 0.6)
        s.fit(epoch + 1, now=now)
        if essential or s.credit("cheap", now=now) >= 0.5:
            s.charge("cheap", 0.5, foreground=True, run=True)
            runs["cheap"].append(epoch)
            spent += 0.5
        credit = s.credit("dear", now=now + 0.5 * (runs["cheap"][-1:] == [epoch]))
        if essential or credit >= 0.6:
            seconds = max(0.6, min(credit, 4.0))  # its plan takes what fits
            s.charge("dear", seconds, foreground=True, run=True)
            runs["dear"].append(epoch)
            spent += seconds
    if pooled:
        assert runs["cheap"] == list(range(10)) and len(runs["dear"]) >= 4, runs
    else:
        assert runs["cheap"] == [0, 9], runs  # 0.1 s of credit an epoch: 1.0 s after ten, short of a second run
    s.stop(now=100.0 + spent)
    assert s.overhead()[0] <= 0.1 + 4.6 / 100  # the budget, plus the first epoch's essential runs


def test_robustness_rotates_corruptions_within_the_credit():
    import torch

    from trainviz.core.contract import Credit
    from trainviz.core.probeset import ProbeSet
    from trainviz.data import Normalization
    from trainviz.probes.robustness import RobustnessOptions, RobustnessProbe

    options = RobustnessOptions(
        corruptions=["grayscale", "channels_bgr", "gaussian_noise", "fog", "contrast"], severities=[1, 2]
    )
    probe = ProbeSet(images=torch.rand(4, 3, 32, 32), labels=torch.arange(4) % 2, ids=torch.arange(4))
    cb = RobustnessProbe.setup(probe, options, Normalization.identity(3))  # the probe plans (issue 18)
    cb.history.costs = {"row": 1.0, "fgsm": 1.5, "flip": 100.0}
    seen = []
    for _ in range(3):
        # core: clean + 2 seed probes = 3 s; FGSM 1.5 s; one corruption of 2 severities = 2 s; not flip
        plan = cb.plan(Credit(3 + 1.5 + 2 + 0.5, essential=True))
        rows, fgsm, flip = plan.rows, plan.fgsm, plan.flip
        assert rows[:2] == [("grayscale", 1), ("channels_bgr", 1)] and fgsm and not flip
        seen.append(sorted({name for name, _ in rows[2:]}))
    assert seen == [["gaussian_noise"], ["fog"], ["contrast"]]
    plan = cb.plan(Credit())  # no budget: everything
    rows, fgsm, flip = plan.rows, plan.fgsm, plan.flip
    assert rows == cb.active and fgsm and flip


def test_budget_keeps_both_ends_skips_the_middle_and_says_so(tmp_path, tiny_dm, demo_model, make_trainer):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    callbacks = trainviz.default_callbacks(budget=0.001, embedding=False, robustness=ROBUST)
    trainer = make_trainer(tmp_path, callbacks, max_epochs=4)
    trainer.fit(demo_model(), tiny_dm)
    probes = [cb for cb in callbacks if isinstance(cb, ProbeCallback)]
    for cb in probes:
        assert cb.done_epochs[0] == 0 and cb.done_epochs[-1] == 3, (cb.name, cb.done_epochs)
        assert cb.budget == pytest.approx(
            0.001 * trainviz.BUDGET_SHARES[cb.name] / sum(trainviz.BUDGET_SHARES[p.name] for p in probes)
        )
    manifest = json.loads((tmp_path / "trainviz" / "manifest" / "manifest.json").read_text())
    ledgers = manifest["budget"]["callbacks"]
    assert set(ledgers) == {cb.name for cb in probes}
    assert any(skip["what"] == "run" for ledger in ledgers.values() for skip in ledger["skipped"])
    # the last run is compulsory but scaled to its credit: Zhang's probes left out, and said so
    last = [s for s in ledgers["robustness"]["skipped"] if s["epoch"] == 3 and s["what"] == "parts"]
    assert len(last) == 1 and "2 of 2 of Zhang's probes (grayscale, gaussian_blur_3x3)" in last[0]["reason"], last
    record = _records(tmp_path, "robustness")[-1]
    assert record["schedule"]["rows"] <= record["schedule"]["of"] and record["schedule"]["budget"] == pytest.approx(
        probes[-1].budget
    )
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    acc.Reload()
    assert "trainviz/budget/robustness/skipped" in acc.Tags()["scalars"]
    # default_callbacks' budget is one pool: refitted to the callbacks' costs after the first runs, same sum
    assert all(ledger["pooled"] for ledger in ledgers.values())
    assert sum(ledger["fraction"] for ledger in ledgers.values()) == pytest.approx(0.001, rel=1e-3)
    assert any(ledger["fraction"] != pytest.approx(ledger["fraction_given"]) for ledger in ledgers.values())
    assert [e.step for e in acc.Scalars("trainviz/budget/dynamics/fraction")] == [0, 1, 2, 3]
    # robustness is elastic: it aims at every other epoch and needs at least its clean row and Zhang's probes
    robustness = next(cb for cb in probes if cb.name == "robustness")
    # a row priced by the shared clean forward of its probe set when one ran (else by its own runs); grayscale and
    # the 3x3 blur, the clean row unless that forward served it, and what its last run cost besides its parts
    prober = robustness.prober
    costs, shared = prober.costs(), prober.clean.seconds
    assert costs["row"] == (prober.history.costs["row"] if shared is None else shared) > 0
    core = costs["overhead"] + costs["row"] * (2 + (not prober.clean_read))
    assert robustness._budget_floor() == pytest.approx(core) and core > costs["overhead"] >= 0
    floor = robustness.scheduler.ledgers["robustness"].floor  # what the last plan gave the pool (costs move on)
    assert floor is not None and ledgers["robustness"]["need_seconds"] == pytest.approx(floor, abs=1e-3)
    assert robustness.scheduler.ledgers["robustness"].interval == 2
    assert robustness.scheduler.ledgers["dynamics"].interval == 1
    # loans move credit within the pool (the elastic robustness neither lends nor borrows); each callback said what
    # its least run takes: CAM's maps, the embedding's run without its dear scores, the others' last whole run
    assert sum(ledger["loan_seconds"] for ledger in ledgers.values()) == pytest.approx(0.0, abs=3e-3)
    assert ledgers["robustness"]["loan_seconds"] == 0.0
    scheduler = robustness.scheduler
    cam = next(cb for cb in probes if cb.name == "cam")
    assert scheduler.ledgers["cam"].least == cam.prober.costs["maps"] and scheduler.ledgers["dynamics"].least > 0
    # the writer thread's CPU seconds are booked, and what they displaced is the larger charge when it is
    assert 0 < manifest["budget"]["overhead"]["cpu_load"] <= 1 and ledgers["cam"]["writer_seconds"] > 0
    for name, ledger in scheduler.ledgers.items():
        assert ledger.displaced == pytest.approx((ledger.writer + ledger.background) * ledger.load), name
        assert ledger.spent == pytest.approx(ledger.foreground + max(0.0, ledger.slowdown, ledger.displaced)), name
    assert [e.step for e in acc.Scalars("trainviz/budget/robustness/credit_seconds")] == [0, 1, 2, 3]
    # what each last run would lack was held back before the last epoch, and spent at it
    for cb in probes:
        held = [e.value for e in acc.Scalars(f"trainviz/budget/{cb.name}/held_seconds")]
        assert len(held) == 4 and held[-1] == 0.0 and min(held) >= 0.0, (cb.name, held)
    assert any(
        value > 0
        for cb in probes
        for value in [e.value for e in acc.Scalars(f"trainviz/budget/{cb.name}/held_seconds")][1:3]
    )


def test_the_overhead_estimate_is_spent_over_training_seconds_and_the_fit_end_says_it(
    tmp_path, tiny_dm, demo_model, make_trainer, caplog
):
    import logging

    s = Scheduler()
    assert s.overhead() == (None, 0.0)
    s.register("a", 0.05)
    s.register("b", 0.03)
    s.start(now=100.0)
    s.cpu_load = lambda: 1.0  # training saturates the cores
    s.charge("a", 2.0, foreground=True)
    s.charge("b", 1.0, foreground=False)  # background CPU seconds
    s.set_writer("b", 0.5)
    s.quiet.extend([1.0, 1.2, 1.1])  # batches beside no trainviz work: median 1.1 s
    s.ledgers["b"].slowdown, s.ledgers["a"].slowdown = 0.375, 0.125  # a 1.6 s batch beside b's and a's work, 3:1
    # 22 s of wall time, 2 of them probes and 0.5 the slowdown; b's 1.5 CPU seconds displaced more than it slowed
    assert s.overhead(now=122.0)[0] == pytest.approx((2.0 + 0.125 + 1.5) / (22.0 - 2.5))
    s.cpu_load = lambda: 0.2  # on a machine with idle cores they displaced 0.3 s: the measured 0.375 s counts
    s.set_writer("b", 0.5)
    share, budget = s.overhead(now=122.0)
    assert share == pytest.approx((2.0 + 0.5) / (22.0 - 2.5)) and budget == pytest.approx(0.08)
    s.stop(now=122.0)
    assert s.overhead(now=200.0)[0] == pytest.approx(share)  # the clock stands still after the fit's end
    assert "trainviz took 12.8% " in s.overhead_line() and "(budget 8.0%)" in s.overhead_line()

    callbacks = trainviz.default_callbacks(budget=0.2, embedding=False, robustness=ROBUST)
    trainer = make_trainer(tmp_path, callbacks, max_epochs=2)
    with caplog.at_level(logging.INFO):
        trainer.fit(demo_model(), tiny_dm)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("trainviz took ")]
    assert len(lines) == 1 and "(budget 20.0%)" in lines[0], lines  # once, whatever the number of callbacks
    taken = float(lines[0].split("trainviz took ")[1].split("%")[0]) / 100
    overhead = json.loads((tmp_path / "trainviz" / "manifest" / "manifest.json").read_text())["budget"]["overhead"]
    # the same estimate: the clock stopped at the fit's end (the line rounds to 0.1%)
    assert overhead["budget"] == pytest.approx(0.2) and 0 < overhead["estimate"] == pytest.approx(taken, abs=6e-4)


def test_a_second_fit_of_the_same_trainer_starts_a_new_budget_clock(tmp_path, tiny_dm, demo_model, make_trainer):
    callbacks = [trainviz.DynamicsCallback(probe_size=8, budget=0.5)]
    trainer = make_trainer(tmp_path, callbacks, max_epochs=1, limit_train_batches=1)
    trainer.fit(demo_model(), tiny_dm)
    first = callbacks[0].scheduler
    assert first is not None and Scheduler.of(trainer) is None  # forgotten when the fit tore down
    trainer.fit_loop.max_epochs = 2
    trainer.fit(demo_model(), tiny_dm)
    second = callbacks[0].scheduler
    assert second is not first and second.ledgers["dynamics"].runs == 1  # its own ledger, not the first fit's


def test_set_up_work_is_charged_to_the_budget(tmp_path, tiny_dm, demo_model, make_trainer, monkeypatch):
    """Drawing the probe set and the other set-up work at setup and fit start is trainviz's cost: booked like a
    probe's seconds on the training thread, on a clock that starts before it."""
    import time

    from trainviz.callbacks.dynamics import DynamicsCallback

    cb = DynamicsCallback(probe_size=8, budget=0.5)
    draw = ProbeCallback._draw

    def slow_draw(self, *args, **kwargs):
        time.sleep(0.4)  # a probe set that is slow to draw (a dataset that decodes on access)
        return draw(self, *args, **kwargs)

    monkeypatch.setattr(ProbeCallback, "_draw", slow_draw)
    runs = []
    ran = cb.budget_runner.ran
    monkeypatch.setattr(cb.budget_runner, "ran", lambda seconds, *rest: (runs.append(seconds), ran(seconds, *rest)))
    trainer = make_trainer(tmp_path, [cb], max_epochs=1, limit_train_batches=1)
    trainer.fit(demo_model(), tiny_dm)
    ledger = cb.scheduler.ledgers["dynamics"]
    assert len(runs) == ledger.runs == 1
    assert ledger.foreground - sum(runs) >= 0.4  # the draw's sleep, booked beside the run
    assert cb.scheduler.started is not None and cb.scheduler.stopped - cb.scheduler.started >= 0.4 + sum(runs)


def test_the_cpu_load_is_the_share_of_the_cores_the_process_keeps_busy():
    import time

    from trainviz.core.budget import CORES

    s = Scheduler()
    assert s.cpu_load() == 1.0  # before a start, and in the first second: every background second counts
    s.start()
    time.sleep(1.2)  # a process that waits keeps no core busy
    assert s.cpu_load() < 0.15, s.cpu_load()
    end = time.perf_counter() + 2.5
    while time.perf_counter() < end:  # one thread spinning: one core of CORES, for 2.5 of the 3.7 s
        pass
    assert 0.4 / CORES < s.cpu_load() < 0.85 / CORES + 0.1, (s.cpu_load(), CORES)
    s.stop()
    kept = s.cpu_load()
    time.sleep(0.2)
    assert s.cpu_load() == kept and s.summary()["overhead"]["cpu_load"] == round(kept, 3)  # kept at the fit's end


def test_bad_budget_is_refused_with_the_valid_range():
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        trainviz.default_callbacks(budget=1.5)
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        trainviz.CAMCallback(budget=0)


class _Overlaps:
    """A stand-in for ``ACTIVITY``: the background work each batch overlapped, in the order the batches end."""

    def __init__(self, *overlaps):
        self.overlaps = list(overlaps)

    def overlap(self, start, end):
        return self.overlaps.pop(0)


def test_the_slowdown_of_busy_batches_is_measured_against_the_quiet_ones_and_shared_by_work(monkeypatch):
    """Hand-computed: quiet batches of 1.0, 1.2 and 1.1 s (median 1.1); a busy batch of 1.6 s beside 0.3 s of b's
    work and 0.1 s of a's adds 0.5 s, 0.375 to b and 0.125 to a; a busy batch before the baseline (1.4 s beside the
    manifest's writes, no ledger) waits for it, then adds 0.3 s to the unowned slowdown."""
    from trainviz.core import budget

    monkeypatch.setattr(budget, "ACTIVITY", _Overlaps({"manifest": 0.2}, {}, {}, {}, {"b": 0.3, "a": 0.1}))
    s = Scheduler()
    s.register("a", 0.05)
    s.register("b", 0.05)
    s.start(now=0.0)
    for seconds in (1.4, 1.0, 1.2, 1.1, 1.6):
        s.batch(10.0, 10.0 + seconds)
    assert s.baseline() == pytest.approx(1.1) and s.busy_batches == 2
    assert s.ledgers["b"].slowdown == pytest.approx(0.375) and s.ledgers["a"].slowdown == pytest.approx(0.125)
    assert s.other_slowdown == pytest.approx(0.3)
    assert s.training_seconds(now=20.0) == pytest.approx(20.0 - 0.8)
    assert s.summary()["overhead"]["slowdown_seconds"] == pytest.approx(0.8)
    assert s.timer == "a"  # the first callback to register times the batches, once each


def test_a_background_thread_that_slows_training_is_charged_what_it_cost(tmp_path, demo_model, make_trainer):
    """A real fit: a callback's writer thread runs 1.5 s of pure Python (it holds the GIL) while the next epoch
    trains. The batches beside it are slower than the quiet ones, and the callback is charged that measured
    slowdown, not a fixed weight of its seconds."""
    import time

    from trainviz.callbacks.base import ProbeCallback
    from trainviz.data import ShapesDataModule

    def spin(seconds: float) -> None:
        end, x = time.perf_counter() + seconds, 0
        while time.perf_counter() < end:
            x += 1

    class Spinner(ProbeCallback):
        name = "spinner"

        def _run(self, trainer, pl_module, epoch):
            if epoch == 0:
                self.sink.background.submit_as(self.name, spin, 1.5)

    callback = Spinner(probe_size=8, budget=0.5, run_at_fit_end=False)
    trainer = make_trainer(tmp_path, [callback], max_epochs=2, limit_train_batches=60, limit_val_batches=0)
    trainer.fit(demo_model(), ShapesDataModule(n_train=240, n_val=48, batch_size=4))
    scheduler = callback.scheduler
    ledger = scheduler.ledgers["spinner"]
    seen = (ledger, scheduler.baseline(), scheduler.busy_batches, len(scheduler.quiet))
    # the spinning thread holds the GIL, so the batches beside it crawl: 2 of them took its 1.5 s in one run
    assert scheduler.busy_batches >= 1 and len(scheduler.quiet) >= 10, seen
    assert 0.1 < ledger.slowdown < 1.6, seen  # at most the 1.5 s it ran beside them
    # and its CPU seconds (the spin's, less its waits for the GIL) times the share of the cores the fit kept busy
    assert 0.5 < ledger.writer < 1.6 and ledger.displaced == pytest.approx(ledger.writer * ledger.load), seen
    assert ledger.spent == pytest.approx(ledger.foreground + max(ledger.slowdown, ledger.displaced))


def test_with_several_processes_the_slowest_rank_counts():
    """At the fit's end the ranks agree on the largest estimate (one all-reduce, here a stand-in's): the line says it
    is the slowest of the processes'."""
    from types import SimpleNamespace

    s = Scheduler()
    s.register("a", 0.1)
    s.start(now=0.0)
    s.charge("a", 1.0, foreground=True)  # this rank: 1 s of 21 -> 5%
    asked = []
    group = SimpleNamespace(world=2, largest=lambda value: asked.append(value) or 0.25)  # rank 1's was 25%
    s.stop(now=21.0, group=group)
    assert asked == [pytest.approx(0.05)]
    assert s.overhead()[0] == 0.25 and "trainviz took 25.0% " in s.overhead_line()
    assert "the slowest of 2 processes" in s.overhead_line() and s.summary()["overhead"]["processes"] == 2
    s.stop(now=30.0, group=group)  # the first call wins: no second all-reduce
    assert len(asked) == 1


@pytest.mark.slow
def test_ddp_ranks_agree_on_the_slowest_estimate(tmp_path, tiny_dm, demo_model, make_trainer):
    """Two ddp_spawn processes with a budget: every rank books its own runs and the manifest's estimate is the
    slowest rank's, said to be so."""
    callbacks = [trainviz.RunManifestCallback(), trainviz.DynamicsCallback(probe_size=8, budget=0.5)]
    trainer = make_trainer(tmp_path, callbacks, max_epochs=2, strategy="ddp_spawn", devices=2)
    trainer.fit(demo_model(), tiny_dm)
    overhead = json.loads((tmp_path / "trainviz" / "manifest" / "manifest.json").read_text())["budget"]["overhead"]
    assert overhead["processes"] == 2 and overhead["estimate"] > 0


def test_the_overlap_of_a_batch_with_background_work_reads_only_the_jobs_that_reach_it():
    import random

    from trainviz.core.threads import Activity

    rng = random.Random(0)
    activity = Activity(keep=4096)
    ends = sorted(rng.uniform(0, 100) for _ in range(4096))
    for end in ends:  # kept in the order they ended; a long job may have started well before
        activity.done.append((rng.choice("abc"), end - rng.uniform(0, 5), end))
    for start in (0.0, 10.0, 50.5, 99.0, 120.0):
        end = start + 0.7
        brute: dict[str, float] = {}
        for owner, a, b in activity.done:
            if min(b, end) - max(a, start) > 0:
                brute[owner] = brute.get(owner, 0.0) + min(b, end) - max(a, start)
        found = activity.overlap(start, end)
        assert found.keys() == brute.keys() and all(found[k] == pytest.approx(brute[k]) for k in brute), start
    with activity.working("d"):  # a running job counts up to now
        import time

        now = time.perf_counter()
        assert "d" in activity.overlap(now - 1.0, now + 1.0)
    assert activity.overlap(200.0, 201.0) == {} and activity.done[-1][0] == "d"
