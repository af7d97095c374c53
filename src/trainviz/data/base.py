"""Shared pieces of trainviz's embedded data: normalisation and the tensor dataset (no Lightning: the DataModule
is in :mod:`trainviz.data.module`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from trainviz.core.normalization import Normalization

__all__ = ["Normalization", "TensorImageDataset"]


class TensorImageDataset(Dataset):
    """Images (already normalised), labels and optional masks held in memory.

    Items are ``(image, label)`` or ``(image, label, mask)``; ``targets`` and ``class_names`` are exposed
    so a :class:`~trainviz.core.probeset.ProbeSet` can stratify without reading every image.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        masks: torch.Tensor | None = None,
        *,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.images, self.labels, self.masks = images, labels, masks
        self.class_names = list(class_names) if class_names is not None else None

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        if self.masks is None:
            return self.images[i], self.labels[i]
        return self.images[i], self.labels[i], self.masks[i]


def __getattr__(name: str):  # `TensorImageDataModule` moved to `trainviz.data.module` (it imports Lightning)
    if name == "TensorImageDataModule":
        from trainviz.data.module import TensorImageDataModule

        return TensorImageDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
