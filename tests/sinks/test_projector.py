"""Projector files: read back by TensorBoard's own projector plugin (through a server on 127.0.0.1 and its file
readers), a config merged across writers (a resumed run keeps earlier epochs), the sprite layout, and the text
fallback for tensors whose bytes look like UTF-8."""

from __future__ import annotations

import io
import json
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image

from trainviz.sinks import BackgroundWriter
from trainviz.sinks.projector import (
    CONFIG_NAME,
    ProjectorWriter,
    _tensor_file,
    merge_projector_config,
    read_projector_config,
    sprite_grid,
)


def start_tensorboard(logdir) -> str:
    """A TensorBoard server on 127.0.0.1 (a fresh one: the projector reads its config when it starts)."""
    from tensorboard import program

    server = program.TensorBoard()
    server.configure(argv=[None, "--logdir", str(logdir), "--port", "0", "--host", "127.0.0.1"])
    return server.launch().rstrip("/")


def get(url: str, path: str, **params) -> bytes:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{url}{path}{query}", timeout=30) as response:
        return response.read()


def projector_info(url: str, run: str) -> dict:
    """The projector's config for ``run``, once the plugin reports itself active."""
    deadline = time.time() + 30
    while time.time() < deadline:
        if json.loads(get(url, "/data/plugins_listing")).get("projector", {}).get("enabled"):
            break
        time.sleep(0.2)
    assert run in json.loads(get(url, "/data/plugin/projector/runs"))
    return json.loads(get(url, "/data/plugin/projector/info", run=run))


def write_epochs(log_dir, epochs, n=30, dim=5, writer=None):
    rng = np.random.default_rng(0)
    writer = writer or ProjectorWriter(log_dir, "probe", BackgroundWriter(synchronous=True))
    tensors = {}
    for e in epochs:
        tensors[e] = rng.normal(size=(n, dim)).astype(np.float32)
        meta = {
            "id": list(range(n)),
            "label": [f"class {i % 3}" for i in range(n)],
            "correct": [i % 2 == 0 for i in range(n)],
        }
        writer.add_epoch(e, {f"fc@epoch{e}": tensors[e]}, meta)
    return writer, tensors


def test_tensorboard_serves_tensors_metadata_and_sprite_and_a_new_writer_keeps_earlier_epochs(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, size=(30, 8, 8, 3), dtype=np.uint8)
    first = ProjectorWriter(tmp_path, "probe", BackgroundWriter(synchronous=True))
    first.sprite(images)
    _, tensors = write_epochs(tmp_path, [0, 1], writer=first)
    second = ProjectorWriter(tmp_path, "probe", BackgroundWriter(synchronous=True))  # a resumed run: new writer
    second.sprite(images)
    _, later = write_epochs(tmp_path, [2], writer=second)
    tensors.update(later)

    url = start_tensorboard(tmp_path)
    info = projector_info(url, ".")
    names = [e["tensorName"] for e in info["embeddings"]]
    assert names == ["fc@epoch0", "fc@epoch1", "fc@epoch2"]
    for e in range(3):
        raw = get(url, "/data/plugin/projector/tensor", run=".", name=f"fc@epoch{e}")
        np.testing.assert_array_equal(np.frombuffer(raw, dtype="<f4").reshape(30, 5), tensors[e])
        table = get(url, "/data/plugin/projector/metadata", run=".", name=f"fc@epoch{e}").decode().splitlines()
        assert table[0].split("\t") == ["id", "label", "correct"] and len(table) == 31
        assert table[4].split("\t") == ["3", "class 0", "False"]
    sprite = Image.open(io.BytesIO(get(url, "/data/plugin/projector/sprite_image", run=".", name="fc@epoch2")))
    assert sprite.size == (6 * 8, 6 * 8)  # ceil(sqrt(30)) = 6 tiles a side
    np.testing.assert_array_equal(np.asarray(sprite)[8:16, 0:8], images[6])  # row 1, column 0
    entry = info["embeddings"][1]
    assert [int(v) for v in entry["tensorShape"]] == [30, 5] and [
        int(v) for v in entry["sprite"]["singleImageDim"]
    ] == [8, 8]


def test_merge_keeps_order_and_replaces_an_entry_of_the_same_name(tmp_path):
    from tensorboard.plugins.projector.projector_config_pb2 import EmbeddingInfo

    merge_projector_config(
        tmp_path, [EmbeddingInfo(tensor_name="a", tensor_path="a.tsv"), EmbeddingInfo(tensor_name="b")]
    )
    merged = merge_projector_config(
        tmp_path, [EmbeddingInfo(tensor_name="a", tensor_path="a2.tsv"), EmbeddingInfo(tensor_name="c")]
    )
    assert [(e.tensor_name, e.tensor_path) for e in merged.embeddings] == [("a", "a2.tsv"), ("b", ""), ("c", "")]
    assert read_projector_config(tmp_path) == merged
    assert [p.name for p in tmp_path.iterdir()] == [CONFIG_NAME]  # written atomically: no temporary file left


def test_sprite_grid_layout_and_shrinking():
    images = np.arange(5 * 2 * 3 * 3, dtype=np.uint8).reshape(5, 2, 3, 3)
    sprite, dim = sprite_grid(images)
    assert sprite.shape == (3 * 2, 3 * 3, 3) and dim == (3, 2)
    np.testing.assert_array_equal(sprite[2:4, 3:6], images[4])  # row 1, column 1
    assert not sprite[4:].any()  # rows after the last image stay black
    big = np.full((10, 40, 40, 3), 200, np.uint8)
    small, dim = sprite_grid(big, max_side=64)  # 4 tiles a side: 16 px each
    assert dim == (16, 16) and small.shape == (64, 64, 3) and (small[:16, :16] == 200).all()
    with pytest.raises(ValueError, match="uint8 images"):
        sprite_grid(np.zeros((2, 4, 4)))


def test_tensor_bytes_that_decode_as_utf8_are_written_as_text_and_the_plugin_reads_both(tmp_path):
    from tensorboard.plugins.projector.projector_plugin import _read_tensor_binary_file, _read_tensor_tsv_file

    def plugin_read(path, shape):  # the plugin's own order: text first, binary on a decoding error
        try:
            return _read_tensor_tsv_file(str(path))
        except UnicodeDecodeError:
            return _read_tensor_binary_file(str(path), shape)

    values = {
        "zeros": np.zeros((4, 3), np.float32),  # bytes 0x00: valid UTF-8, so they must go as text
        "random": np.random.default_rng(0).normal(size=(50, 7)).astype(np.float32),
    }
    writer = ProjectorWriter(tmp_path, "k", BackgroundWriter(synchronous=True))
    for name, array in values.items():
        ext, _ = _tensor_file(array)
        assert ext == ("tsv" if name == "zeros" else "f32")
        writer.add_epoch(0, {name: array}, {"id": list(range(len(array))), "label": ["x"] * len(array)})
    for entry in read_projector_config(tmp_path).embeddings:
        read = plugin_read(tmp_path / entry.tensor_path, list(entry.tensor_shape))
        np.testing.assert_array_equal(read, values[entry.tensor_name])


def test_bad_inputs_fail_with_clear_messages(tmp_path):
    with pytest.raises(ValueError, match="key"):
        ProjectorWriter(tmp_path, "../up", BackgroundWriter(synchronous=True))
    writer = ProjectorWriter(tmp_path, "k", BackgroundWriter(synchronous=True))
    with pytest.raises(ValueError, match="same number of rows"):
        writer.add_epoch(0, {"a": np.zeros((3, 2))}, {"id": [0, 1]})
