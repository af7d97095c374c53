"""Models: trainviz's demo networks and the group-convolution encoder-decoder of seed 003."""

from trainviz.models.group_conv import ClassMapNet, GroupConvDecoder, feature_channels
from trainviz.models.lightning import ClassMapClassifier
from trainviz.models.resnet import (
    BasicBlock,
    ResNetBackbone,
    ResNetClassifier,
    load_pretrained,
    resnet18_backbone,
    torchvision_resnet18_backbone,
)
from trainviz.models.small import DemoClassifier, SmallCNN

__all__ = [
    "BasicBlock",
    "ClassMapClassifier",
    "ClassMapNet",
    "DemoClassifier",
    "GroupConvDecoder",
    "ResNetBackbone",
    "ResNetClassifier",
    "SmallCNN",
    "feature_channels",
    "load_pretrained",
    "resnet18_backbone",
    "torchvision_resnet18_backbone",
]
