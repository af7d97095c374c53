"""TensorBoard writing: the trainer's TensorBoardLogger when it has one (with other loggers or none, trainviz opens no
private TensorBoard writer: see :mod:`trainviz.sinks.loggers`)."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["find_summary_writer", "open_summary_writer"]


def find_summary_writer(trainer: Any) -> Any | None:
    """The ``SummaryWriter`` of the trainer's first TensorBoardLogger, or ``None``."""
    from pytorch_lightning.loggers import TensorBoardLogger

    for logger in getattr(trainer, "loggers", []) or []:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def open_summary_writer(log_dir: str | os.PathLike) -> Any:
    """A new ``SummaryWriter`` on ``log_dir`` (used when the trainer has no TensorBoardLogger)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir))
