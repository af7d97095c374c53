"""The training-dynamics metrics' one name table (:class:`~trainviz.core.names.NameTable`): each scalar of
:meth:`DynamicsResult.scalars <trainviz.probes.dynamics_result.DynamicsResult.scalars>` (logged as
``trainviz/dynamics/<name>``) with its direction and description; the report's curves take their titles and
descriptions from here. Torch-free.

Example:
    >>> NAMES.metric("per_class_accuracy/T-shirt/top").name, NAMES.metric("accuracy").higher_is_better
    ('per_class_accuracy/{class*}', True)
"""

from __future__ import annotations

from trainviz.core.names import Metric, NameTable

__all__ = ["NAMES"]

NAMES = NameTable(
    [
        Metric("accuracy", True, "accuracy of the fixed probe set", title="Probe accuracy"),
        Metric(
            "per_class_accuracy/{class*}",
            True,
            "accuracy of each class's probe images, undefined for a class without any",
            title="Per-class accuracy",
        ),
    ]
)
"""The training-dynamics metrics (see the module docstring)."""
