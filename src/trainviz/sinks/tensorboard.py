"""TensorBoard writing: the trainer's TensorBoardLogger when it has one (with other loggers or none, trainviz opens no
private TensorBoard writer: see :mod:`trainviz.sinks.loggers`)."""

from __future__ import annotations

import os
import shlex
from typing import Any

__all__ = ["find_summary_writer", "open_summary_writer", "tensorboard_command"]


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
