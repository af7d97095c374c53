"""Every Lightning logger the user has: what trainviz shows, written where they look.

Lightning has no common image API (its maintainers declined one: Lightning issues #4973, #10901, #12183), so this
module is the one place that knows each logger. TensorBoard is written through its ``SummaryWriter`` by
:class:`~trainviz.sinks.Sink` itself (projector included); the others get a backend here:

* **Weights & Biases** (:class:`WandbBackend`): images as ``wandb.Image`` lists with captions (what
  ``WandbLogger.log_image`` logs, with the epoch in the same row); scalars
  through ``log_metrics`` on an ``epoch`` x-axis declared with ``define_metric`` (W&B steps must grow, so the
  epoch is a metric, not the step); embeddings as a ``wandb.Table`` of 2-D coordinates, labels and predictions,
  for W&B's 2-D projection panel.
* **MLflow** (:class:`MLflowBackend`): images through ``MlflowClient.log_image(run_id, image, key=, step=epoch)``,
  metrics with ``step=epoch``, and the artifact folder logged as the run's artifacts at fit end. MLflow names
  may hold only letters, digits and ``_ - . : /`` and spaces: ``@`` becomes ``:`` (``fgsm/accuracy@0.0039`` is
  ``fgsm/accuracy:0.0039``) and any other character ``_`` (:func:`mlflow_key`).
* **Comet** (:class:`CometBackend`): ``experiment.log_image(..., name=, step=epoch)`` and metrics.
* **CSV** (:class:`CSVBackend`): scalars into ``metrics.csv`` (with an ``epoch`` column); images stay artifact
  files, and the log says so once.

With several loggers each gets everything it can show; with none, the artifact store alone (it is the source of
truth: the report rebuilds from it, whatever the logger).

Example:
    >>> from pytorch_lightning.loggers import CSVLogger
    >>> import tempfile
    >>> logger = CSVLogger(tempfile.mkdtemp(), name="run")
    >>> [type(b).__name__ for b in logger_backends([logger])]
    ['CSVBackend']
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any

import numpy as np

from trainviz.core.lightning_private import mlflow_tracking_uri
from trainviz.core.namespace import info, is_instance

__all__ = [
    "CSVBackend",
    "CometBackend",
    "LoggerBackend",
    "MLflowBackend",
    "WandbBackend",
    "logger_backends",
    "mlflow_key",
]

EXTRAS = {"wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet"}


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        extra = EXTRAS[module]
        raise ImportError(f"trainviz needs `{module}` for this logger: `pip install trainviz[{extra}]`.")


class LoggerBackend:
    """What a logger can show; the defaults show nothing. Every method runs on trainviz's writer thread, but for the
    scalars of a backend whose ``writer_thread`` is false: those are held and handed over on the training thread
    (:meth:`trainviz.sinks.sink.Sink.deliver`)."""

    name = "logger"
    writer_thread = True
    """Whether :meth:`scalars` may run on trainviz's writer thread, beside the training thread's own writes."""

    def scalars(self, pairs: list[tuple[str, float]], epoch: int) -> None:
        """Scalars ``[(tag, value)]`` of ``epoch``."""

    def image(self, tag: str, image: np.ndarray, epoch: int, caption: str | None = None) -> None:
        """A uint8 ``(H, W, 3)`` picture of ``epoch``."""

    def histogram(self, tag: str, values: np.ndarray, epoch: int) -> None:
        """A set of values of ``epoch``."""

    def embedding(self, tag: str, coords: np.ndarray, labels: list[str], predictions: list[str], epoch: int) -> None:
        """A 2-D frame ``(N, 2)`` of ``epoch`` with each point's label and prediction."""

    def finish(self, artifact_dir: str) -> None:
        """Fit end: the trainviz artifact folder is complete."""

    def where(self) -> str | None:
        """Where the user looks (a URL or a folder), for the fit-end message."""
        return None


class WandbBackend(LoggerBackend):
    name = "W&B"

    def __init__(self, logger: Any) -> None:
        _require("wandb")
        self.logger = logger
        self._declared = False

    def _declare(self) -> None:
        if not self._declared:
            self._declared = True
            run = self.logger.experiment
            run.define_metric("epoch")
            run.define_metric("trainviz/*", step_metric="epoch", step_sync=True)

    def scalars(self, pairs: list[tuple[str, float]], epoch: int) -> None:
        self._declare()
        self.logger.log_metrics({**dict(pairs), "epoch": epoch})

    def image(self, tag: str, image: np.ndarray, epoch: int, caption: str | None = None) -> None:
        # What `WandbLogger.log_image` does (a list of `wandb.Image` with captions), with the epoch in the same
        # row: log_image can only pass a step, which W&B needs to be its own growing counter.
        import wandb

        self._declare()
        self.logger.experiment.log({tag: [wandb.Image(image, caption=caption or f"epoch {epoch}")], "epoch": epoch})

    def histogram(self, tag: str, values: np.ndarray, epoch: int) -> None:
        import wandb

        self._declare()
        self.logger.experiment.log({tag: wandb.Histogram(np.asarray(values).ravel().tolist()), "epoch": epoch})

    def embedding(self, tag: str, coords: np.ndarray, labels: list[str], predictions: list[str], epoch: int) -> None:
        self._declare()
        import wandb

        rows = [[float(x), float(y), lab, pred, epoch] for (x, y), lab, pred in zip(coords, labels, predictions)]
        table = wandb.Table(columns=["x", "y", "label", "prediction", "epoch"], data=rows)
        self.logger.experiment.log({f"{tag}/table": table, "epoch": epoch})  # beside the image of the same frame

    def where(self) -> str | None:
        run = self.logger.experiment
        return getattr(run, "url", None) or getattr(run, "dir", None)


def mlflow_key(tag: str) -> str:
    """A trainviz tag as an MLflow metric or image name (MLflow refuses a whole batch with one bad name).

    Example:
        >>> mlflow_key("trainviz/robustness/fgsm/accuracy@0.0039")
        'trainviz/robustness/fgsm/accuracy:0.0039'
    """
    return re.sub(r"[^\w\-. :/]", "_", tag.replace("@", ":"))


class MLflowBackend(LoggerBackend):
    name = "MLflow"

    def __init__(self, logger: Any) -> None:
        _require("mlflow")
        self.logger = logger

    def scalars(self, pairs: list[tuple[str, float]], epoch: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key=mlflow_key(tag), value=float(value), timestamp=now, step=epoch) for tag, value in pairs]
        self.logger.experiment.log_batch(self.logger.run_id, metrics=metrics)

    def image(self, tag: str, image: np.ndarray, epoch: int, caption: str | None = None) -> None:
        self.logger.experiment.log_image(self.logger.run_id, image, key=mlflow_key(tag), step=epoch)

    def finish(self, artifact_dir: str) -> None:
        self.logger.experiment.log_artifacts(self.logger.run_id, artifact_dir, artifact_path="trainviz")

    def where(self) -> str | None:
        return f"{mlflow_tracking_uri(self.logger)} (run {self.logger.run_id})"


class CometBackend(LoggerBackend):
    name = "Comet"

    def __init__(self, logger: Any) -> None:
        _require("comet_ml")
        self.logger = logger

    def scalars(self, pairs: list[tuple[str, float]], epoch: int) -> None:
        self.logger.experiment.log_metrics(dict(pairs), step=epoch, epoch=epoch)

    def image(self, tag: str, image: np.ndarray, epoch: int, caption: str | None = None) -> None:
        self.logger.experiment.log_image(image, name=tag, step=epoch)

    def where(self) -> str | None:
        return getattr(self.logger.experiment, "url", None)


class CSVBackend(LoggerBackend):
    name = "CSV"
    # Lightning's CSV logger saves through fsspec's shared local file system, whose transaction (the checkpoint's
    # atomic save on the training thread) would take in a file opened meanwhile on another thread, and the save
    # would fail ("'BufferedWriter' object has no attribute 'temp'"): its scalars are written on the training thread.
    writer_thread = False

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self._said = False

    def scalars(self, pairs: list[tuple[str, float]], epoch: int) -> None:
        self.logger.log_metrics({**dict(pairs), "epoch": epoch})
        self.logger.save()

    def image(self, tag: str, image: np.ndarray, epoch: int, caption: str | None = None) -> None:
        if not self._said:
            self._said = True
            info(
                "trainviz: the CSV logger takes scalars only; images stay as PNG files under the trainviz artifact "
                "folder (and in `trainviz report RUN_DIR`).",
                self.logger,
            )

    def where(self) -> str | None:
        return self.logger.log_dir


def logger_backends(loggers: list[Any]) -> list[LoggerBackend]:
    """A backend for every logger of a trainer that is not TensorBoard (which the sink writes itself), whichever
    Lightning namespace the logger comes from (:mod:`trainviz.core.namespace`)."""
    kinds = (
        ("WandbLogger", WandbBackend),
        ("MLFlowLogger", MLflowBackend),
        ("CometLogger", CometBackend),
        ("CSVLogger", CSVBackend),
    )
    out: list[LoggerBackend] = []
    for logger in loggers or []:
        for kind, backend in kinds:
            if is_instance(logger, "loggers", kind):
                out.append(backend(logger))
    return out
