import os
import warnings

import numpy as np
import pytest
import torch

from trainviz.sinks import ArtifactStore, BackgroundWriter, Sink, atomic_write


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "a" / "file.json"
    atomic_write(target, b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["file.json"]  # no temp file left
    assert target.stat().st_mode & 0o777 == 0o644


def test_jsonl_same_epoch_written_once_and_npz_roundtrip(tmp_path):
    store = ArtifactStore(tmp_path)
    store.append_jsonl("cb/metrics.jsonl", {"epoch": 0, "acc": 0.1})
    store.append_jsonl("cb/metrics.jsonl", {"epoch": 1, "acc": 0.2})
    store.append_jsonl("cb/metrics.jsonl", {"epoch": 1, "acc": 0.3})
    assert [r["acc"] for r in store.read_jsonl("cb/metrics.jsonl")] == [0.1, 0.3]
    store.write_npz("cb/epoch_0001/x.npz", a=np.arange(3))
    assert store.read_npz("cb/epoch_0001/x.npz")["a"].tolist() == [0, 1, 2]
    assert store.epochs("cb") == [1]


def test_background_writer_order_flush_and_failure_warns_once():
    w = BackgroundWriter()
    out = []
    for i in range(50):
        w.submit(out.append, i)

    def fail():
        raise OSError("nope")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        w.submit(fail)
        w.submit(fail)
        w.flush()
    assert out == list(range(50))
    assert sum("background write failed" in str(c.message) for c in caught) == 1
    w.close()


def zlib_level(png: bytes) -> int:
    """The FLEVEL field of a PNG's zlib stream (RFC 1950): 0 for levels 0-1, 1 for 2-5, 2 for 6, 3 for 7-9."""
    import struct

    at = 8  # after the signature: chunks of length, type, data, CRC
    while True:
        length, kind = struct.unpack(">I4s", png[at : at + 8])
        if kind == b"IDAT":
            return png[at + 9] >> 6  # the second byte of the zlib header
        at += 12 + length


def test_pngs_are_encoded_at_the_fast_zlib_level_and_stay_lossless():
    import io

    from PIL import Image

    from trainviz.sinks.artifacts import PNG_LEVEL, png_bytes

    picture = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    picture[:20] = 255  # a flat band, as plots have
    fast = png_bytes(picture)
    default = io.BytesIO()
    Image.fromarray(picture).save(default, format="PNG")
    assert PNG_LEVEL == 1 and zlib_level(fast) == 0 and zlib_level(default.getvalue()) == 2  # Pillow's 6
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(fast))), picture)


def test_sink_writes_tensorboard_and_artifacts(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tb"))
    sink = Sink("demo", writer, ArtifactStore(tmp_path / "art"), background=BackgroundWriter())
    sink.scalars({"a": torch.tensor(0.5), "b": torch.tensor(2.0)}, step=3)
    sink.image("img", np.zeros((4, 5, 3), np.uint8), step=3, artifact=True)
    sink.npz(3, "t", x=torch.ones(2))
    with pytest.raises(ValueError, match="uint8"):
        sink.image("bad", np.zeros((4, 5)), step=0)
    sink.flush()
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    assert acc.Scalars("trainviz/demo/b")[0].value == 2.0 and acc.Scalars("trainviz/demo/b")[0].step == 3
    assert acc.Images("trainviz/demo/img")[0].width == 5
    assert (tmp_path / "art" / "demo" / "epoch_0003" / "img.png").exists()
    assert sink.store.read_npz("demo/epoch_0003/t.npz")["x"].tolist() == [1.0, 1.0]


def test_a_picture_is_encoded_once_for_tensorboard_and_the_artifact(tmp_path, monkeypatch):
    import io

    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    picture = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    saves = []
    save = Image.Image.save
    monkeypatch.setattr(Image.Image, "save", lambda self, *a, **k: (saves.append(1), save(self, *a, **k))[1])
    writer = SummaryWriter(str(tmp_path / "tb"))
    sink = Sink("demo", writer, ArtifactStore(tmp_path / "art"), background=BackgroundWriter())
    sink.image("img", picture, step=2, artifact=True)
    sink.image("tb_only", picture, step=2)
    sink.flush()
    writer.flush()
    assert len(saves) == 2  # one encoding per picture, not one per destination
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    acc.Reload()
    logged = acc.Images("trainviz/demo/img")[0]
    artifact = (tmp_path / "art" / "demo" / "epoch_0002" / "img.png").read_bytes()
    assert (logged.step, logged.width, logged.height) == (2, 7, 6) and logged.encoded_image_string == artifact
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(artifact))), picture)
    only = acc.Images("trainviz/demo/tb_only")[0].encoded_image_string
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(only))), picture)
    assert zlib_level(artifact) == zlib_level(only) == 0  # FLEVEL 0: zlib's fastest levels (0-1), PNG_LEVEL 1

    class OtherWriter:  # a writer that is not PyTorch's (tensorboardX): its own add_image
        def __init__(self):
            self.calls = []

        def add_image(self, tag, image, step, dataformats):
            self.calls.append((tag, image.shape, step, dataformats))

    other = OtherWriter()
    Sink("demo", other, None, background=BackgroundWriter(synchronous=True)).image("img", picture, step=1)
    assert other.calls == [("trainviz/demo/img", (6, 7, 3), 1, "HWC")]
