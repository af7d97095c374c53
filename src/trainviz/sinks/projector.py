"""TensorBoard Embedding Projector files written by trainviz itself, with a config that is merged, not overwritten.

``SummaryWriter.add_embedding`` rewrites ``projector_config.pbtxt`` from the writer's memory, so a new writer on
the same folder (a resumed run) drops every earlier embedding, and it writes tensors as text (~10x larger and
slower than raw floats). :class:`ProjectorWriter` instead writes, under a TensorBoard run folder ``log_dir`` (the
folder of the event files, which is where the projector plugin looks)::

    projector_config.pbtxt                     every embedding ever written there; new entries are merged in
    projector/<key>/sprite.png                 the probe images in a grid, written once per probe set
    projector/<key>/metadata@epoch0003.tsv     one table per epoch, shared by all layers of that epoch
    projector/<key>/<name>.f32                 raw little-endian float32 rows, shape given in the config

``key`` names the probe set (e.g. the first characters of its fingerprint), so two callbacks with different
probe sets in one run do not overwrite each other's sprite. The config and every file are written atomically
(temporary file, then rename). The projector plugin reads a tensor file as text first and as binary only when
that fails with a decoding error; the rare tensor whose bytes happen to be valid UTF-8 is therefore written as
TSV instead (``<name>.tsv``), which the plugin reads just as well.

Example:
    >>> import tempfile, numpy as np
    >>> from trainviz.sinks import BackgroundWriter
    >>> log_dir = tempfile.mkdtemp()
    >>> proj = ProjectorWriter(log_dir, "probe", BackgroundWriter(synchronous=True))
    >>> proj.sprite(np.zeros((4, 8, 8, 3), np.uint8))
    >>> proj.add_epoch(0, {"fc@epoch0": np.ones((4, 3), np.float32)}, {"id": [0, 1, 2, 3], "label": list("abab")})
    >>> [e.tensor_name for e in read_projector_config(log_dir).embeddings]
    ['fc@epoch0']
"""

from __future__ import annotations

import codecs
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trainviz.sinks.artifacts import atomic_write, png_bytes
from trainviz.sinks.writer import BackgroundWriter

__all__ = [
    "CONFIG_NAME",
    "MAX_SPRITE_SIDE",
    "ProjectorWriter",
    "merge_projector_config",
    "read_projector_config",
    "sprite_grid",
]

CONFIG_NAME = "projector_config.pbtxt"
MAX_SPRITE_SIDE = 8192
"""Largest sprite the projector accepts (pixels a side)."""

_TB_FIRST_READ = 16 * 2**20  # characters TensorBoard's file reader decodes in its first read


def _config_class() -> Any:
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    return ProjectorConfig


def read_projector_config(log_dir: str | os.PathLike) -> Any:
    """The ``ProjectorConfig`` in ``log_dir`` (empty when there is none)."""
    from google.protobuf import text_format

    config = _config_class()()
    path = Path(log_dir) / CONFIG_NAME
    if path.exists():
        text_format.Parse(path.read_text("utf-8"), config)
    return config


def merge_projector_config(log_dir: str | os.PathLike, entries: Sequence[Any]) -> Any:
    """Add ``EmbeddingInfo`` entries to ``log_dir``'s projector config and write it atomically.

    Entries already in the file are kept, in order; one with the same ``tensor_name`` as a new entry is
    replaced in place. Returns the merged config.
    """
    from google.protobuf import text_format

    config = read_projector_config(log_dir)
    position = {e.tensor_name: i for i, e in enumerate(config.embeddings)}
    for entry in entries:
        if entry.tensor_name in position:
            config.embeddings[position[entry.tensor_name]].CopyFrom(entry)
        else:
            position[entry.tensor_name] = len(config.embeddings)
            config.embeddings.add().CopyFrom(entry)
    atomic_write(Path(log_dir) / CONFIG_NAME, text_format.MessageToString(config).encode("utf-8"))
    return config


def sprite_grid(images: np.ndarray, max_side: int = MAX_SPRITE_SIDE) -> tuple[np.ndarray, tuple[int, int]]:
    """Tile images into the projector's sprite: a square grid of ``ceil(sqrt(N))`` tiles a side, row by row.

    Tiles are shrunk (keeping their aspect ratio, area-averaged) when the grid would exceed ``max_side``.

    Args:
        images: uint8 images.
        max_side: largest sprite side in pixels.

    Returns:
        The sprite and the tile size ``(width, height)`` (the config's ``single_image_dim``).

    Shape:
        images ``(N, H, W, 3)`` -> sprite ``(k h', k w', 3)`` with ``k = ceil(sqrt(N))``

    Example:
        >>> sprite, dim = sprite_grid(np.zeros((5, 4, 6, 3), np.uint8))
        >>> sprite.shape, dim
        ((12, 18, 3), (6, 4))
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or images.shape[0] < 1:
        raise ValueError(f"Expected uint8 images of shape (N, H, W, 3), got {images.dtype} {images.shape}.")
    n, h, w, _ = images.shape
    k = math.ceil(math.sqrt(n))
    scale = min(1.0, max_side / (k * max(h, w)))
    if scale < 1.0:
        import torch
        import torch.nn.functional as F

        th, tw = max(1, int(h * scale)), max(1, int(w * scale))
        small = F.interpolate(torch.from_numpy(images).permute(0, 3, 1, 2).float(), size=(th, tw), mode="area")
        images = small.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        h, w = th, tw
    sprite = np.zeros((k * h, k * w, 3), np.uint8)
    for i in range(n):
        r, c = divmod(i, k)
        sprite[r * h : (r + 1) * h, c * w : (c + 1) * w] = images[i]
    return sprite, (w, h)


def _tensor_file(values: np.ndarray) -> tuple[str, bytes]:
    """``(extension, bytes)`` of a tensor file the projector plugin can read: raw float32, or TSV when the raw
    bytes would decode as text in the plugin's first read (it tries text first)."""
    raw = np.ascontiguousarray(values, dtype="<f4").tobytes()
    try:
        codecs.getincrementaldecoder("utf-8")().decode(raw[:_TB_FIRST_READ], final=False)
    except UnicodeDecodeError:
        return "f32", raw
    buf = io.BytesIO()
    np.savetxt(buf, np.asarray(values, dtype=np.float32), fmt="%.8g", delimiter="\t")
    return "tsv", buf.getvalue()


def _tsv_cell(value: Any) -> str:
    return " ".join(str(value).split())  # no tabs or newlines inside a cell


class ProjectorWriter:
    """Writes projector files for one probe set into a TensorBoard run folder, on a background writer.

    Args:
        log_dir: the TensorBoard run folder (``SummaryWriter.log_dir``).
        key: name of the probe set's subfolder (letters, digits, ``-`` and ``_``).
        background: the thread that performs the writes (all writes of one ``log_dir`` must go through one
            writer, so config merges never interleave).
    """

    def __init__(
        self, log_dir: str | os.PathLike, key: str, background: BackgroundWriter, *, owner: str = "embedding"
    ) -> None:
        if not isinstance(key, str) or not key or not all(ch.isalnum() or ch in "-_" for ch in key):
            raise ValueError(f"Expected `key` to be a non-empty name of letters, digits, '-' or '_', got {key!r}.")
        self.log_dir = Path(log_dir)
        self.folder = f"projector/{key}"
        self.background, self.owner = background, owner  # owner: whose budget the writes count against
        self._sprite_dim: tuple[int, int] | None = None

    def _rel(self, name: str) -> str:
        return f"{self.folder}/{name}"

    def sprite(self, images: np.ndarray) -> None:
        """Tile the probe images (uint8 ``(N, H, W, 3)``, in probe order) into ``sprite.png``; later embeddings
        reference it. Kept when it already exists (a resumed run has the same probe set)."""
        sprite, dim = sprite_grid(images)  # computed now: validates, and fixes the tile size for the config
        self._sprite_dim = dim
        self.background.submit_as(self.owner, self._write_sprite, sprite)

    def _write_sprite(self, sprite: np.ndarray) -> None:
        path = self.log_dir / self._rel("sprite.png")
        if path.exists():
            return
        atomic_write(path, png_bytes(sprite))

    def add_epoch(self, epoch: int, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, Sequence[Any]]) -> None:
        """Write one epoch: its metadata table, one tensor file per name, and the merged config.

        Args:
            epoch: epoch index (names the metadata table).
            tensors: ``{tensor name: float array (N, D)}``, e.g. ``{"net.fc@epoch3": features}``.
            metadata: ``{column: N values}`` (e.g. id, label, prediction, correct), shared by the tensors.

        Shape:
            each tensor ``(N, D)``, each metadata column ``(N,)``
        """
        arrays = {str(name): np.asarray(t, dtype=np.float32) for name, t in tensors.items()}
        columns = {str(c): list(v) for c, v in metadata.items()}
        n = {a.shape[0] for a in arrays.values()} | {len(v) for v in columns.values()}
        if len(n) != 1 or any(a.ndim != 2 for a in arrays.values()) or not columns:
            shapes = {k: a.shape for k, a in arrays.items()}
            raise ValueError(
                f"Expected 2-D tensors and metadata columns with the same number of rows, got {shapes} "
                f"and { ({c: len(v) for c, v in columns.items()}) }."
            )
        self.background.submit_as(self.owner, self._write_epoch, epoch, arrays, columns, self._sprite_dim)

    def _write_epoch(
        self, epoch: int, arrays: dict[str, np.ndarray], columns: dict[str, list], sprite_dim: Any
    ) -> None:
        from tensorboard.plugins.projector.projector_config_pb2 import EmbeddingInfo

        names = list(columns)
        rows = zip(*columns.values())
        table = ["\t".join(names)] if len(names) > 1 else []  # the plugin reads a header only with 2+ columns
        table += ["\t".join(_tsv_cell(v) for v in row) for row in rows]
        metadata_path = self._rel(f"metadata@epoch{epoch:04d}.tsv")
        atomic_write(self.log_dir / metadata_path, ("\n".join(table) + "\n").encode("utf-8"))
        entries = []
        for name, values in arrays.items():
            ext, data = _tensor_file(values)
            stem = "".join(ch if ch.isalnum() or ch in "-_.@" else "_" for ch in name)
            tensor_path = self._rel(f"{stem}.{ext}")
            atomic_write(self.log_dir / tensor_path, data)
            entry = EmbeddingInfo(tensor_name=name, tensor_path=tensor_path, metadata_path=metadata_path)
            entry.tensor_shape.extend(values.shape)
            if sprite_dim is not None:
                entry.sprite.image_path = self._rel("sprite.png")
                entry.sprite.single_image_dim.extend(sprite_dim)
            entries.append(entry)
        merge_projector_config(self.log_dir, entries)
