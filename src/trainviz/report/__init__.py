"""HTML robustness reports rebuilt from a run's artifacts alone (``trainviz report RUN_DIR``), and the flat
``summary.json`` metrics used for CI gates and as a reference run, read through
:class:`~trainviz.probes.robustness_result.RobustnessResult`. Imports neither torch nor Lightning."""

from trainviz.report.builder import RunArtifacts, build_report, default_report_path, find_run, load_run
from trainviz.report.compare import ProbeSetMismatchError, build_comparison
from trainviz.report.summary import (
    HIGHER_IS_BETTER,
    BoundDirectionError,
    UnknownMetricError,
    accuracy_intervals,
    check_bounds,
    eps_label,
    higher_is_better,
    parse_bounds,
    proportion_interval,
    report_summary,
    summary_from_record,
)

__all__ = [
    "HIGHER_IS_BETTER",
    "BoundDirectionError",
    "ProbeSetMismatchError",
    "RunArtifacts",
    "UnknownMetricError",
    "accuracy_intervals",
    "build_comparison",
    "build_report",
    "check_bounds",
    "default_report_path",
    "eps_label",
    "find_run",
    "higher_is_better",
    "load_run",
    "parse_bounds",
    "proportion_interval",
    "report_summary",
    "summary_from_record",
]
