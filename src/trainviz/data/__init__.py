"""Embedded data: scikit-learn's digits and generated shapes (no downloads)."""

from trainviz.data.base import Normalization, TensorImageDataset
from trainviz.data.digits import DigitsDataModule, load_digits_images
from trainviz.data.module import TensorImageDataModule
from trainviz.data.shapes import SHAPE_CLASSES, ShapesDataModule, make_shapes

__all__ = [
    "DigitsDataModule",
    "Normalization",
    "SHAPE_CLASSES",
    "ShapesDataModule",
    "TensorImageDataModule",
    "TensorImageDataset",
    "load_digits_images",
    "make_shapes",
]
