"""Models: trainviz's demo networks (and, later, the group-convolution encoder-decoder)."""

from trainviz.models.small import DemoClassifier, SmallCNN

__all__ = ["DemoClassifier", "SmallCNN"]
