"""HTML reports rebuilt from a run's artifacts alone (``trainviz report RUN_DIR``), and the flat
``summary.json`` metrics used for CI gates and as a reference run. Generic: every capability declares its section
(and its comparison). Imports neither torch nor Lightning.

Modules: :mod:`~trainviz.report.run` (finding and reading a run), :mod:`~trainviz.report.page` (escaping and page
assembly, once), :mod:`~trainviz.report.sections` (the sections), :mod:`~trainviz.report.logged` (the curves as
logged), :mod:`~trainviz.report.builder` (a run's page), :mod:`~trainviz.report.compare` (two runs),
:mod:`~trainviz.report.summary` (the gates), :mod:`~trainviz.report.template` (the HTML skeleton)."""

from trainviz.report.builder import build_report
from trainviz.report.compare import build_comparison
from trainviz.report.run import ProbeSetMismatchError, default_report_path, find_run
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
    "UnknownMetricError",
    "accuracy_intervals",
    "build_comparison",
    "build_report",
    "check_bounds",
    "default_report_path",
    "eps_label",
    "find_run",
    "higher_is_better",
    "parse_bounds",
    "proportion_interval",
    "report_summary",
    "summary_from_record",
]
