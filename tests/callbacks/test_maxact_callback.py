"""MaxActivationCallback under real fits: tags and artifacts, logged images equal to ``ops.maximize`` with the same
seed and weights, a user-shaped run (Normalize pipeline, dict items, a tuple-returning model), resume, no trace,
argument and setup checks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from _support import DictItems
from pytorch_lightning.callbacks import ModelCheckpoint
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import FakeData

from trainviz.callbacks.maxact import MaxActivationCallback
from trainviz.core.hooks import count_hooks
from trainviz.core.outputs import LogitsModel
from trainviz.data.base import Normalization
from trainviz.ops.maxact import maximize
from trainviz.probes.maxact import MaxActResult, image_correlation

OPTS = dict(layers=["net.features"], channels=2, units=[("net.features.1", (3, 2, 5))], steps=4, final_steps=3)
KEYS = [f"classes/{k}" for k in range(6)] + [
    "net.features/channel_0",
    "net.features/channel_1",
    "net.features.1/unit_3_2_5",
]


DM_SIZES = (96, 32, 48)  # the `dm` fixture's n_train, n_val, batch_size


@pytest.fixture(scope="session")
def fit(demo_model, make_trainer):
    def fit(root, callbacks, dm, epochs=2, model=None, **kw):
        pl.seed_everything(0, verbose=False)
        model = model or demo_model()
        trainer = make_trainer(root, callbacks, max_epochs=epochs, **kw)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*(does not have many workers|number of training batches).*")
            trainer.fit(model, dm)
        return model, trainer

    return fit


def events(root):
    acc = EventAccumulator(str(root), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_fit_logs_every_key_and_images_equal_the_op(tmp_path, dm, fit):
    cb = MaxActivationCallback(**OPTS, strict=True)
    model, _ = fit(tmp_path, [cb], dm)
    assert cb.done_epochs == [0, 1] and count_hooks(model) == 0
    assert all(p.grad is None for p in model.parameters())
    acc = events(tmp_path)
    scalars = {t for t in acc.Tags()["scalars"] if t.startswith("trainviz/maxact/")}
    expected = {f"trainviz/maxact/{k}/{m}" for k in KEYS for m in ("activation", "moved")}
    assert scalars == expected | {"trainviz/maxact/seconds"}
    groups = ["classes", "net.features", "net.features.1"]
    images = {f"trainviz/maxact/{g}/{kind}" for g in groups for kind in ("grid", "final", "evolution")}
    assert set(acc.Tags()["images"]) == images
    assert [e.step for e in acc.Scalars("trainviz/maxact/classes/2/moved")] == [1]
    assert [e.step for e in acc.Images("trainviz/maxact/classes/final")] == [1]

    store = cb.sink.store
    records = store.read_jsonl("maxact/metrics.jsonl")
    assert [r["epoch"] for r in records] == [0, 1]
    assert MaxActResult.from_record(records[1]).activation.keys() == set(KEYS)
    first, last = store.read_npz("maxact/epoch_0000/images.npz"), store.read_npz("maxact/epoch_0001/images.npz")
    assert last["keys"].tolist() == KEYS and last["images"].shape == (9, 3, 32, 32)

    # the same optimisation by hand: the final weights are the last run's
    ref = maximize(
        LogitsModel(model.eval()), cb._targets, (3, 32, 32), steps=4, seed=cb.probe_seed, normalization=cb.norm,
        tv_weight=cb.tv_weight, norm_weight=cb.norm_weight,
    )  # fmt: skip
    np.testing.assert_allclose(last["images"].astype(np.float32), ref.images.numpy(), atol=1e-3)
    np.testing.assert_allclose(last["activation"], ref.activation.numpy(), rtol=1e-4, atol=1e-4)
    assert acc.Scalars("trainviz/maxact/classes/2/activation")[-1].value == pytest.approx(
        ref.activation[2].item(), 1e-4
    )
    moved = image_correlation(torch.from_numpy(last["images"]).float(), torch.from_numpy(first["images"]).float())
    assert records[1]["moved"]["classes/2"] == pytest.approx(moved[2].item(), abs=1e-3)
    assert -1 <= min(records[1]["moved"].values()) and max(records[1]["moved"].values()) <= 1
    final = store.read_npz("maxact/epoch_0001/final.npz")
    assert final["images"].shape == (9, 3, 32, 32)
    assert (store.root / "maxact" / "epoch_0001" / "classes" / "evolution.png").exists()
    assert (store.root / "maxact" / "section.json").exists()


class TupleNet(pl.LightningModule):
    """A model not written for trainviz: returns ``(logits, features)``, dict batches."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        features = self.body(x).mean((2, 3))
        return self.head(features), features

    def training_step(self, batch, _):
        return nn.functional.cross_entropy(self(batch["image"])[0], batch["label"])

    def validation_step(self, batch, _):
        self.log("val_loss", nn.functional.cross_entropy(self(batch["image"])[0], batch["label"]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_user_shaped_run_with_normalize_and_tuple_output(tmp_path, make_trainer):
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    pipeline = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])

    def loader(offset):
        data = FakeData(size=32, image_size=(3, 16, 16), num_classes=4, transform=pipeline, random_offset=offset)
        return DataLoader(DictItems(data), batch_size=16)

    cb = MaxActivationCallback(classes=[1, 3], layers=["body.3"], channels=[0, 5], steps=3, final_steps=0, output=0)
    cb.strict = True
    pl.seed_everything(0, verbose=False)
    model = TupleNet()
    trainer = make_trainer(tmp_path, [cb], max_epochs=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*(does not have many workers|number of training batches).*")
        trainer.fit(model, loader(0), loader(100))
    assert cb.norm_source == "transform" and cb.norm == Normalization(mean, std)
    arrays = cb.sink.store.read_npz("maxact/epoch_0000/images.npz")
    assert arrays["keys"].tolist() == ["classes/1", "classes/3", "body.3/channel_0", "body.3/channel_5"]
    ref = maximize(LogitsModel(model.eval(), 0), cb._targets, (3, 16, 16), steps=3, normalization=cb.norm)
    np.testing.assert_allclose(arrays["images"].astype(np.float32), ref.images.numpy(), atol=1e-3)
    assert not (cb.sink.store.root / "maxact" / "epoch_0000" / "final.npz").exists()  # final_steps=0


def test_resume_keeps_the_previous_images_for_moved(tmp_path, dm, demo_model, fit, make_trainer):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    cb = MaxActivationCallback(classes=[0, 1], steps=3, final_steps=0, strict=True)
    fit(tmp_path, [cb, ckpt], dm, epochs=1, enable_checkpointing=True)
    first = cb.sink.store.read_npz("maxact/epoch_0000/images.npz")["images"]

    resumed = MaxActivationCallback(classes=[0, 1], steps=3, final_steps=0, strict=True)
    pl.seed_everything(0, verbose=False)
    trainer = make_trainer(tmp_path, [resumed], max_epochs=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*(does not have many workers|number of training batches).*")
        trainer.fit(demo_model(), dm, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert resumed.done_epochs == [0, 1]
    records = resumed.sink.store.read_jsonl("maxact/metrics.jsonl")
    assert [r["epoch"] for r in records] == [0, 1] and records[1]["moved"]["classes/0"] is not None
    second = resumed.sink.store.read_npz("maxact/epoch_0001/images.npz")["images"]
    moved = image_correlation(torch.from_numpy(second).float(), torch.from_numpy(first).float())
    assert records[1]["moved"]["classes/1"] == pytest.approx(moved[1].item(), abs=1e-3)
    assert [e for e, _ in resumed._history] == [0, 1]

    state = resumed.state_dict()  # and a plain state round trip
    again = MaxActivationCallback(classes=[0, 1])
    again.load_state_dict(state)
    assert set(again._previous) == {"classes/0", "classes/1"} and again.state_key == resumed.state_key
    assert torch.equal(again._previous["classes/1"], resumed._previous["classes/1"])
    assert MaxActivationCallback(classes=[0, 2]).state_key != resumed.state_key


def test_run_in_inference_mode_leaves_no_trace(tmp_path, dm, fit):
    cb = MaxActivationCallback(classes=[0], layers=["net.features"], channels=1, steps=2, final_steps=0, strict=True)
    model, trainer = fit(tmp_path, [cb], dm, epochs=1)
    model.train()
    model.net.features[1][1].eval()
    flags = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    with torch.inference_mode():
        cb.run(trainer, model, 5)
    assert 5 in cb.done_epochs and torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in model.modules()] == flags
    assert all(p.grad is None for p in model.parameters()) and count_hooks(model) == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": ["net.featurez"]}, "Layer 'net.featurez' not found"),
        ({"classes": [6]}, "Expected `classes` below the model's 6 classes"),
        ({"layers": ["net.features"], "channels": [64]}, "below its 64 channels"),
        ({"units": [("net.fc", (0, 0))]}, r"within its output shape \(6,\)"),
        ({"final_upscale": 2, "model": "flat"}, "Expected the model to take inputs 2x"),
    ],
)
def test_bad_targets_fail_at_setup(tmp_path, dm, kwargs, message, demo_model, make_trainer):
    model = demo_model()
    if kwargs.pop("model", None) == "flat":
        model.net.pool = nn.Flatten()  # flatten + linear: only the training size fits
        model.net.fc = nn.Linear(64 * 8 * 8, 6)
    cb = MaxActivationCallback(steps=1, **kwargs)
    trainer = make_trainer(tmp_path, [cb], max_epochs=1)
    with pytest.raises(ValueError, match=message):
        trainer.fit(model, dm)
    assert trainer.current_epoch == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": [1, 1]}, "Expected `classes` to be a list of distinct non-negative ints"),
        ({"classes": [-1]}, "Expected `classes`"),
        ({"classes": []}, "Expected at least one target"),
        ({"layers": "net.features"}, "Expected `layers` to be a list"),
        ({"layers": ["a"], "channels": 0}, "Expected `channels` to be a positive int"),
        ({"layers": ["a"], "channels": {"b": [1]}}, "keys of `channels`"),
        ({"units": [("a",)]}, "Expected each of `units`"),
        ({"units": [("a", [-1])]}, "units index"),
        ({"steps": 0}, "Expected `steps` to be a positive int"),
        ({"final_steps": -1}, "Expected `final_steps`"),
        ({"final_upscale": 0}, "Expected `final_upscale`"),
        ({"lr": 0}, "Expected `lr` to be a positive number"),
        ({"tv_weight": -1}, "Expected `tv_weight`"),
        ({"norm_weight": float("nan")}, "Expected `norm_weight`"),
        ({"edge_weight": -0.1}, "Expected `edge_weight`"),
        ({"smoothing": -1.0}, "Expected `smoothing`"),
        ({"robust": 1}, "Expected `robust` to be a bool"),
        ({"max_strip": 0}, "Expected `max_strip`"),
    ],
)
def test_arguments_are_checked_in_init(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MaxActivationCallback(**kwargs)
