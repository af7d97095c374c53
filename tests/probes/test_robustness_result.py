"""The robustness result type (trainviz.probes.robustness_result): records written before PGD read back."""

from __future__ import annotations

import math

from trainviz.probes.robustness_result import Pgd, RobustnessResult


def test_an_older_record_without_pgd_reads_back():
    result = RobustnessResult.from_record({"epoch": 0, "clean": {"accuracy": 0.5}, "table": [], "corruptions": {}})
    assert result.pgd is None and "pgd" not in result.record()
    pgd = Pgd.from_record({"epsilons": [0.1], "accuracy": [None], "steps": 5, "step_factor": 2.5, "ran": True})
    assert pgd.measured and math.isnan(pgd.accuracy[0]) and pgd.step_size == [0.05]


def test_the_heatmap_says_when_the_budget_ran_part_of_the_suite():
    """A budgeted run's heatmap holds the rows that ran; its corner says how many of the active rows those are,
    so a short table is not read as the whole suite (the record's ``schedule`` and ``skipped`` say which)."""

    table = [{"corruption": "grayscale", "severity": 1, "accuracy": 0.3}, {"corruption": "fog", "severity": 1}]
    schedule = {"rows": 2, "of": 82, "corruptions": 2, "of_corruptions": 22, "budget": 0.01}
    part = RobustnessResult.from_record({"epoch": 0, "clean": {"accuracy": 0.5}, "table": table, "schedule": schedule})
    whole = RobustnessResult.from_record(
        {"epoch": 0, "clean": {"accuracy": 0.5}, "table": table, "schedule": {**schedule, "of": 2}}
    )
    unbudgeted = RobustnessResult.from_record({"epoch": 0, "clean": {"accuracy": 0.5}, "table": table})
    corner = (slice(0, 16), slice(0, 50))  # above the row labels, left of the column labels
    inked = [(r.render()["heatmap"][corner] < 200).any() for r in (part, whole, unbudgeted)]
    assert inked == [True, False, False]
    assert part.render()["heatmap"].shape == whole.render()["heatmap"].shape  # a note, not a new layout
