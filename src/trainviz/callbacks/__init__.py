"""trainviz's Lightning callbacks."""

from trainviz.callbacks.base import ProbeCallback
from trainviz.callbacks.cam import CAMCallback
from trainviz.callbacks.decoder_maps import DecoderMapCallback
from trainviz.callbacks.dynamics import DynamicsCallback
from trainviz.callbacks.embedding import EmbeddingCallback
from trainviz.callbacks.features import FeatureMapCallback
from trainviz.callbacks.manifest import RunManifestCallback
from trainviz.callbacks.maxact import MaxActivationCallback
from trainviz.callbacks.robustness import RobustnessCallback
from trainviz.callbacks.saliency import SaliencyCallback

__all__ = [
    "CAMCallback",
    "DecoderMapCallback",
    "DynamicsCallback",
    "EmbeddingCallback",
    "FeatureMapCallback",
    "MaxActivationCallback",
    "ProbeCallback",
    "RobustnessCallback",
    "RunManifestCallback",
    "SaliencyCallback",
]
