"""Pure tensor operations: no Lightning, TensorBoard or plotly, nothing written to disk."""

from trainviz.ops.metrics import confusion_matrix, per_class_accuracy
from trainviz.ops.predict import predict_logits

__all__ = ["confusion_matrix", "per_class_accuracy", "predict_logits"]
