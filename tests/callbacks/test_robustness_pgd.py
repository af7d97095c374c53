"""PGD beside FGSM in RobustnessCallback: its cadence (every ``pgd_every``-th run, the first and the last), its
accuracy recomputed independently with :func:`trainviz.ops.adversarial.pgd_accuracy` on the whole probe set, the
record, summary, scalars, gates and report, the budget plan, and the argument checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl

from trainviz.callbacks.robustness import RobustnessCallback
from trainviz.cli import main
from trainviz.core.guard import probe_guard
from trainviz.ops.adversarial import pgd_accuracy
from trainviz.probes.robustness import pgd_rows, plan_parts
from trainviz.probes.robustness_result import RobustnessResult

EPS = [0.0, 4 / 255, 16 / 255]


@pytest.fixture(scope="module")
def pgd_fit(tmp_path_factory, demo_model, make_trainer):
    from trainviz.data import ShapesDataModule

    root = tmp_path_factory.mktemp("pgd")
    cb = RobustnessCallback(
        corruptions=["grayscale"],
        epsilons=EPS,
        flip_max_steps=0,
        trajectory_images=0,
        pgd_steps=3,
        pgd_every=3,
        probe_size=16,
        batch_size=5,  # PGD in batches of 5; the recomputation below takes all 16 at once
        n_examples=2,
        strict=True,
    )
    pl.seed_everything(0, verbose=False)
    model = demo_model()
    trainer = make_trainer(root, [cb], max_epochs=5)
    trainer.fit(model, ShapesDataModule(n_train=64, n_val=32, batch_size=32))
    log = Path(trainer.log_dir) / "trainviz" / "robustness"
    records = [json.loads(line) for line in (log / "metrics.jsonl").read_text().splitlines()]
    return {"cb": cb, "model": model, "records": records, "root": Path(trainer.log_dir), "log": log}


def test_pgd_runs_at_the_first_every_third_and_the_last_run(pgd_fit):
    records = pgd_fit["records"]
    assert [r["epoch"] for r in records] == [0, 1, 2, 3, 4]
    assert [r["pgd"]["ran"] for r in records] == [True, False, False, True, True]  # epoch 4: the last
    for r in records:
        pgd = r["pgd"]
        assert (pgd["steps"], pgd["step_factor"], pgd["every"], pgd["epsilons"]) == (3, 2.5, 3, EPS)
        assert pgd["step_size"] == pytest.approx([2.5 * e / 3 for e in EPS])
        assert len(pgd["accuracy"]) == (len(EPS) if pgd["ran"] else 0)
        summary = RobustnessResult.from_record(r).summary()
        assert ("pgd_accuracy@0.0157" in summary) == pgd["ran"]
        assert "fgsm_accuracy@0.0157" in summary


def test_pgd_accuracy_matches_an_independent_recomputation(pgd_fit):
    cb, model, last = pgd_fit["cb"], pgd_fit["model"], pgd_fit["records"][-1]
    probe = cb.probe
    with probe_guard(model):
        expected = pgd_accuracy(
            model,
            cb.norm.denormalize(probe.images),
            probe.labels,
            EPS,
            steps=3,
            ids=probe.ids,
            seed=cb.probe_seed,
            preprocess=cb.norm.normalize,
        )
    n = len(probe)
    assert [round(a * n) for a in last["pgd"]["accuracy"]] == [round(float(a) * n) for a in expected]
    # eps 0 is the clean accuracy (up to the denormalise/normalise round trip); PGD is at least as strong as FGSM
    # here, and a larger eps does not help the model
    acc, fgsm = last["pgd"]["accuracy"], last["fgsm"]["accuracy"]
    assert acc[0] == pytest.approx(last["clean"]["accuracy"], abs=1.5 / n)
    assert acc[2] <= acc[1] + 1e-9 and acc[2] <= fgsm[2] + 1e-9


def test_pgd_scalars_arrays_and_state(pgd_fit):
    result = RobustnessResult.from_record(pgd_fit["records"][-1])
    assert result.pgd is not None and result.pgd.measured
    assert {"pgd/accuracy@0.0000", "pgd/accuracy@0.0157", "pgd/accuracy@0.0627"} <= set(result.scalars())
    skipped = RobustnessResult.from_record(pgd_fit["records"][1])
    assert not any(k.startswith("pgd/") for k in skipped.scalars()) and not skipped.pgd.measured
    assert RobustnessResult.from_record(pgd_fit["records"][-1]).record()["pgd"] == pgd_fit["records"][-1]["pgd"]
    with np.load(pgd_fit["log"] / "epoch_0004" / "adversarial.npz") as npz:
        assert npz["pgd_accuracy"].tolist() == pgd_fit["records"][-1]["pgd"]["accuracy"]
    cb = pgd_fit["cb"]
    assert cb._extra_state()["since_pgd"] == 0
    fresh = RobustnessCallback(corruptions=["grayscale"], pgd_every=3)
    fresh._load_extra_state({"rotation": 0, "since_pgd": 1})
    assert fresh.history.since_pgd == 1


def test_pgd_gate_and_report(pgd_fit, capsys):
    run = pgd_fit["root"]
    value = pgd_fit["records"][-1]["pgd"]["accuracy"][1]
    assert main(["report", str(run), "--fail-under", f"pgd_accuracy@0.0157={value}"]) == 0
    assert "1 bound(s) hold" in capsys.readouterr().out
    assert main(["report", str(run), "--fail-under", f"pgd_accuracy@0.0157={value + 0.01}"]) == 1
    assert f"pgd_accuracy@0.0157 = {value:.6g} is below" in capsys.readouterr().err
    assert main(["report", str(run), "--fail-over", "pgd_accuracy@0.0157=0.5"]) == 2  # higher is better
    assert "use --fail-under pgd_accuracy@0.0157" in capsys.readouterr().err
    summary = json.loads((run / "trainviz" / "report" / "summary.json").read_text())
    n = pgd_fit["records"][-1]["n"]
    assert "pgd_accuracy@0.0157" in summary["intervals"] and summary["pgd_accuracy@0.0157"] == value
    assert round(value * n) == pytest.approx(value * n)
    page = next((run / "trainviz" / "report").glob("*.html")).read_text()
    assert "PGD accuracy (3 steps)" in page and "PGD accuracy, eps 0.0157" in page
    assert "L-inf PGD (Madry et al.): 3 signed-gradient steps of 2.5 eps / 3" in page


def test_the_budget_plans_pgd_after_fgsm_and_a_skipped_pgd_stays_due():
    active = [("grayscale", 1), ("fog", 1)]
    base = dict(epsilons=2, flip_max_steps=0, cam_shift=False)
    assert pgd_rows(2, 10) == 62.0 and pgd_rows(2, 0) == 0.0
    # clean + grayscale 2 s, FGSM 3 + 2 = 5 s, PGD 62 s, fog 1 s
    plan = plan_parts(active, {"row": 1.0}, 2 + 5 + 62 + 1, 0, **base, pgd_rows=62.0)
    assert plan.pgd and plan.fgsm and ("fog", 1) in plan.rows
    plan = plan_parts(active, {"row": 1.0}, 2 + 5 + 61, 0, **base, pgd_rows=62.0)
    assert not plan.pgd and plan.fgsm and plan.skipped == ["pgd (62.00 s)"] and ("fog", 1) in plan.rows
    assert plan_parts(active, {"row": 1.0, "pgd": 3.0}, 2 + 5 + 3, 0, **base, pgd_rows=62.0).pgd  # measured
    assert not plan_parts(active, {"row": 1.0}, 1000, 0, **base).pgd  # not due
    cb = RobustnessCallback(corruptions=["grayscale"], pgd_every=3)
    due = []
    for ran in [True, False, False, False, True, False]:  # none of these runs is essential (first, last, fit end)
        due.append(cb.history.pgd_due(essential=False))
        cb.history.count_pgd(ran and due[-1])
    # due at 0, 3 (skipped by the budget: still due at 4), then 2 runs without it
    assert due == [True, False, False, True, True, False]
    assert not RobustnessCallback(corruptions=["grayscale"], pgd_steps=0).history.pgd_due(essential=False)
    assert not RobustnessCallback(corruptions=["grayscale"], epsilons=[]).history.pgd_due(essential=False)
    assert cb.history.pgd_due(essential=True)  # the last epoch (an essential run)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(pgd_steps=-1), "`pgd_steps` to be an int >= 0"),
        (dict(pgd_steps=2.5), "`pgd_steps` to be an int >= 0"),
        (dict(pgd_every=0), "`pgd_every` to be a positive int"),
        (dict(pgd_every=True), "`pgd_every` to be a positive int"),
    ],
)
def test_bad_pgd_arguments_raise_at_init(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RobustnessCallback(corruptions=["grayscale"], **kwargs)
