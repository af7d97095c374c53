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

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from trainviz.sinks.artifacts import ArtifactStore, epoch_dir
from trainviz.sinks.writer import BackgroundWriter

__all__ = ["Sink"]


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


class Sink:
    """Writes for one callback. ``writer`` is a TensorBoard ``SummaryWriter`` (or ``None`` to skip
    TensorBoard); ``store`` an :class:`ArtifactStore` (or ``None`` to skip artifacts)."""

    def __init__(self, callback: str, writer: Any | None, store: ArtifactStore | None, background: BackgroundWriter) -> None:
        self.callback = callback
        self.writer = writer
        self.store = store
        self.background = background

    def tag(self, name: str) -> str:
        return f"trainviz/{self.callback}/{name}"

    # TensorBoard -----------------------------------------------------------------------------------
    def scalars(self, values: Mapping[str, Any], step: int) -> None:
        """Several scalars at once (tensors are stacked and moved to the CPU in one transfer)."""
        if self.writer is None or not values:
            return
        names = list(values)
        tensors = [v for v in values.values() if isinstance(v, torch.Tensor)]
        if len(tensors) == len(names):
            floats = torch.stack([t.detach().float().reshape(()) for t in tensors]).cpu().tolist()
        else:
            floats = [float(v) for v in values.values()]
        pairs = [(self.tag(n), f) for n, f in zip(names, floats)]
        self.background.submit(self._write_scalars, pairs, step)

    def scalar(self, name: str, value: Any, step: int) -> None:
        self.scalars({name: value}, step)

    def _write_scalars(self, pairs: list[tuple[str, float]], step: int) -> None:
        for tag, value in pairs:
            self.writer.add_scalar(tag, value, step)

    def image(self, name: str, image: np.ndarray, step: int, artifact: bool = False) -> None:
        """A uint8 ``(H, W, 3)`` picture (see :mod:`trainviz.render.images`); with ``artifact=True`` also
        saved as ``<callback>/epoch_XXXX/<name>.png`` for offline reports."""
        image = np.ascontiguousarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"Expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}.")
        if self.writer is not None:
            self.background.submit(self.writer.add_image, self.tag(name), image, step, dataformats="HWC")
        if artifact and self.store is not None:
            self.background.submit(self._write_png, f"{epoch_dir(self.callback, step)}/{name}.png", image)

    def _write_png(self, relpath: str, image: np.ndarray) -> None:
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        self.store.write_bytes(relpath, buf.getvalue())

    def histogram(self, name: str, values: Any, step: int) -> None:
        if self.writer is None:
            return
        self.background.submit(self.writer.add_histogram, self.tag(name), _to_numpy(values).ravel(), step)

    def text(self, name: str, text: str, step: int) -> None:
        if self.writer is None:
            return
        self.background.submit(self.writer.add_text, self.tag(name), text, step)

    # Artifacts -------------------------------------------------------------------------------------
    def npz(self, epoch: int, name: str, **arrays: Any) -> None:
        """Tensors of one run: ``<callback>/epoch_XXXX/<name>.npz``."""
        if self.store is None:
            return
        data = {k: _to_numpy(v) for k, v in arrays.items()}
        self.background.submit(self.store.write_npz, f"{epoch_dir(self.callback, epoch)}/{name}.npz", **data)

    def record(self, name: str, record: Mapping[str, Any]) -> None:
        """Append a JSON record to ``<callback>/<name>.jsonl`` (same ``epoch`` replaces)."""
        if self.store is None:
            return
        self.background.submit(self.store.append_jsonl, f"{self.callback}/{name}.jsonl", dict(record))

    def json(self, name: str, obj: Any) -> None:
        if self.store is None:
            return
        self.background.submit(self.store.write_json, f"{self.callback}/{name}", obj)

    def file(self, name: str, data: bytes | str) -> None:
        if self.store is None:
            return
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        self.background.submit(self.store.write_bytes, f"{self.callback}/{name}", payload)

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
        self.background.submit(self.store.prune_after, self.callback, epoch)

    def flush(self) -> None:
        """Wait for queued writes, then flush TensorBoard's event file."""
        self.background.flush()
        if self.writer is not None:
            self.writer.flush()
