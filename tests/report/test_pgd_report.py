"""PGD in the offline report and its gates, from a hand-written record (no torch): the accuracies are counts of
the 20 probe images, so their intervals and gates are known; a record whose PGD did not run has no PGD metric."""

from __future__ import annotations

import json

import handmade
import pytest

from trainviz.cli import main

PGD = {2 / 255: 3, 4 / 255: 0}  # correct under PGD: 3 / 20 and none


def pgd_record(ran: bool = True, with_counts: bool = True) -> dict:
    rec = handmade.record(with_counts=with_counts)
    rec["pgd"] = {
        "epsilons": list(PGD),
        "accuracy": [k / handmade.N for k in PGD.values()] if ran else [],
        "steps": 10,
        "step_factor": 2.5,
        "ran": ran,
        "every": 4,
        "seed": 0,
    }
    return rec


def test_pgd_gates_intervals_and_figure(tmp_path, capsys):
    run = handmade.write_run(tmp_path, pgd_record())
    assert main(["report", str(run), "--fail-under", "pgd_accuracy@0.0078=0.15"]) == 0
    assert main(["report", str(run), "--fail-under", "pgd_accuracy@0.0078=0.16"]) == 1
    assert "pgd_accuracy@0.0078 = 0.15 is below 0.16" in capsys.readouterr().err
    summary = json.loads((run / "trainviz" / "report" / "summary.json").read_text())
    assert summary["pgd_accuracy@0.0157"] == 0.0 and summary["intervals"]["pgd_accuracy@0.0157"][0] == 0.0
    # scipy.stats.binomtest(3, 20).proportion_ci(method="wilson"): [0.0524, 0.3604]
    assert summary["intervals"]["pgd_accuracy@0.0078"] == pytest.approx([0.05236, 0.36040], abs=1e-4)
    page = next((run / "trainviz" / "report").glob("*.html")).read_text()
    assert "PGD accuracy (10 steps)" in page and "run every 4 run(s)" in page


@pytest.mark.parametrize("with_counts", [True, False])
def test_a_run_without_pgd_this_time_has_no_pgd_metric(tmp_path, capsys, with_counts):
    run = handmade.write_run(tmp_path, pgd_record(ran=False, with_counts=with_counts))
    assert main(["report", str(run), "--fail-under", "pgd_accuracy@0.0078=0.1"]) == 2
    assert "'pgd_accuracy@0.0078' is not in this run's summary" in capsys.readouterr().err
    page = next((run / "trainviz" / "report").glob("*.html")).read_text()
    assert "PGD accuracy (10 steps)" not in page
