"""TensorBoard writing: the trainer's TensorBoardLogger when it has one (with other loggers or none, trainviz opens no
private TensorBoard writer: see :mod:`trainviz.sinks.loggers`)."""

from __future__ import annotations

import os
import shlex
from typing import Any

__all__ = ["add_png", "find_summary_writer", "open_summary_writer", "tensorboard_command"]


def add_png(writer: Any, tag: str, png: bytes, image: Any, step: int) -> None:
    """Log ``image`` (uint8 ``(H, W, 3)``) at ``tag`` from its ``png`` bytes, already encoded (the artifact's), so it
    is encoded once. PyTorch's ``SummaryWriter`` (what Lightning's TensorBoardLogger opens when ``tensorboard`` is
    installed) takes the image summary through its file writer, as its ``add_image`` does after encoding; any other
    writer (tensorboardX) gets ``add_image``, which encodes again."""
    file_writer = getattr(writer, "_get_file_writer", None)
    try:
        from tensorboard.compat.proto.summary_pb2 import Summary
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        file_writer = None
    if file_writer is None or not type(writer).__module__.startswith("torch.utils.tensorboard"):
        writer.add_image(tag, image, step, dataformats="HWC")
        return
    height, width = image.shape[:2]
    picture = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=png)
    file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=picture)]), step)


def find_summary_writer(trainer: Any) -> Any | None:
    """The ``SummaryWriter`` of the trainer's first TensorBoardLogger (of either Lightning namespace), or ``None``."""
    from trainviz.core.namespace import is_instance

    for logger in getattr(trainer, "loggers", []) or []:
        if is_instance(logger, "loggers", "TensorBoardLogger"):
            return logger.experiment
    return None


def open_summary_writer(log_dir: str | os.PathLike) -> Any:
    """A new ``SummaryWriter`` on ``log_dir`` (used when the trainer has no TensorBoardLogger)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir))


def tensorboard_command(log_dir: str | os.PathLike, epochs: int | None = None) -> str:
    """The command that shows every logged epoch of ``log_dir`` in TensorBoard.

    TensorBoard keeps 10 images per tag by default, so a longer run shows 10 sampled epochs of each evolving
    picture; ``--samples_per_plugin images=N`` keeps N (and ``images=0`` keeps none at all in TensorBoard 2.21).
    N is the number of epochs, at least 10 (the default it replaces).

    Example:
        >>> tensorboard_command("runs/demo", 100)
        'tensorboard --logdir runs/demo --samples_per_plugin images=100'
    """
    keep = max(int(epochs or 0), 10)
    return f"tensorboard --logdir {shlex.quote(str(log_dir))} --samples_per_plugin images={keep}"
