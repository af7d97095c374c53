"""DecoderMapCallback in real (short) fits: what it writes, that it matches the model, resume, other models,
setup errors, and that it leaves no trace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelCheckpoint
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from trainviz.callbacks.decoder_maps import DecoderMapCallback
from trainviz.core.hooks import count_hooks
from trainviz.models import DemoClassifier
from trainviz.models.lightning import ClassMapClassifier
from trainviz.ops.class_maps import logits_and_maps, normalize_maps

K = 6
NAMES = ["circle", "square", "triangle", "cross", "ring", "bar"]
PREFIX = "trainviz/decoder_maps/"


DM_SIZES = (240, 120, 48)  # the `dm` fixture's n_train, n_val, batch_size


def classmap_model(seed: int = 0) -> ClassMapClassifier:
    torch.manual_seed(seed)
    return ClassMapClassifier(num_classes=K, in_channels=3, encoder="small")


class TinyMapNet(pl.LightningModule):
    """Not a trainviz model: a conv stem, a conv head with one channel per class, then GAP."""

    def __init__(self, num_classes: int = K) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(x)).mean((2, 3))

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


@pytest.fixture(scope="session")
def fit(make_trainer):
    def fit(root: Path, model, dm, callbacks, epochs: int = 2, **kwargs) -> pl.Trainer:
        pl.seed_everything(0, verbose=False)
        trainer = make_trainer(root, callbacks, max_epochs=epochs, **kwargs)
        trainer.fit(model, dm)
        return trainer

    return fit


def events(root: Path) -> EventAccumulator:
    acc = EventAccumulator(str(root), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_fit_writes_what_it_documents_matches_the_model_and_leaves_no_trace(tmp_path, dm, fit):
    plain = classmap_model()
    fit(tmp_path / "plain", plain, dm, [])
    next_plain = torch.rand(3)
    cb = DecoderMapCallback(probe_size=60, n_tracked=3, n_grid=2, n_examples=4, strict=True)
    model = classmap_model()
    fit(tmp_path / "probed", model, dm, [cb])
    assert torch.equal(torch.rand(3), next_plain), "the global RNG stream changed"
    for (name, a), (_, b) in zip(plain.state_dict().items(), model.state_dict().items(), strict=True):
        assert torch.equal(a, b), f"{name} differs with the callback"
    assert count_hooks(model) == 0
    assert cb.layer_name == "net.decoder.class_maps" and cb.done_epochs == [0, 1]

    # artifacts: the saved maps are eq. 10 of the model's own maps (the model after epoch 1 is the final one)
    store = cb.sink.store
    saved = store.read_npz("decoder_maps/epoch_0001/maps.npz")
    assert saved["maps"].dtype == np.float16 and saved["maps"].shape == (60, K, 16, 16)
    model.eval()
    logits, raw = logits_and_maps(model, "net.decoder.class_maps", cb.probe.images)
    np.testing.assert_allclose(saved["maps"].astype(np.float32), normalize_maps(raw).numpy(), atol=1e-3)
    np.testing.assert_allclose(saved["probs"], logits.softmax(1).numpy(), atol=1e-5)
    assert saved["labels"].tolist() == cb.probe.labels.tolist() and saved["counts"].sum() == 60
    records = store.read_jsonl("decoder_maps/metrics.jsonl")
    assert [r["epoch"] for r in records] == [0, 1] and records[0]["stability"] is None
    accuracy = (saved["probs"].argmax(1) == saved["labels"]).mean()
    assert records[1]["accuracy"] == pytest.approx(accuracy)
    assert records[1]["n_correct"] + records[1]["n_wrong"] == 60
    formation = store.read_json("decoder_maps/formation.json")
    assert formation["epochs"] == [0, 1] and set(formation["formed_at"]) == set(NAMES)
    assert (store.root / "decoder_maps/epoch_0001/evolution.png").exists()

    # TensorBoard: only documented keys; every defined metric is a scalar with the jsonl's value
    acc = events(tmp_path / "probed")
    scalars = {t for t in acc.Tags()["scalars"] if t.startswith(PREFIX)}
    images = {t for t in acc.Tags()["images"] if t.startswith(PREFIX)}
    documented = {f"stability/{n}" for n in NAMES} | {"mean_stability", "seconds"}
    documented |= {f"sharpness/{k}" for k in ("corr_correct", "corr_wrong", "mean_correct", "mean_wrong")}
    assert {t[len(PREFIX) :] for t in scalars} <= documented
    assert {PREFIX + "seconds", PREFIX + "sharpness/mean_correct", PREFIX + "sharpness/mean_wrong"} <= scalars
    for name, value in records[1]["sharpness"].items():
        if value is not None:
            assert acc.Scalars(PREFIX + f"sharpness/{name}")[-1].value == pytest.approx(value, rel=1e-5)
    for name, value in records[1]["stability"].items():
        if value is not None:
            assert acc.Scalars(PREFIX + f"stability/{name}")[-1].value == pytest.approx(value, rel=1e-5)
    assert {PREFIX + n for n in ("class_maps", "class_means", "evolution")} <= images
    assert images & {PREFIX + "correct", PREFIX + "wrong"}
    assert [e.step for e in acc.Images(PREFIX + "class_maps")] == [0, 1]
    assert [e.step for e in acc.Images(PREFIX + "evolution")] == [1]
    assert any(t.startswith(PREFIX + "formation_epochs") for t in acc.Tags()["tensors"])


def test_resume_from_a_checkpoint_covers_every_epoch(tmp_path, dm, fit, make_trainer):
    ckpt = tmp_path / "ckpt"
    first = DecoderMapCallback(probe_size=48, n_tracked=2, strict=True)
    saver = ModelCheckpoint(dirpath=ckpt, save_last=True)
    fit(tmp_path / "a", classmap_model(), dm, [first, saver], enable_checkpointing=True)
    second = DecoderMapCallback(probe_size=48, n_tracked=2, strict=True)
    saver = ModelCheckpoint(dirpath=ckpt, save_last=True)
    trainer = make_trainer(tmp_path / "b", [second, saver], max_epochs=4, enable_checkpointing=True)
    trainer.fit(classmap_model(seed=1), dm, ckpt_path=str(ckpt / "last.ckpt"))
    assert second.done_epochs == [0, 1, 2, 3]
    assert second.tracker.epochs == [0, 1, 2, 3] and sorted(second.tracked_maps) == [0, 1, 2, 3]
    assert second.tracker.stability().shape == (3, K)
    # written into a new log folder: the fit-end outputs come from checkpointed state, not old artifacts
    formation = second.sink.store.read_json("decoder_maps/formation.json")
    assert formation["epochs"] == [0, 1, 2, 3]
    assert all(len(v) == 3 for v in formation["stability"].values())
    strip = events(tmp_path / "b").Images(PREFIX + "evolution")[-1]
    one_column = second.tracked_maps[0].shape[-1]  # 16x16 maps; tiles are the 32x32 images upscaled to 96
    assert strip.step == 3 and strip.width == 5 * (96 + 2) + 2 and one_column == 16


def test_a_model_from_elsewhere_works_via_layer(tmp_path, dm, fit):
    cb = DecoderMapCallback(layer="head", probe_size=36, strict=True)
    model = TinyMapNet()
    trainer = fit(tmp_path, model, dm, [cb], epochs=1)
    assert cb.done_epochs == [0] and cb.layer_name == "head"
    assert count_hooks(model) == 0
    saved = cb.sink.store.read_npz("decoder_maps/epoch_0000/maps.npz")
    assert saved["maps"].shape == (36, K, 16, 16)
    assert PREFIX + "class_maps" in events(tmp_path).Tags()["images"]

    # a probe run under inference mode (as from a validation hook) changes neither BN stats nor flags
    model.train()
    model.stem[1].eval()  # a mixed-mode model: one frozen BatchNorm
    flags = [m.training for m in model.modules()]
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    with torch.inference_mode():
        cb.run(trainer, model, epoch=7)
    assert 7 in cb.done_epochs and cb.failures == 0
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(buffers[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert count_hooks(model) == 0

    # a probe that dies mid-forward (its capture hook placed) warns, and leaves no hook behind
    def explode(x):
        raise RuntimeError("head exploded")

    cb.strict = False
    model.head.forward = explode
    with pytest.warns(UserWarning, match="DecoderMapCallback probe failed at epoch 8 .*layer 'head'.*head exploded"):
        cb.run(trainer, model, epoch=8)
    del model.head.forward
    assert cb.failures == 1 and 8 not in cb.done_epochs
    assert count_hooks(model) == 0


@pytest.mark.parametrize(
    "layer, model, message",
    [
        (
            "stem",
            TinyMapNet,
            r"DecoderMapCallback: Expected layer 'stem' to output per-class maps.* K = 6.*\(2, 8, 16, 16\)",
        ),
        ("haed", TinyMapNet, r"Layer 'haed' not found.*Closest matches: 'head'"),
        ("decoder.class_maps", lambda: DemoClassifier(K, 3), r"Layer 'decoder.class_maps' not found"),
    ],
)
def test_a_wrong_layer_fails_at_setup(tmp_path, dm, layer, model, message, make_trainer):
    trainer = make_trainer(tmp_path, [DecoderMapCallback(layer=layer, probe_size=12)], max_epochs=1)
    net = model()
    with pytest.raises(ValueError, match=message):
        trainer.fit(net, dm)
    assert trainer.current_epoch == 0 and count_hooks(net) == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_tracked": 0}, r"Expected `n_tracked` to be a positive int, got 0"),
        ({"n_grid": 2.5}, r"Expected `n_grid` to be a positive int, got 2.5"),
        ({"n_examples": -1}, r"Expected `n_examples` to be a positive int, got -1"),
        ({"stability_threshold": 0}, r"Expected `stability_threshold` to be a float in \(0, 1\], got 0"),
        ({"stability_threshold": 1.2}, r"Expected `stability_threshold` to be a float in \(0, 1\], got 1.2"),
        ({"sharpness": "gini"}, r"Expected `sharpness` to be one of 'peak_to_mean', 'entropy'; got 'gini'"),
        ({"layer": ""}, r"Expected `layer` to be a non-empty layer name"),
        ({"every_n_epochs": 0}, r"Expected `every_n_epochs` to be a positive int, got 0"),
    ],
)
def test_arguments_are_checked_in_init(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DecoderMapCallback(**kwargs)


def test_two_instances_on_different_layers_have_different_state_keys():
    assert DecoderMapCallback(layer="head").state_key != DecoderMapCallback(layer="decoder.class_maps").state_key
