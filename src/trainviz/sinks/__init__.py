"""Sinks: the only code that writes (TensorBoard, artifact files), on a background thread."""

from trainviz.sinks.artifacts import ArtifactStore, atomic_write, epoch_dir
from trainviz.sinks.sink import Sink
from trainviz.sinks.tensorboard import find_summary_writer, open_summary_writer
from trainviz.sinks.writer import BackgroundWriter

__all__ = ["ArtifactStore", "BackgroundWriter", "Sink", "atomic_write", "epoch_dir", "find_summary_writer", "open_summary_writer"]
