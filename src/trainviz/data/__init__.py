"""Embedded data: scikit-learn's digits and generated shapes (no downloads).

Names are imported lazily, so ``trainviz.data.base.Normalization`` (used by ops/ and probes/) loads no Lightning;
the DataModules do, in the program's own namespace (:mod:`trainviz.core.namespace`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainviz._lazy import lazy_exports

_EXPORTS = {
    "Normalization": "trainviz.data.base",
    "TensorImageDataset": "trainviz.data.base",
    "TensorImageDataModule": "trainviz.data.module",
    "DigitsDataModule": "trainviz.data.digits",
    "load_digits_images": "trainviz.data.digits",
    "SHAPE_CLASSES": "trainviz.data.shapes",
    "ShapesDataModule": "trainviz.data.shapes",
    "make_shapes": "trainviz.data.shapes",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from trainviz.data.base import Normalization, TensorImageDataset
    from trainviz.data.digits import DigitsDataModule, load_digits_images
    from trainviz.data.module import TensorImageDataModule
    from trainviz.data.shapes import SHAPE_CLASSES, ShapesDataModule, make_shapes

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
