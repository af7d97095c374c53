"""Artifact store: each callback's raw results as files, written atomically (temp file, then rename).

Layout under ``root`` (normally ``<log_dir>/trainviz``)::

    <callback>/epoch_0003/<name>.npz     tensors of one run
    <callback>/<name>.jsonl              one JSON record per run (metrics), rewritten atomically
    <callback>/<name>.json | .html | ...

Example:
    >>> import tempfile, numpy as np
    >>> store = ArtifactStore(tempfile.mkdtemp())
    >>> _ = store.write_npz("cam/epoch_0000/maps.npz", maps=np.zeros((2, 4, 4)))
    >>> sorted(store.read_npz("cam/epoch_0000/maps.npz"))
    ['maps']
"""

from __future__ import annotations

import io
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PNG_LEVEL", "ArtifactStore", "atomic_write", "epoch_dir", "png_bytes"]


def epoch_dir(callback: str, epoch: int) -> str:
    """Relative folder of one run's artifacts: ``<callback>/epoch_0003``."""
    return f"{callback}/epoch_{epoch:04d}"


def atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``.

    A reader never sees a half-written file; a crash leaves the old file (or none).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600: artifacts and reports are meant to be read and shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


PNG_LEVEL = 1
"""The zlib level of every PNG trainviz writes during a fit (artifacts, TensorBoard images, the projector's sprite).
PNG is lossless at any level; level 1 encoded the 32 pictures of a short fit in 0.41x the CPU seconds of Pillow's
default 6 (0.209 s against 0.509 s), in files 1.16x larger (``benchmarks/png_cost.py``, one run). The encoding is
most of the writer thread's work, which the budget charges (:attr:`trainviz.core.budget.Ledger.displaced`)."""


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 ``(H, W, 3)`` (or ``(H, W)``) picture as PNG bytes, at :data:`PNG_LEVEL`.

    Example:
        >>> import numpy as np
        >>> from PIL import Image
        >>> picture = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
        >>> bool((np.asarray(Image.open(io.BytesIO(png_bytes(picture)))) == picture).all())
        True
    """
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "tolist"):  # torch tensors
        return value.tolist()
    return value


def write_plotly_js(folder: str | os.PathLike) -> Path:
    """``plotly.min.js`` (4.8 MB) in ``folder``, written atomically unless the same version is there already:
    the one copy the offline HTML pages beside it load."""
    import plotly.offline

    js = Path(folder) / "plotly.min.js"
    source = plotly.offline.get_plotlyjs().encode("utf-8")
    if not js.exists() or js.stat().st_size != len(source):
        atomic_write(js, source)
    return js


WRITERS_DIR = ".writers"


class ArtifactStore:
    """Reads and atomically writes artifacts under one root folder."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._signed = False

    def path(self, relpath: str) -> Path:
        return self.root / relpath

    def write_bytes(self, relpath: str, data: bytes) -> Path:
        if not self._signed:  # one marker per writing process: `writers()` shows who wrote to this folder
            self._signed = True
            atomic_write(self.root / WRITERS_DIR / f"{platform.node()}-{os.getpid()}", b"")
        return atomic_write(self.path(relpath), data)

    def writers(self) -> list[str]:
        """``host-pid`` of every process that wrote to this folder (under DDP, only rank zero should)."""
        folder = self.root / WRITERS_DIR
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def write_text(self, relpath: str, text: str) -> Path:
        return self.write_bytes(relpath, text.encode("utf-8"))

    def write_json(self, relpath: str, obj: Any) -> Path:
        return self.write_text(relpath, json.dumps(_jsonable(obj), indent=2, sort_keys=True))

    def write_npz(self, relpath: str, **arrays: Any) -> Path:
        buf = io.BytesIO()
        np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})  # type: ignore[arg-type]
        return self.write_bytes(relpath, buf.getvalue())

    def append_jsonl(self, relpath: str, record: dict[str, Any], key: str | None = "epoch") -> Path:
        """Append one record; with ``key``, a record with the same key value replaces the old one
        (a repeated run of an epoch is written once)."""
        records = self.read_jsonl(relpath)
        record = _jsonable(record)
        records.append(record)
        if key is not None and key in record:
            records = [r for r in records[:-1] if r.get(key) != record[key]] + [record]
            records.sort(key=lambda r: (r.get(key) is None, r.get(key) if isinstance(r.get(key), (int, float)) else 0))
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        return self.write_text(relpath, text)

    def prune_after(self, callback: str, epoch: int) -> None:
        """Remove ``callback``'s ``epoch_XXXX`` folders and JSON-lines records of epochs after ``epoch``."""
        import shutil

        for e in self.epochs(callback):
            if e > epoch:
                shutil.rmtree(self.root / epoch_dir(callback, e), ignore_errors=True)
        base = self.root / callback
        for path in base.glob("*.jsonl") if base.is_dir() else ():
            relpath = f"{callback}/{path.name}"
            records = self.read_jsonl(relpath)
            kept = [r for r in records if not isinstance(r.get("epoch"), int) or r["epoch"] <= epoch]
            if len(kept) != len(records):
                self.write_text(relpath, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

    def read_jsonl(self, relpath: str) -> list[dict[str, Any]]:
        p = self.path(relpath)
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text("utf-8").splitlines() if line.strip()]

    def read_json(self, relpath: str) -> Any:
        return json.loads(self.path(relpath).read_text("utf-8"))

    def read_npz(self, relpath: str) -> dict[str, np.ndarray]:
        with np.load(self.path(relpath), allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    def epochs(self, callback: str) -> list[int]:
        """Epochs that have an ``epoch_XXXX`` folder for ``callback``, sorted."""
        base = self.root / callback
        if not base.is_dir():
            return []
        return sorted(int(p.name[6:]) for p in base.glob("epoch_*") if p.is_dir() and p.name[6:].isdigit())
