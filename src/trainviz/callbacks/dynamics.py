"""``DynamicsCallback``: how predictions evolve during training (seed 002).

Example:
    >>> import pytorch_lightning as pl
    >>> from trainviz import DynamicsCallback
    >>> from trainviz.data import DigitsDataModule
    >>> from trainviz.models import DemoClassifier
    >>> trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, callbacks=[DynamicsCallback(probe_size=50)],
    ...                      logger=False, enable_progress_bar=False, enable_model_summary=False,
    ...                      default_root_dir="/tmp/trainviz-doctest")  # doctest: +SKIP
    >>> trainer.fit(DemoClassifier(num_classes=10, in_channels=1), DigitsDataModule())  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
from typing_extensions import override

from trainviz.callbacks.base import ProbeCallback, check_positive_int
from trainviz.core.guard import model_device, model_dtype, probe_guard
from trainviz.ops.metrics import confusion_matrix, per_class_accuracy
from trainviz.ops.predict import predict_logits
from trainviz.render.images import confusion_matrix_image, probability_bars_image
from trainviz.core.transfer import to_cpu

__all__ = ["DynamicsCallback"]


class DynamicsCallback(ProbeCallback):
    """Per-epoch confusion matrix, per-class accuracy, probability histograms and class-probability bars.

    Logged keys (step = epoch index):
        - ``trainviz/dynamics/accuracy`` (scalar): probe-set accuracy.
        - ``trainviz/dynamics/per_class_accuracy/<class>`` (scalars).
        - ``trainviz/dynamics/confusion_matrix`` (image): row-normalised, counts in cells.
        - ``trainviz/dynamics/prob_true_class`` and ``trainviz/dynamics/confidence`` (histograms):
          probability given to the true class, and the top probability.
        - ``trainviz/dynamics/probabilities`` (image): probe images beside bars of all class probabilities.
        - ``trainviz/dynamics/seconds`` (scalar): cost of the run.
        - artifacts ``dynamics/epoch_XXXX/predictions.npz`` (``probs``, ``labels``, ``ids``, ``confusion``)
          and ``dynamics/metrics.jsonl``.

    Args:
        n_examples: probe images shown with their probability bars (one per class first).
        **kwargs: :class:`~trainviz.callbacks.base.ProbeCallback` arguments (``every_n_epochs``,
            ``probe_size`` (default 256), ...).

    Example:
        ``Trainer(callbacks=[DynamicsCallback(every_n_epochs=1)]).fit(model, datamodule)``
        (a runnable version: ``examples/dynamics.py``).
    """

    name = "dynamics"
    default_probe_size = 256

    def __init__(self, n_examples: int = 6, probe_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(probe_size=probe_size, **kwargs)
        self.n_examples = check_positive_int("n_examples", n_examples)

    @override
    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        example = self.probe.images[:2].to(model_device(pl_module), model_dtype(pl_module))
        with probe_guard(pl_module):
            predict_logits(self.logits_model(pl_module), example)  # raises now if the output is not logits (names `output=`)

    @override
    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        probe = self.device_probe(pl_module)
        probs = predict_logits(self.logits_model(pl_module), probe.images, self.batch_size).float().softmax(1)
        k = probs.shape[1]
        pred = probs.argmax(1)
        cm = confusion_matrix(pred, probe.labels, k)
        per_class = per_class_accuracy(cm)
        names = probe.class_names or [str(i) for i in range(k)]
        host = to_cpu({"accuracy": (pred == probe.labels).double().mean(), "per_class": per_class})
        accuracy, per_class_host = float(host["accuracy"]), host["per_class"].tolist()
        sink = self.sink
        sink.scalars({"accuracy": accuracy, **{f"per_class_accuracy/{n}": a for n, a in zip(names, per_class_host)}}, epoch)
        sink.histogram("prob_true_class", probs.gather(1, probe.labels[:, None]), epoch)
        sink.histogram("confidence", probs.max(1).values, epoch)
        sink.image("confusion_matrix", confusion_matrix_image(cm, names), epoch, artifact=True)
        idx = self.example_indices(self.n_examples)
        pixels = self.norm.denormalize(probe.images[idx].float()).cpu()  # one transfer for all examples
        example_probs, example_labels = probs[idx].cpu(), probe.labels[idx].tolist()
        panels = [probability_bars_image(pixels[j], example_probs[j], names, example_labels[j]) for j in range(len(idx))]
        width = max(p.shape[1] for p in panels)
        panels = [np.pad(p, ((0, 4), (0, width - p.shape[1]), (0, 0)), constant_values=255) for p in panels]
        sink.image("probabilities", np.concatenate(panels, axis=0), epoch, artifact=True)
        sink.npz(epoch, "predictions", probs=probs, labels=probe.labels, ids=probe.ids, confusion=cm)
        sink.record(
            "metrics",
            {
                "epoch": epoch,
                "accuracy": accuracy,
                "per_class_accuracy": dict(zip(names, per_class_host)),
                "class_names": names,
            },
        )
