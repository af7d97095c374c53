"""The filter-and-activation metrics' one name table (:class:`~trainviz.core.names.NameTable`): each scalar of
:meth:`FeatureResult.scalars <trainviz.probes.features.FeatureResult.scalars>` (logged as
``trainviz/features/<name>``) with its direction and description; the report's curves take their titles and
descriptions from here. Torch-free.

Example:
    >>> NAMES.metric("net.3/dead_fraction").name, NAMES.metric("net.3/dead_fraction").higher_is_better
    ('{layer}/dead_fraction', False)
"""

from __future__ import annotations

from trainviz.core.names import Metric, NameTable

__all__ = ["NAMES"]

_SHAPE = "it describes the activations' distribution, which has no better value"

NAMES = NameTable(
    [
        Metric(
            "{layer}/dead_fraction",
            False,
            "fraction of units never > 0 on the probe set",
            title="Dead units",
        ),
        Metric(
            "{layer}/mean",
            None,
            "mean of every value of the layer's output on the probe set",
            no_direction=_SHAPE,
            title="Mean activation",
        ),
        Metric(
            "{layer}/std",
            None,
            "standard deviation of every value of the layer's output",
            no_direction=_SHAPE,
            title="Activation spread",
        ),
        Metric(
            "{layer}/sparsity",
            None,
            "fraction of the output's values <= 0",
            no_direction=_SHAPE,
            title="Sparsity",
        ),
    ]
)
"""The feature metrics (see the module docstring)."""
