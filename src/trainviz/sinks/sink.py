"""``Sink``: the one object a callback writes through (TensorBoard + artifacts, on a background thread).

Tags are ``trainviz/<callback>/<name>``; the TensorBoard step of every trainviz key is the epoch index.
Values are moved to the CPU once, at the call, then written on the background thread.

Example:
    >>> import tempfile, numpy as np
    >>> from trainviz.sinks import Sink, ArtifactStore, BackgroundWriter
    >>> sink = Sink("demo", writer=None, store=ArtifactStore(tempfile.mkdtemp()), background=BackgroundWriter())
    >>> sink.record("metrics", {"epoch": 0, "acc": 0.5}); sink.flush()
    >>> sink.store.read_jsonl("demo/metrics.jsonl")
    [{'acc': 0.5, 'epoch': 0}]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from trainviz.sinks.artifacts import ArtifactStore, epoch_dir, png_bytes, write_plotly_js
from trainviz.sinks.projector import ProjectorWriter
from trainviz.sinks.tensorboard import add_png
from trainviz.sinks.writer import BackgroundWriter

__all__ = ["Sink"]


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


class Sink:
    """Writes for one callback. ``writer`` is a TensorBoard ``SummaryWriter`` (or ``None`` to skip
    TensorBoard); ``store`` an :class:`ArtifactStore` (or ``None`` to skip artifacts); ``loggers`` the
    backends of the trainer's other loggers (:mod:`trainviz.sinks.loggers`), each given what it can show."""

    def __init__(
        self,
        callback: str,
        writer: Any | None,
        store: ArtifactStore | None,
        *,
        background: BackgroundWriter,
        loggers: Sequence[Any] = (),
    ) -> None:
        self.callback = callback
        self.writer = writer
        self.store = store
        self.background = background
        self.loggers = list(loggers)
        self._held: deque[tuple[Any, list[tuple[str, float]], int]] = deque()  # for the training thread (deliver)

    def tag(self, name: str) -> str:
        return f"trainviz/{self.callback}/{name}"

    # TensorBoard -----------------------------------------------------------------------------------
    def scalars(self, values: Mapping[str, Any], step: int) -> None:
        """Several scalars at once (tensors are stacked and moved to the CPU in one transfer)."""
        if (self.writer is None and not self.loggers) or not values:
            return
        names = list(values)
        tensors = [v for v in values.values() if isinstance(v, torch.Tensor)]
        if len(tensors) == len(names):
            floats = torch.stack([t.detach().float().reshape(()) for t in tensors]).cpu().tolist()
        else:
            floats = [float(v) for v in values.values()]
        pairs = [(self.tag(n), f) for n, f in zip(names, floats)]
        self.background.submit_as(self.callback, self._write_scalars, pairs, step)

    def scalar(self, name: str, value: Any, step: int) -> None:
        self.scalars({name: value}, step)

    def _write_scalars(self, pairs: list[tuple[str, float]], step: int) -> None:
        if self.writer is not None:
            for tag, value in pairs:
                self.writer.add_scalar(tag, value, step)
        for logger in self.loggers:
            if getattr(logger, "writer_thread", True):
                logger.scalars(pairs, step)
            else:
                self._held.append((logger, pairs, step))

    def deliver(self) -> None:
        """Hand the scalars held for loggers that must be written on the training thread (``writer_thread``
        false, e.g. the CSV logger) to them. Call it on the training thread: the base callback does after each run
        and when it flushes."""
        while self._held:
            logger, pairs, step = self._held.popleft()
            logger.scalars(pairs, step)

    def image(
        self, name: str, image: np.ndarray, step: int, artifact: bool = False, caption: str | None = None
    ) -> None:
        """A uint8 ``(H, W, 3)`` picture (see :mod:`trainviz.render.images`); with ``artifact=True`` also
        saved as ``<callback>/epoch_XXXX/<name>.png`` for offline reports. ``caption`` goes to the loggers
        that show one (W&B)."""
        image = np.ascontiguousarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"Expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}.")
        relpath = f"{epoch_dir(self.callback, step)}/{name}.png" if artifact and self.store is not None else None
        if self.writer is not None or relpath is not None:
            self.background.submit_as(self.callback, self._write_png, self.tag(name), relpath, image, step)
        caption = caption or f"{self.callback} {name}, epoch {step}"
        for logger in self.loggers:
            self.background.submit_as(self.callback, logger.image, self.tag(name), image, step, caption)

    def _write_png(self, tag: str, relpath: str | None, image: np.ndarray, step: int) -> None:
        """One PNG encoding for the artifact (at ``relpath``) and TensorBoard (at ``tag``): the encoding is most of
        the writer thread's work."""
        png = png_bytes(image)
        try:
            if relpath is not None:
                self.store.write_bytes(relpath, png)
        finally:
            if self.writer is not None:
                add_png(self.writer, tag, png, image, step)

    def histogram(self, name: str, values: Any, step: int) -> None:
        values = _to_numpy(values).ravel()
        if self.writer is not None:
            self.background.submit_as(self.callback, self.writer.add_histogram, self.tag(name), values, step)
        for logger in self.loggers:
            self.background.submit_as(self.callback, logger.histogram, self.tag(name), values, step)

    def embedding(self, name: str, coords: Any, labels: Sequence[str], predictions: Sequence[str], step: int) -> None:
        """A 2-D frame ``(N, 2)`` with each point's label and prediction, for the loggers that draw one (a W&B
        table; TensorBoard gets the projector through :meth:`projector`)."""
        coords = _to_numpy(coords)
        for logger in self.loggers:
            self.background.submit_as(
                self.callback, logger.embedding, self.tag(name), coords, list(labels), list(predictions), step
            )

    def finish_loggers(self) -> None:
        """Fit end: hand the complete artifact folder to the loggers that keep artifacts (MLflow)."""
        if self.store is None:
            return
        for logger in self.loggers:
            self.background.submit_as(self.callback, logger.finish, str(self.store.root))

    def text(self, name: str, text: str, step: int) -> None:
        if self.writer is None:
            return
        self.background.submit_as(self.callback, self.writer.add_text, self.tag(name), text, step)

    # Artifacts -------------------------------------------------------------------------------------
    def npz(self, epoch: int, name: str, **arrays: Any) -> None:
        """Tensors of one run: ``<callback>/epoch_XXXX/<name>.npz``."""
        if self.store is None:
            return
        data = {k: _to_numpy(v) for k, v in arrays.items()}
        relpath = f"{epoch_dir(self.callback, epoch)}/{name}.npz"
        self.background.submit_as(self.callback, self.store.write_npz, relpath, **data)

    def record(self, name: str, record: Mapping[str, Any]) -> None:
        """Append a JSON record to ``<callback>/<name>.jsonl`` (same ``epoch`` replaces)."""
        if self.store is None:
            return
        self.background.submit_as(self.callback, self.store.append_jsonl, f"{self.callback}/{name}.jsonl", dict(record))

    def json(self, name: str, obj: Any) -> None:
        if self.store is None:
            return
        self.background.submit_as(self.callback, self.store.write_json, f"{self.callback}/{name}", obj)

    def file(self, name: str, data: bytes | str) -> None:
        if self.store is None:
            return
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        self.background.submit_as(self.callback, self.store.write_bytes, f"{self.callback}/{name}", payload)

    def write_fit_end(self, end: Any) -> None:
        """Write a :class:`~trainviz.core.contract.FitEnd`: its images, arrays, texts and documents."""
        for name, image in end.images.items():
            self.image(name, image, end.epoch, artifact=True)
        for name, arrays in end.arrays.items():
            self.npz(end.epoch, name, **arrays)
        for name, text in end.texts.items():
            self.text(name, text, end.epoch)
        for name, document in end.documents.items():
            self.json(name, document)

    def write(self, result: Any) -> None:
        """Write a :class:`~trainviz.core.result.Result` of epoch ``result.epoch``: its scalars (``None`` left
        out), rendered images (TensorBoard and PNG artifacts), histograms, arrays (npz), record (JSON lines)
        documents (JSON) and its report section (``section.json``)."""
        epoch = result.epoch
        scalars = {name: value for name, value in result.scalars().items() if value is not None}
        if scalars:
            self.scalars(scalars, epoch)
        for name, image in result.render().items():
            self.image(name, image, epoch, artifact=True)
        for name, values in result.histograms().items():
            self.histogram(name, values, epoch)
        for name, (coords, labels, predictions) in result.embeddings().items():
            self.embedding(name, coords, labels, predictions, epoch)
        for name, arrays in result.arrays().items():
            self.npz(epoch, name, **arrays)
        self.record(result.record_name, result.record())
        for name, document in result.documents().items():
            self.json(name, document)
        section = result.section()
        if section is not None:
            self.json("section.json", section)  # the report's section of this callback (see Result.section)

    def read_records(self, name: str = "metrics") -> list[dict[str, Any]]:
        """This callback's JSON-lines records ``<callback>/<name>.jsonl`` (queued writes flushed first)."""
        if self.store is None:
            return []
        self.background.flush()
        return self.store.read_jsonl(f"{self.callback}/{name}.jsonl")

    def read_npz(self, epoch: int, name: str) -> dict[str, np.ndarray] | None:
        """The arrays of ``epoch_XXXX/<name>.npz`` of this callback, or ``None`` if there is none."""
        if self.store is None:
            return None
        self.background.flush()
        relpath = f"{epoch_dir(self.callback, epoch)}/{name}.npz"
        return self.store.read_npz(relpath) if self.store.path(relpath).exists() else None

    def plotly_js(self) -> None:
        """Write ``plotly.min.js`` once into this callback's folder, for its offline HTML figures."""
        if self.store is not None:
            self.background.submit_as(self.callback, write_plotly_js, self.store.path(self.callback))

    def projector(self, key: str) -> ProjectorWriter | None:
        """A TensorBoard Embedding Projector writer into the TensorBoard run folder, for the probe set ``key``
        (:class:`~trainviz.sinks.projector.ProjectorWriter`; its writes on this sink's thread, counted as this
        callback's), or ``None`` without a TensorBoard writer."""
        if self.writer is None:
            return None
        log_dir = getattr(self.writer, "log_dir", None) or self.writer.get_logdir()
        return ProjectorWriter(log_dir, key, self.background, owner=self.callback)

    def busy_seconds(self) -> float:
        """CPU seconds the writer thread has spent on this callback's writes."""
        return self.background.busy.get(self.callback, 0.0)

    def epochs(self) -> list[int]:
        """Epochs with artifacts of this callback (written ones; queued writes are flushed first)."""
        if self.store is None:
            return []
        self.background.flush()
        return self.store.epochs(self.callback)

    def prune_after(self, epoch: int) -> None:
        """Drop this callback's artifacts of epochs after ``epoch`` (a run resumed from an earlier checkpoint)."""
        if self.store is None:
            return
        self.background.submit_as(self.callback, self.store.prune_after, self.callback, epoch)

    def flush(self) -> None:
        """Wait for queued writes, flush TensorBoard's event file and :meth:`deliver` the held scalars (call it on
        the training thread)."""
        self.background.flush()
        if self.writer is not None:
            self.writer.flush()
        self.deliver()
