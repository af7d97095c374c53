"""HTML robustness reports rebuilt from a run's artifacts alone (``trainviz report RUN_DIR``), and the flat
``summary.json`` metrics used for CI gates and as a reference run. Imports neither torch nor Lightning."""

from trainviz.report.builder import RunArtifacts, build_report, default_report_path, find_run, load_run, reliability_bins
from trainviz.report.summary import UnknownMetricError, check_bounds, eps_label, parse_bounds, summary_from_record

__all__ = [
    "RunArtifacts",
    "UnknownMetricError",
    "build_report",
    "check_bounds",
    "default_report_path",
    "eps_label",
    "find_run",
    "load_run",
    "parse_bounds",
    "reliability_bins",
    "summary_from_record",
]
