"""``TensorImageDataModule``: a LightningDataModule over in-memory tensors, the base of trainviz's embedded data.

It derives from the Lightning namespace the program uses (``lightning.pytorch`` or ``pytorch_lightning``;
``TRAINVIZ_LIGHTNING`` chooses: see :mod:`trainviz.core.namespace`), so it works in ``L.Trainer`` and in
``pl.Trainer`` alike.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from trainviz.core.checks import check_positive_int
from trainviz.core.namespace import lightning
from trainviz.data.base import Normalization, TensorImageDataset

__all__ = ["TensorImageDataModule"]

pl = lightning()  # the program's Lightning namespace


class TensorImageDataModule(pl.LightningDataModule):
    """A LightningDataModule over in-memory train/val :class:`TensorImageDataset` splits.

    Subclasses implement :meth:`build` returning ``(train_dataset, val_dataset)`` and set
    ``normalization``, ``class_names`` and ``in_channels``.
    """

    normalization: Normalization
    class_names: list[str]
    in_channels: int

    def __init__(self, batch_size: int = 64, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        check_positive_int("batch_size", batch_size)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.train_set: TensorImageDataset | None = None
        self.val_set: TensorImageDataset | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Model input -> displayable pixels in [0, 1]."""
        return self.normalization.denormalize(x)

    def build(self) -> tuple[TensorImageDataset, TensorImageDataset]:  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set = self.build()

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.train_set, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers, generator=generator
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)
