"""trainviz's Lightning callbacks."""

from trainviz.callbacks.base import ProbeCallback
from trainviz.callbacks.cam import CAMCallback
from trainviz.callbacks.decoder_maps import DecoderMapCallback
from trainviz.callbacks.dynamics import DynamicsCallback
from trainviz.callbacks.embedding import EmbeddingCallback
from trainviz.callbacks.manifest import RunManifestCallback
from trainviz.callbacks.robustness import RobustnessCallback

__all__ = [
    "CAMCallback",
    "DecoderMapCallback",
    "DynamicsCallback",
    "EmbeddingCallback",
    "ProbeCallback",
    "RobustnessCallback",
    "RunManifestCallback",
]
