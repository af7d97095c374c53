"""The maximum-activation (MaxOut) metrics' one name table (:class:`~trainviz.core.names.NameTable`): each
scalar of :meth:`MaxActResult.scalars <trainviz.probes.maxact.MaxActResult.scalars>` (logged as
``trainviz/maxact/<name>``) with its direction and description; the report's curves take their descriptions
from here. Torch-free.

A target is a class (``classes/<k>``), a channel (``<layer>/channel_<c>``) or a unit (``<layer>/unit_<i>_<j>...``),
as :func:`~trainviz.ops.maxact.target_key` names it.

Example:
    >>> NAMES.metric("net.0/channel_3/moved").name, NAMES.metric("classes/2/activation").higher_is_better
    ('{layer}/channel_{channel}/moved', True)
"""

from __future__ import annotations

from trainviz.core.names import Metric, NameTable

__all__ = ["NAMES", "any_target"]

_TARGETS = {
    "classes/{index}": "class logit",
    "{layer}/channel_{channel}": "channel (the mean of its map)",
    "{layer}/unit_{index}": "unit",
}
_REACHED = "activation a {} reaches on its optimised image"
_MOVED = (
    "correlation of the optimised image of a {} with its image at the previous run: 1, the preferred input did "
    "not change"
)
_SETTLED = "a preferred input that stops changing has settled, which is not a better model"


def _metric(target: str, metric: str, what: str) -> Metric:
    if metric == "activation":
        return Metric(f"{target}/activation", True, _REACHED.format(what), title="Activation reached")
    return Metric(f"{target}/moved", None, _MOVED.format(what), no_direction=_SETTLED, title="Moved")


NAMES = NameTable([_metric(target, m, what) for target, what in _TARGETS.items() for m in ("activation", "moved")])
"""The MaxOut metrics (see the module docstring)."""


def any_target(metric: str) -> Metric:
    """``metric`` (``"activation"`` or ``"moved"``) worded for any kind of target: what a curve of a layer's
    channels and units together shows (not a name of the table).

    Example:
        >>> any_target("activation").text
        'Activation reached: activation a target reaches on its optimised image (higher is better).'
    """
    return _metric("{target}", metric, "target")
