"""``shapes``: a deterministic generated RGB dataset with ground-truth masks.

Each image is a crop of one of scikit-learn's bundled sample photographs (darkened) with one filled shape
drawn on it at a random position, size and rotation. Six classes: circle, square, triangle, cross, ring, bar.
The mask marks the shape's pixels, for localisation metrics (pointing game).

Colour is a *partial shortcut*: with probability ``colour_bias`` (0.75 by default) a shape gets its class's
hue, otherwise a random hue. A network can reach good accuracy from colour alone on most images, and the
robustness probes (grayscale, channel order) reveal how much it relies on it.

Example:
    >>> from trainviz.data import ShapesDataModule
    >>> dm = ShapesDataModule(n_train=60, n_val=30)
    >>> dm.setup()
    >>> x, y, mask = dm.val_set[0]
    >>> x.shape, mask.shape, dm.class_names[:3]
    (torch.Size([3, 32, 32]), torch.Size([32, 32]), ['circle', 'square', 'triangle'])
"""

from __future__ import annotations

import colorsys
from functools import lru_cache

import numpy as np
import torch

from trainviz.core.checks import check_float, check_int, check_positive_int
from trainviz.data.base import Normalization, TensorImageDataset
from trainviz.data.module import TensorImageDataModule

__all__ = ["ShapesDataModule", "make_shapes", "SHAPE_CLASSES"]

SHAPE_CLASSES = ["circle", "square", "triangle", "cross", "ring", "bar"]
SHAPES_NORMALIZATION = Normalization(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    """scikit-learn's sample photographs (china, flower), downscaled 4x, as float arrays in [0, 1]."""
    from sklearn.datasets import load_sample_images

    out = []
    for img in load_sample_images().images:
        h, w = (img.shape[0] // 4) * 4, (img.shape[1] // 4) * 4
        small = img[:h, :w].reshape(h // 4, 4, w // 4, 4, 3).mean(axis=(1, 3)) / 255.0
        out.append(small.astype(np.float32))
    return tuple(out)


def _shape_mask(cls: int, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of shape ``cls`` in rotated, centred coordinates ``(u, v)`` with radius ``r``."""
    if cls == 0:  # circle
        return u**2 + v**2 <= r**2
    if cls == 1:  # square
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * r
    if cls == 2:  # equilateral triangle, apex up
        return (v >= -0.5 * r) & (np.sqrt(3) * u + v <= r) & (-np.sqrt(3) * u + v <= r)
    if cls == 3:  # cross
        return ((np.abs(u) <= 0.3 * r) & (np.abs(v) <= r)) | ((np.abs(v) <= 0.3 * r) & (np.abs(u) <= r))
    if cls == 4:  # ring
        d2 = u**2 + v**2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    if cls == 5:  # bar (elongated ellipse)
        return (u / r) ** 2 + (v / (0.35 * r)) ** 2 <= 1
    raise ValueError(f"Unknown shape class {cls}.")


def make_shapes(
    n: int, size: int = 32, seed: int = 0, colour_bias: float = 0.75
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generate ``n`` images (pixels in [0, 1]), labels (balanced, cycling classes) and masks.

    Deterministic: the same ``(n, size, seed, colour_bias)`` gives the same tensors.

    Shape:
        images ``(n, 3, size, size)``, labels ``(n,)``, masks ``(n, size, size)`` bool.
    """
    check_int("size", size, minimum=16)
    check_float("colour_bias", colour_bias, 0, 1)
    rng = np.random.default_rng(seed)
    photos = _photos()
    k = len(SHAPE_CLASSES)
    labels = np.arange(n) % k
    rng.shuffle(labels)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    images = np.empty((n, size, size, 3), np.float32)
    masks = np.empty((n, size, size), bool)
    for i in range(n):
        photo = photos[rng.integers(len(photos))]
        top = rng.integers(photo.shape[0] - size)
        left = rng.integers(photo.shape[1] - size)
        background = photo[top : top + size, left : left + size] * rng.uniform(0.35, 0.7)
        r = rng.uniform(0.22, 0.36) * size
        cx, cy = rng.uniform(r, size - r, size=2)
        theta = rng.uniform(0, 2 * np.pi)
        du, dv = xx - cx, yy - cy
        u = np.cos(theta) * du + np.sin(theta) * dv
        v = -np.sin(theta) * du + np.cos(theta) * dv
        mask = _shape_mask(int(labels[i]), u, v, r)
        hue = labels[i] / k if rng.random() < colour_bias else rng.random()
        colour = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.75, 1.0)), np.float32)
        shade = colour * rng.uniform(0.85, 1.0, size=(size, size, 1)).astype(np.float32)
        images[i] = np.where(mask[..., None], shade, background)
        masks[i] = mask
    return (
        torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        torch.from_numpy(labels.astype(np.int64)),
        torch.from_numpy(masks),
    )


class ShapesDataModule(TensorImageDataModule):
    """Generated shapes on photo backgrounds, with masks; items are ``(image, label, mask)``.

    Normalisation: ``(x - 0.5) / 0.25`` per channel on pixels in [0, 1]; :meth:`denormalize` undoes it.
    """

    normalization = SHAPES_NORMALIZATION
    class_names = list(SHAPE_CLASSES)
    in_channels = 3

    def __init__(
        self,
        n_train: int = 2400,
        n_val: int = 600,
        size: int = 32,
        *,
        colour_bias: float = 0.75,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        check_positive_int("n_train", n_train)
        check_positive_int("n_val", n_val)
        self.n_train, self.n_val, self.size, self.colour_bias = n_train, n_val, size, colour_bias

    def build(self) -> tuple[TensorImageDataset, TensorImageDataset]:
        x, y, m = make_shapes(self.n_train + self.n_val, self.size, self.seed, self.colour_bias)
        x = self.normalization.normalize(x)
        t = self.n_train
        return (
            TensorImageDataset(x[:t], y[:t], m[:t], class_names=self.class_names),
            TensorImageDataset(x[t:], y[t:], m[t:], class_names=self.class_names),
        )
