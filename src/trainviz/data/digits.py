"""scikit-learn's bundled handwritten digits (1,797 real 8x8 images), upsampled to 32x32.

Example:
    >>> from trainviz.data import DigitsDataModule
    >>> dm = DigitsDataModule(batch_size=32)
    >>> dm.setup()
    >>> x, y = dm.val_set[0]
    >>> x.shape, dm.num_classes
    (torch.Size([1, 32, 32]), 10)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from trainviz.core.checks import check_float
from trainviz.data.base import Normalization, TensorImageDataset
from trainviz.data.module import TensorImageDataModule

__all__ = ["DigitsDataModule", "load_digits_images"]

# Mean and std of the upsampled digits in [0, 1], over all 1,797 images.
DIGITS_NORMALIZATION = Normalization(mean=(0.3053,), std=(0.3236,))


def load_digits_images(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """All digits as pixels in [0, 1], bilinearly upsampled to ``size`` x ``size``.

    Shape:
        images ``(1797, 1, size, size)``, labels ``(1797,)``.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return images, torch.as_tensor(bunch.target, dtype=torch.long)


class DigitsDataModule(TensorImageDataModule):
    """Handwritten digits 0-9 with a stratified 80/20 train/val split (seeded).

    Normalisation: ``(x - 0.3053) / 0.3236`` on pixels in [0, 1]; :meth:`denormalize` undoes it.
    """

    normalization = DIGITS_NORMALIZATION
    class_names = [str(d) for d in range(10)]
    in_channels = 1

    def __init__(
        self, batch_size: int = 64, num_workers: int = 0, seed: int = 0, *, size: int = 32, val_fraction: float = 0.2
    ):
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        if not 0 < check_float("val_fraction", val_fraction) < 1:
            raise ValueError(f"Expected `val_fraction` to be in (0, 1), got {val_fraction!r}.")
        self.size, self.val_fraction = size, val_fraction

    def build(self) -> tuple[TensorImageDataset, TensorImageDataset]:
        from sklearn.model_selection import train_test_split

        images, labels = load_digits_images(self.size)
        idx = np.arange(len(labels))
        train_idx, val_idx = train_test_split(
            idx, test_size=self.val_fraction, stratify=labels.numpy(), random_state=self.seed
        )
        x = self.normalization.normalize(images)
        tr, va = torch.as_tensor(np.sort(train_idx)), torch.as_tensor(np.sort(val_idx))
        return (
            TensorImageDataset(x[tr], labels[tr], class_names=self.class_names),
            TensorImageDataset(x[va], labels[va], class_names=self.class_names),
        )
