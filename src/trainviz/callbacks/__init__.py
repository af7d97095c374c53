"""trainviz's Lightning callbacks, imported on first use; the list of them is :mod:`trainviz.callbacks.registry`."""

from typing import TYPE_CHECKING

from trainviz._lazy import lazy_exports
from trainviz.callbacks.registry import CALLBACKS

if TYPE_CHECKING:  # pragma: no cover
    from trainviz.callbacks.base import ProbeCallback as ProbeCallback
    from trainviz.callbacks.registry import *  # noqa: F403  (every callback class)

_EXPORTS = {"ProbeCallback": "trainviz.callbacks.base", **CALLBACKS}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
