"""The one list of trainviz's callbacks: each class by name and module, in the order
:func:`trainviz.default_callbacks` returns them. Reading it imports nothing heavy (``trainviz report`` starts
without torch); :func:`callback_classes` imports the classes.

Each class declares the rest itself (class attributes, see :class:`~trainviz.callbacks.base.ProbeCallback`): its
``name`` (tags, artifact folder and ``default_callbacks`` keyword), ``budget_share``, ``opt_in``, ``needs_pixels``
and ``pixel_use``. ``default_callbacks``, ``BUDGET_SHARES``, ``trainviz.__init__``'s exports, the demo's suite
(:func:`trainviz.cli.demo_callbacks`) and the suite-wide tests read them from here.

Adding a callback: its class in ``callbacks/<name>.py`` (and its computation in ``probes/<name>.py``), one entry and
one typing import below, a preset ``callbacks/<name>.yaml``, its tests, and its line in README.md.

Example:
    >>> from trainviz.callbacks.registry import CALLBACKS, callback_classes
    >>> list(CALLBACKS)[:2]
    ['RunManifestCallback', 'DynamicsCallback']
    >>> [cls.name for cls in callback_classes() if getattr(cls, "opt_in", False)]
    ['decoder_maps', 'saliency', 'maxact']
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the classes, for type checkers (re-exported: `trainviz` and `trainviz.callbacks` export them)
    from trainviz.callbacks.cam import CAMCallback as CAMCallback
    from trainviz.callbacks.decoder_maps import DecoderMapCallback as DecoderMapCallback
    from trainviz.callbacks.dynamics import DynamicsCallback as DynamicsCallback
    from trainviz.callbacks.embedding import EmbeddingCallback as EmbeddingCallback
    from trainviz.callbacks.features import FeatureMapCallback as FeatureMapCallback
    from trainviz.callbacks.manifest import RunManifestCallback as RunManifestCallback
    from trainviz.callbacks.maxact import MaxActivationCallback as MaxActivationCallback
    from trainviz.callbacks.robustness import RobustnessCallback as RobustnessCallback
    from trainviz.callbacks.saliency import SaliencyCallback as SaliencyCallback

CALLBACKS: dict[str, str] = {
    "RunManifestCallback": "trainviz.callbacks.manifest",
    "DynamicsCallback": "trainviz.callbacks.dynamics",
    "CAMCallback": "trainviz.callbacks.cam",
    "FeatureMapCallback": "trainviz.callbacks.features",
    "RobustnessCallback": "trainviz.callbacks.robustness",
    "EmbeddingCallback": "trainviz.callbacks.embedding",
    "DecoderMapCallback": "trainviz.callbacks.decoder_maps",
    "SaliencyCallback": "trainviz.callbacks.saliency",
    "MaxActivationCallback": "trainviz.callbacks.maxact",
}
"""Class name -> module of every trainviz callback, in ``default_callbacks`` order."""


def callback_classes() -> list[Any]:
    """The classes of :data:`CALLBACKS`, imported, in order."""
    return [getattr(importlib.import_module(module), name) for name, module in CALLBACKS.items()]
