"""trainviz's Lightning callbacks."""

from trainviz.callbacks.base import ProbeCallback
from trainviz.callbacks.dynamics import DynamicsCallback
from trainviz.callbacks.manifest import RunManifestCallback

__all__ = ["DynamicsCallback", "ProbeCallback", "RunManifestCallback"]
