"""Sinks: the only code that writes (TensorBoard, artifact files), on a background thread.

Names are imported lazily, so :func:`atomic_write` is usable without importing torch (the offline report).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainviz._lazy import lazy_exports

_EXPORTS = {
    "ArtifactStore": "trainviz.sinks.artifacts",
    "atomic_write": "trainviz.sinks.artifacts",
    "epoch_dir": "trainviz.sinks.artifacts",
    "BackgroundWriter": "trainviz.sinks.writer",
    "Sink": "trainviz.sinks.sink",
    "find_summary_writer": "trainviz.sinks.tensorboard",
    "open_summary_writer": "trainviz.sinks.tensorboard",
    "tensorboard_command": "trainviz.sinks.tensorboard",
    "ProjectorWriter": "trainviz.sinks.projector",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from trainviz.sinks.artifacts import ArtifactStore, atomic_write, epoch_dir
    from trainviz.sinks.projector import ProjectorWriter
    from trainviz.sinks.sink import Sink
    from trainviz.sinks.tensorboard import find_summary_writer, open_summary_writer, tensorboard_command
    from trainviz.sinks.writer import BackgroundWriter


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
