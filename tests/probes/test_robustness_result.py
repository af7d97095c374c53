"""The robustness result type (trainviz.probes.robustness_result): records written before PGD read back."""

from __future__ import annotations

import math

from trainviz.probes.robustness_result import Pgd, RobustnessResult


def test_an_older_record_without_pgd_reads_back():
    result = RobustnessResult.from_record({"epoch": 0, "clean": {"accuracy": 0.5}, "table": [], "corruptions": {}})
    assert result.pgd is None and "pgd" not in result.record()
    pgd = Pgd.from_record({"epsilons": [0.1], "accuracy": [None], "steps": 5, "step_factor": 2.5, "ran": True})
    assert pgd.measured and math.isnan(pgd.accuracy[0]) and pgd.step_size == [0.05]
