"""trainviz on a run shaped like a user's: a LightningModule and data written without trainviz in mind
(torchvision FakeData through a ``Compose([ToTensor(), Normalize])`` pipeline, dict items, a ``Subset``), and the
resume and checkpoint cases of real runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import _support
import pytest
import pytorch_lightning as pl
import torch
from _support import DictItems
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset
from torchvision import transforms
from torchvision.datasets import FakeData

import trainviz
from trainviz.callbacks.base import ProbeCallback
from trainviz.ops.corruptions import corrupt

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
ROBUST = dict(
    corruptions=["grayscale", "gaussian_blur_3x3", "gaussian_noise"],
    severities=[1],
    epsilons=[4 / 255],
    flip_max_steps=2,
    probe_size=16,
)


class UserModule(pl.LightningModule):
    """A LightningModule as a user writes it: dict batches, its own small CNN."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(8, classes)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))

    def training_step(self, batch, _):
        return nn.functional.cross_entropy(self(batch["image"]), batch["label"])

    def validation_step(self, batch, _):
        self.log("val_loss", nn.functional.cross_entropy(self(batch["image"]), batch["label"]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _pipeline(normalize: bool = True):
    steps = [transforms.ToTensor()] + ([transforms.Normalize(MEAN, STD)] if normalize else [])
    return transforms.Compose(steps)


def _loaders(normalize: bool = True):
    train = DictItems(
        FakeData(size=48, image_size=(3, 16, 16), num_classes=4, transform=_pipeline(normalize), random_offset=0)
    )
    val = DictItems(
        Subset(
            FakeData(size=40, image_size=(3, 16, 16), num_classes=4, transform=_pipeline(normalize), random_offset=100),
            range(32),
        )
    )
    return DataLoader(train, batch_size=16), DataLoader(val, batch_size=16)


def _fit(root, callbacks, epochs=1, **kw):
    # a plain function (tests/callbacks/test_robustness_callback.py imports it), so the plain make_trainer
    pl.seed_everything(0, verbose=False)
    model = UserModule()
    trainer = _support.make_trainer(root, callbacks, max_epochs=epochs, **kw)
    trainer.fit(model, *_loaders())
    return model, trainer


def _records(root: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (root / "trainviz" / name / "metrics.jsonl").read_text().splitlines()]


def test_torchvision_normalize_is_inferred_and_corruptions_see_the_real_pixels(tmp_path):
    inferred = trainviz.RobustnessCallback(**ROBUST)
    model, _ = _fit(tmp_path / "inferred", [inferred, trainviz.RunManifestCallback()])
    assert inferred.norm_source == "transform" and inferred.norm.std == pytest.approx(STD)
    manifest = json.loads((tmp_path / "inferred" / "trainviz" / "manifest" / "manifest.json").read_text())
    (entry,) = manifest["probe_sets"].values()
    assert entry["normalization"] == {
        "mean": pytest.approx(list(MEAN)),
        "std": pytest.approx(list(STD)),
        "source": "transform",
    }

    # The same numbers with the normalisation given explicitly.
    explicit = trainviz.RobustnessCallback(normalization=(MEAN, STD), **ROBUST)
    _fit(tmp_path / "explicit", [explicit])
    assert explicit.norm_source == "callback"
    a, b = _records(tmp_path / "inferred", "robustness"), _records(tmp_path / "explicit", "robustness")
    assert a == b

    # Recomputed by hand from the un-normalised photos: grayscale and blur accuracies of the record are the
    # model's accuracy on Normalize(corrupt(pixels)), where pixels never went through a clamp.
    pixels_ds = FakeData(size=40, image_size=(3, 16, 16), num_classes=4, transform=_pipeline(False), random_offset=100)
    ids = inferred.probe.ids.tolist()
    pixels = torch.stack([pixels_ds[i][0] for i in ids])
    labels = inferred.probe.labels
    model.eval()
    for row in a[0]["table"]:
        corrupted = corrupt(pixels, row["corruption"], row["severity"], seed=inferred.probe_seed)
        with torch.no_grad():
            expected = (model(inferred.norm.normalize(corrupted)).argmax(1) == labels).double().mean().item()
        assert row["accuracy"] == pytest.approx(expected), row["corruption"]


def test_normalised_tensors_without_information_fail_before_the_first_epoch(tmp_path, make_trainer):
    pixels = torch.rand(32, 3, 8, 8)
    normalised = (pixels - 0.5) / 0.2
    data = TensorDataset(normalised, torch.arange(32) % 4)

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(
                nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4)
            )
            self.steps = 0

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            self.steps += 1
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model = Net()
    trainer = make_trainer(tmp_path, [trainviz.RobustnessCallback(**ROBUST)], max_epochs=1)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]: per-channel range \[-2\.\d+, 2\.\d+\]") as err:
        trainer.fit(model, DataLoader(data, batch_size=8), DataLoader(data, batch_size=8))
    assert "default_callbacks(normalization=" in str(err.value) and model.steps == 0
    # given the mapping, the same data runs
    trainer = make_trainer(
        tmp_path, [trainviz.RobustnessCallback(normalization=((0.5,) * 3, (0.2,) * 3), **ROBUST)], max_epochs=1
    )
    trainer.fit(model, DataLoader(data, batch_size=8), DataLoader(data, batch_size=8))


def test_a_shared_normalization_and_the_datamodule_attribute(tmp_path, tiny_dm, demo_model, make_trainer):
    callbacks = trainviz.default_callbacks(budget=None, normalization=tiny_dm.normalization, embedding=False, cam=False)
    probes = [cb for cb in callbacks if isinstance(cb, ProbeCallback)]
    trainer = make_trainer(tmp_path, callbacks, max_epochs=1, limit_train_batches=1)
    trainer.fit(demo_model(), tiny_dm)
    assert {cb.norm_source for cb in probes} == {"default_callbacks"}
    own = trainviz.DynamicsCallback(probe_size=8)
    make_trainer(tmp_path / "dm", [own], max_epochs=1, limit_train_batches=1).fit(demo_model(), tiny_dm)
    assert own.norm_source == "datamodule" and own.norm == tiny_dm.normalization


# ------------------------------------------------------------------------------------ resume, checkpoints
def test_resume_with_a_validation_split_smaller_than_the_probe_size(tmp_path, demo_model, make_trainer):
    from trainviz.data import ShapesDataModule

    ckpt = tmp_path / "ckpt"
    first = trainviz.DynamicsCallback(probe_size=40)
    trainer = make_trainer(
        tmp_path, [first, ModelCheckpoint(dirpath=ckpt, save_last=True)], max_epochs=1, enable_checkpointing=True
    )
    trainer.fit(demo_model(), ShapesDataModule(n_train=64, n_val=48, batch_size=32))
    second = trainviz.DynamicsCallback(probe_size=40)
    trainer = make_trainer(tmp_path, [second], max_epochs=2, enable_checkpointing=True)
    trainer.fit(demo_model(), ShapesDataModule(n_train=64, n_val=24, batch_size=32), ckpt_path=str(ckpt / "last.ckpt"))
    assert second.probe.ids.tolist() == first.probe.ids.tolist() and second.done_epochs == [0, 1]
    # without a checkpoint, the small split is still refused before the first epoch
    with pytest.raises(ValueError, match="probe_size.*24 examples"):
        make_trainer(tmp_path / "new", [trainviz.DynamicsCallback(probe_size=40)], max_epochs=1).fit(
            demo_model(), ShapesDataModule(n_train=64, n_val=24, batch_size=32)
        )


def test_checkpoint_saved_at_the_epoch_end_validation_knows_its_epoch_was_probed(
    tmp_path, tiny_dm, demo_model, make_trainer
):
    ckpt = tmp_path / "ckpt"
    first = trainviz.DynamicsCallback(probe_size=12)
    saver = ModelCheckpoint(dirpath=ckpt, save_last=True)  # saves at validation end, before the epoch's probe
    trainer = make_trainer(tmp_path, [first, saver], max_epochs=2, check_val_every_n_epoch=2, enable_checkpointing=True)
    trainer.fit(demo_model(), tiny_dm)
    saved = torch.load(ckpt / "last.ckpt", weights_only=False)["callbacks"][first.state_key]
    assert saved["done_epochs"] == [0] and saved["pending_epoch"] == 1
    second = trainviz.DynamicsCallback(probe_size=12)
    trainer = make_trainer(tmp_path, [second], max_epochs=3, check_val_every_n_epoch=2, enable_checkpointing=True)
    trainer.fit(demo_model(), tiny_dm, ckpt_path=str(ckpt / "last.ckpt"))
    assert second.done_epochs == [0, 1, 2]
    assert [r["epoch"] for r in _records(tmp_path, "dynamics")] == [0, 1, 2]  # epoch 1's artifacts were kept


def test_yaml_takes_a_mean_std_pair_and_a_budget(tmp_path, monkeypatch):
    import sys

    from trainviz.data import Normalization

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    from cli import main

    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(
        "trainer:\n  callbacks:\n    - class_path: trainviz.RobustnessCallback\n      init_args:\n"
        "        normalization: [[0.5, 0.5, 0.5], [0.25, 0.25, 0.25]]\n        budget: 0.05\n"
    )
    cli = main(
        args=["--config", str(config), "--model", "trainviz.models.DemoClassifier", "--trainer.logger", "false"],
        run=False,
    )
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, trainviz.RobustnessCallback)]
    assert cb.normalization == Normalization((0.5,) * 3, (0.25,) * 3) and cb.budget == 0.05


def test_shared_writers_are_closed_after_the_fit_and_a_second_fit_gets_new_ones(
    tmp_path, tiny_dm, demo_model, make_trainer
):
    from trainviz.sinks import registry

    for _run in range(2):  # the same folder, twice in one process
        callbacks = [trainviz.DynamicsCallback(probe_size=8), trainviz.RunManifestCallback()]
        trainer = make_trainer(
            tmp_path, callbacks, max_epochs=1, limit_train_batches=1, logger=False, default_root_dir=str(tmp_path)
        )
        trainer.fit(demo_model(), tiny_dm)
        assert os.path.abspath(str(tmp_path)) not in registry.open_folders(trainer)  # released at the last teardown
        background = callbacks[0].sink.background
        assert background._thread is None  # its writer thread was closed
        assert [r["epoch"] for r in _records(tmp_path, "dynamics")] == [0]
    assert not (tmp_path / "tensorboard").exists()  # no logger: the artifact store alone, no private TensorBoard
