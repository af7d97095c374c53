"""Models: trainviz's demo networks and Zhang's encoder-decoder with group convolution."""

from trainviz.models.group_conv import DECODERS, ClassMapNet, DecoderName, GroupConvDecoder, feature_channels
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
    "DECODERS",
    "BasicBlock",
    "ClassMapClassifier",
    "ClassMapNet",
    "DecoderName",
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
