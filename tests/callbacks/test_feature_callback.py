"""FeatureMapCallback under real fits: the demo model, a user-shaped run (torchvision Normalize, dict items, a tuple
output), seed 001's 2-D toy, one forward per batch, state across a resume, hygiene and argument checks."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from _support import DictItems
from pytorch_lightning.callbacks import ModelCheckpoint
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision import transforms
from torchvision.datasets import FakeData

from trainviz.callbacks.features import FeatureMapCallback
from trainviz.core.hooks import count_hooks

LAYERS = ["net.features.0", "net.features"]
METRICS = ["dead_fraction", "mean", "std", "sparsity"]


@pytest.fixture(scope="session")
def fit(make_trainer):
    def fit(root, callbacks, model, *data, epochs=2, ckpt_path=None, **kwargs):
        pl.seed_everything(0, verbose=False)
        trainer = make_trainer(root, callbacks, max_epochs=epochs, **kwargs)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*(does not have many workers|number of training batches).*")
            trainer.fit(model, *data, ckpt_path=ckpt_path)
        return model, trainer

    return fit


def events(root):
    acc = EventAccumulator(str(root), size_guidance={"images": 0, "scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def test_demo_fit_writes_every_key_and_keeps_its_channels(tmp_path, dm, demo_model, fit):
    cb = FeatureMapCallback(
        layers=LAYERS, filter_layers=["net.features.2.0"], probe_size=16, n_channels=3, n_images=2, strict=True
    )
    model, _ = fit(tmp_path, [cb], demo_model(), dm)
    assert cb.done_epochs == [0, 1] and count_hooks(model) == 0
    assert list(cb._filters) == ["net.features.0.0", "net.features.2.0"] and cb._lines == {}  # no Linear(2, k)
    acc = events(tmp_path)
    scalars = {f"trainviz/features/{layer}/{m}" for layer in LAYERS for m in METRICS} | {"trainviz/features/seconds"}
    assert {t for t in acc.Tags()["scalars"] if t.startswith("trainviz/")} == scalars
    images = {f"trainviz/features/{layer}/{kind}" for layer in LAYERS for kind in ("overlay", "maps", "histogram")}
    images |= {"trainviz/features/net.features.0.0/filters", "trainviz/features/net.features.2.0/filters"}
    assert set(acc.Tags()["images"]) == images
    assert set(acc.Tags()["histograms"]) == {f"trainviz/features/{layer}/activations" for layer in LAYERS}
    assert [e.step for e in acc.Scalars("trainviz/features/net.features/dead_fraction")] == [0, 1]
    for layer in LAYERS:
        assert all(0 <= e.value <= 1 for e in acc.Scalars(f"trainviz/features/{layer}/sparsity"))
    records = cb.sink.store.read_jsonl("features/metrics.jsonl")
    assert [r["epoch"] for r in records] == [0, 1]
    assert records[0]["channels"] == records[1]["channels"] == cb.channels  # chosen once, shown every epoch
    arrays = cb.sink.store.read_npz("features/epoch_0001/features.npz")
    assert arrays["maps/net.features"].shape == (2, 3, 8, 8) and arrays["hist/net.features.0"].size == 4096
    assert arrays["channels/net.features"].tolist() == cb.channels["net.features"]
    assert arrays["shown_ids"].tolist() == cb.probe.ids[cb.example_indices(2)].tolist()
    assert (cb.sink.store.root / "features" / "epoch_0000" / "net.features.0.0" / "filters.png").exists()
    assert (cb.sink.store.root / "features" / "section.json").exists()


def test_one_forward_per_probe_batch_and_no_trace(tmp_path, dm, demo_model, fit):
    cb = FeatureMapCallback(layers=LAYERS, probe_size=20, batch_size=8, strict=True)
    model, trainer = fit(tmp_path, [cb], demo_model(), dm, epochs=1)
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    model.train()
    flags = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    try:
        with torch.inference_mode():
            cb.run(trainer, model, 5)
    finally:
        handle.remove()
    assert 5 in cb.done_epochs
    assert len(calls) == math.ceil(20 / 8)  # every layer of a batch from one forward
    assert [m.training for m in model.modules()] == flags and torch.equal(torch.random.get_rng_state(), rng)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k  # BatchNorm statistics included
    assert all(p.grad is None for p in model.parameters()) and count_hooks(model) == 0


# ------------------------------------------------------------------------------------------ user-shaped runs
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


class TupleNet(pl.LightningModule):
    """Written without trainviz in mind: dict batches, returns ``(logits, features)``."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU())
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


def test_user_run_normalised_dict_items_and_a_tuple_output(tmp_path, fit):
    pipeline = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    data = [
        DictItems(FakeData(size=n, image_size=(3, 16, 16), num_classes=4, transform=pipeline, random_offset=o))
        for n, o in ((32, 0), (24, 100))
    ]
    cb = FeatureMapCallback(probe_size=12, output=0, n_images=3, n_channels=2, strict=True)
    model, _ = fit(tmp_path, [cb], TupleNet(), *(DataLoader(d, batch_size=12) for d in data), epochs=1)
    assert cb.norm_source == "transform" and cb.norm.std == pytest.approx(STD)
    assert list(cb._layers) == ["body"] and list(cb._filters) == ["body.0"]  # "auto": the last 4-D output
    assert cb.done_epochs == [0] and count_hooks(model) == 0
    # the overlays are drawn on the pixels (Normalize undone), the shown images one per class first
    from trainviz.probes.features import compute

    with torch.no_grad():
        result = compute(cb.logits_model(model.eval()), cb.probe, cb._config(), epoch=0, channels=cb.channels)
    shown = cb.example_indices(3)
    pixels = torch.stack(
        [
            FakeData(
                size=24, image_size=(3, 16, 16), num_classes=4, random_offset=100, transform=transforms.ToTensor()
            )[int(i)][0]
            for i in cb.probe.ids[shown]
        ]
    )
    assert torch.allclose(result.pixels, pixels, atol=1e-5)
    images = set(events(tmp_path).Tags()["images"])
    assert {"trainviz/features/body/overlay", "trainviz/features/body.0/filters"} <= images


class Toy(pl.LightningModule):
    """Seed 001's toy: a one-hidden-layer network on 2-D points."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(2, 20), nn.ReLU(), nn.Linear(20, 2))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, _):
        self.log("val_loss", nn.functional.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def _disc(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g) * 2 - 1  # points in [-1, 1]^2, class 1 inside the disc
    return TensorDataset(x, (x.norm(dim=1) < 0.7).long())


def test_seed_001_toy_draws_each_unit_as_a_line_over_the_points(tmp_path, fit):
    cb = FeatureMapCallback(probe_size=64, strict=True)
    train, val = _disc(256, 0), _disc(128, 1)
    model, _ = fit(tmp_path, [cb], Toy(), DataLoader(train, batch_size=64), DataLoader(val, batch_size=64))
    assert cb.input_shape == (2,) and cb.probe.images.shape == (64, 2, 1, 1)
    assert list(cb._layers) == ["net.1"] and list(cb._lines) == ["net.0"] and cb._filters == {}
    acc = events(tmp_path)
    assert set(acc.Tags()["images"]) == {"trainviz/features/net.0/lines", "trainviz/features/net.1/histogram"}
    assert {f"trainviz/features/net.1/{m}" for m in METRICS} <= set(acc.Tags()["scalars"])
    arrays = cb.sink.store.read_npz("features/epoch_0001/features.npz")
    points = arrays["lines/net.0/points"]
    np.testing.assert_allclose(points, val.tensors[0][cb.probe.ids].numpy(), atol=1e-6)  # the probe inputs
    w, b = model.net[0].weight.detach().numpy(), model.net[0].bias.detach().numpy()
    np.testing.assert_allclose(arrays["lines/net.0/weight"], w)  # the last epoch's weights
    ends, visible = arrays["lines/net.0/segments"], arrays["lines/net.0/visible"]
    assert visible.sum() > 0
    assert np.abs(np.einsum("kij,kj->ki", ends, w) + b[:, None])[visible].max() < 1e-4  # on w.x + b = 0
    x0, x1, y0, y1 = arrays["lines/net.0/box"]
    assert x0 < points[:, 0].min() and x1 > points[:, 0].max() and y0 < points[:, 1].min()
    # the dead fraction of the hidden ReLU by hand: units never > 0 on the probe points
    hidden = np.maximum(points @ w.T + b, 0)
    record = cb.sink.store.read_jsonl("features/metrics.jsonl")[-1]
    assert record["net.1/dead_fraction"] == pytest.approx(float((hidden.max(0) <= 0).mean()), abs=1e-6)
    assert record["net.1/sparsity"] == pytest.approx(float((hidden <= 0).mean()), abs=1e-6)


# ------------------------------------------------------------------------------------------ state and resume
def test_channels_persist_across_a_checkpoint_resume(tmp_path, dm, demo_model, fit):
    ckpt = tmp_path / "ckpt"
    first = FeatureMapCallback(layers=LAYERS, probe_size=12, n_channels=3, strict=True)
    saver = ModelCheckpoint(dirpath=ckpt, save_last=True)
    fit(tmp_path, [first, saver], demo_model(), dm, epochs=1, enable_checkpointing=True)
    state = first.state_dict()
    round_trip = FeatureMapCallback(layers=LAYERS, probe_size=12, n_channels=3)
    round_trip.load_state_dict(state)
    assert round_trip.channels == first.channels and round_trip.state_key == first.state_key
    assert FeatureMapCallback(layers=LAYERS, n_channels=4).state_key != first.state_key

    # a resumed run shows the first run's channels, even where its own first run would choose others
    saved = torch.load(ckpt / "last.ckpt", weights_only=False)
    saved["callbacks"][first.state_key]["extra"]["channels"]["net.features"] = [5, 1, 0]
    torch.save(saved, ckpt / "edited.ckpt")
    second = FeatureMapCallback(layers=LAYERS, probe_size=12, n_channels=3, strict=True)
    fit(tmp_path, [second], demo_model(), dm, epochs=2, ckpt_path=str(ckpt / "edited.ckpt"))
    assert second.done_epochs == [0, 1]
    assert second.channels == {**first.channels, "net.features": [5, 1, 0]}
    assert second.sink.store.read_jsonl("features/metrics.jsonl")[-1]["channels"] == second.channels


def test_no_hooks_remain_after_a_probe_raised(tmp_path, dm, demo_model, fit):
    cb = FeatureMapCallback(layers=LAYERS, probe_size=12)
    model, trainer = fit(tmp_path, [cb], demo_model(), dm, epochs=1)

    def explode(*_):
        raise RuntimeError("head exploded")

    model.net.fc.forward = explode
    with pytest.warns(UserWarning, match="FeatureMapCallback probe failed.*net.features.*head exploded"):
        cb.run(trainer, model, 7)
    assert cb.failures == 1 and 7 not in cb.done_epochs and count_hooks(model) == 0


# ------------------------------------------------------------------------------------------ argument checks
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": ["net.features", "net.featurez"]}, "Layer 'net.featurez' not found.*'net.features"),
        ({"filter_layer": "net.fc"}, "Expected layer 'net.fc' to be an nn.Conv2d, got Linear"),
        ({"filter_layers": ["net.features.0.0", "net.pool"]}, "Expected layer 'net.pool' to be an nn.Conv2d"),
        ({"line_layer": "net.fc"}, "Expected layer 'net.fc' to be an nn.Linear with in_features=2"),
        ({"line_layer": "net.fcc"}, "Layer 'net.fcc' not found.*'net.fc'"),
    ],
)
def test_bad_layers_fail_at_setup(tmp_path, dm, kwargs, message, demo_model, make_trainer):
    cb = FeatureMapCallback(probe_size=12, **kwargs)
    trainer = make_trainer(tmp_path, [cb], max_epochs=1)
    with pytest.raises(ValueError, match=message):
        trainer.fit(demo_model(), dm)
    assert trainer.current_epoch == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": []}, "Expected `layers` to be a layer name"),
        ({"layers": ["a", "a"]}, "distinct names"),
        ({"n_images": 0}, "Expected `n_images` to be a positive int"),
        ({"n_channels": 2.5}, "Expected `n_channels` to be a positive int"),
        ({"n_filters": -1}, "Expected `n_filters` to be a positive int"),
        ({"filter_channels": True}, "Expected `filter_channels` to be a positive int"),
        ({"filter_scaling": "global"}, "Expected `filter_scaling` to be one of 'filter', 'symmetric'"),
        ({"filter_layer": 3}, "Expected `filter_layer` to be a layer name, 'auto' or None"),
        ({"filter_layers": ["x", "x"]}, "Expected `filter_layers`.*distinct names"),
        ({"line_layer": ""}, "Expected `line_layer` to be a layer name, 'auto' or None"),
        ({"hist_values": 0}, "Expected `hist_values` to be a positive int"),
        ({"reshape": "tokens"}, "Expected `reshape` to be a callable"),
    ],
)
def test_arguments_are_checked_in_init(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FeatureMapCallback(**kwargs)
