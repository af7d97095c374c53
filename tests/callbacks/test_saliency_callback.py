"""SaliencyCallback under real fits: tags, artifacts, the logged maps against ``ops.saliency`` / ``ops.occlusion``
recomputed on the probe images, the sanity cadence, a user-shaped run (torchvision ``Normalize``, dict items, a
model returning a tuple), no trace on the training model, argument and setup checks, state."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from _support import DictItems, demo_model, make_trainer
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import FakeData

from trainviz.callbacks.saliency import SaliencyCallback
from trainviz.core.hooks import count_hooks
from trainviz.core.outputs import LogitsModel
from trainviz.ops.occlusion import occlusion
from trainviz.ops.saliency import saliency, saliency_map
from trainviz.probes.saliency import SaliencyConfig, SaliencyProbe, compute, run_seed
from trainviz.render.images import to_uint8, upscale

SMALL = dict(probe_size=12, deletion_steps=2, smoothgrad_samples=3, ig_steps=3, sanity_images=3, n_grid=4, strict=True)
METHODS = ["gradient", "smoothgrad", "guided_backprop", "occlusion"]


def fit(root, callbacks, datamodule=None, epochs=2, model=None, **loaders):
    pl.seed_everything(0, verbose=False)
    model = model or demo_model()
    trainer = make_trainer(root, callbacks, max_epochs=epochs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*(does not have many workers|number of training batches).*")
        if datamodule is not None:
            trainer.fit(model, datamodule)
        else:
            trainer.fit(model, **loaders)
    return model, trainer


def events(root):
    acc = EventAccumulator(str(root), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def recompute(model, cb, method, epoch, output=None):
    """The maps of ``method`` by the ops themselves, on the callback's probe images and the final weights."""
    logits_model = LogitsModel(model, output).eval()
    images, labels = cb.probe.images, cb.probe.labels
    if method == "occlusion":
        black = cb.norm.normalize(torch.zeros(1, images.shape[1], 1, 1)).view(-1)
        attr = occlusion(logits_model, images, labels, window=cb.occlusion_window, stride=cb.occlusion_stride,
                         baseline=black)  # fmt: skip
    else:
        generator = torch.Generator().manual_seed(run_seed(cb.probe_seed, epoch))
        attr = saliency(logits_model, images, labels, method, samples=cb.smoothgrad_samples,
                        sigma=cb.smoothgrad_sigma, steps=cb.ig_steps, generator=generator)  # fmt: skip
    return saliency_map(attr)


def test_three_epoch_fit_writes_every_key_with_sanity_at_the_first_and_every_kth_run(tmp_path, dm):
    # per-layer steps: the default became blocks (issue 20); the block cascade is tested in test_sanity_blocks.py
    cb = SaliencyCallback(sanity_every=2, n_tracked=2, sanity_steps="layers", **SMALL)
    model, _ = fit(tmp_path, [cb], dm, epochs=3)
    assert cb.done_epochs == [0, 1, 2] and cb.sanity_epochs == [0, 2] and count_hooks(model) == 0
    layers = cb._sanity_layers
    assert layers[0] == "net.fc" and set(layers) == {n.rsplit(".", 1)[0] for n, _ in model.named_parameters()}
    acc = events(tmp_path)
    expected = {"trainviz/saliency/target_probability", "trainviz/saliency/pointing_game_chance"}
    expected |= {"trainviz/saliency/seconds"}
    for m in METHODS:
        expected |= {f"trainviz/saliency/{m}/{k}" for k in ["deletion_auc", "insertion_auc", "pointing_game"]}
        expected |= {f"trainviz/saliency/{m}/random_logit"}
        expected |= {f"trainviz/saliency/{m}/sanity/{layer}" for layer in layers}
    assert {t for t in acc.Tags()["scalars"] if t.startswith("trainviz/")} == expected
    assert [e.step for e in acc.Scalars("trainviz/saliency/gradient/sanity/net.fc")] == [0, 2]
    assert [e.step for e in acc.Scalars("trainviz/saliency/guided_backprop/random_logit")] == [0, 2]
    assert [e.step for e in acc.Scalars("trainviz/saliency/occlusion/insertion_auc")] == [0, 1, 2]
    for tag in ["gradient/deletion_auc", "smoothgrad/insertion_auc", "occlusion/pointing_game"]:
        assert all(0 <= e.value <= 1 for e in acc.Scalars(f"trainviz/saliency/{tag}"))
    for e in acc.Scalars("trainviz/saliency/gradient/sanity/net.features.0.0"):
        assert -1 <= e.value <= 1
    images = {"trainviz/saliency/maps", "trainviz/saliency/sanity"}
    images |= {f"trainviz/saliency/{m}/evolution" for m in METHODS}
    assert set(acc.Tags()["images"]) == images
    assert [e.step for e in acc.Images("trainviz/saliency/sanity")] == [0, 2]
    assert [e.step for e in acc.Images("trainviz/saliency/gradient/evolution")] == [2]

    store = cb.sink.store
    records = store.read_jsonl("saliency/metrics.jsonl")
    assert [r["epoch"] for r in records] == [0, 1, 2] and "sanity" not in records[1]
    assert records[2]["sanity_layers"] == layers and list(records[2]["random_logit"]) == sorted(METHODS)
    arrays = store.read_npz("saliency/epoch_0002/maps.npz")
    assert arrays["maps/gradient"].dtype == np.float16 and arrays["maps/gradient"].shape == (12, 32, 32)
    assert arrays["deletion_curve/occlusion"].shape == (12, 3) and arrays["insertion_auc/smoothgrad"].shape == (12,)
    assert arrays["ids"].tolist() == cb.probe.ids.tolist()
    sanity = store.read_npz("saliency/epoch_0002/sanity.npz")
    assert sanity["layers"].tolist() == layers and sanity["spearman/gradient"].shape == (len(layers), 3)
    mean = float(np.nanmean(sanity["spearman/guided_backprop"][0]))
    assert acc.Scalars("trainviz/saliency/guided_backprop/sanity/net.fc")[-1].value == pytest.approx(mean, abs=1e-5)
    assert not (store.root / "saliency" / "epoch_0001" / "sanity.npz").exists()
    evolution = store.read_npz("saliency/epoch_0002/evolution.npz")
    assert evolution["maps/smoothgrad"].shape == (3, 2, 32, 32) and evolution["epochs"].tolist() == [0, 1, 2]
    assert (store.root / "saliency" / "section.json").exists()

    # the logged maps are the ops' own on the same probe images (the final weights are those of the last run)
    for m in METHODS:
        expected_maps = recompute(model, cb, m, epoch=2)
        np.testing.assert_allclose(arrays[f"maps/{m}"].astype(np.float32), expected_maps.numpy(), rtol=2e-3,
                                   atol=1e-3 * float(expected_maps.abs().max()), err_msg=m)  # fmt: skip
    # SmoothGrad's noise follows the run's seed: another seed gives other maps
    other = saliency_map(
        saliency(LogitsModel(model).eval(), cb.probe.images, cb.probe.labels, "smoothgrad", samples=3,
                 generator=torch.Generator().manual_seed(run_seed(cb.probe_seed, 1)))
    )  # fmt: skip
    assert not np.allclose(arrays["maps/smoothgrad"].astype(np.float32), other.numpy(), rtol=1e-2, atol=1e-4)

    # state: the history survives a checkpoint
    resumed = SaliencyCallback(sanity_every=2, n_tracked=2, **SMALL)
    resumed.load_state_dict(cb.state_dict())
    assert [e for e, _ in resumed._history] == [0, 1, 2] and resumed.sanity_epochs == [0, 2]
    for (_, a), (_, b) in zip(resumed._history, cb._history):
        assert set(a) == set(METHODS) and all(torch.equal(a[m], b[m]) for m in METHODS)
    assert resumed.state_key == cb.state_key != SaliencyCallback(target="predicted", **SMALL).state_key


def test_a_sanity_run_leaves_the_training_model_and_the_random_stream(tmp_path, dm):
    cb = SaliencyCallback(methods=["gradient", "smoothgrad"], occlusion=False, sanity_every=1, **SMALL)
    model, trainer = fit(tmp_path, [cb], dm, epochs=1)
    model.train()
    flags = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(11)
    rng = torch.get_rng_state()
    with torch.inference_mode():
        cb.run(trainer, model, 5)
    assert cb.sanity_epochs == [0, 5]
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    # the probe itself, outside the guard: the cascade's re-initialisation and the noise use private generators
    model.eval()
    config = cb.prober.config
    probe = cb.device_probe(model)
    rng = torch.get_rng_state()
    result = compute(LogitsModel(model), probe, config, epoch=3, sanity=True)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert set(result.sanity["gradient"]) == set(cb._sanity_layers)


class TupleNet(nn.Module):
    """A torchvision-style net written without trainviz in mind; returns ``(logits, features)``."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(16, classes)

    def forward(self, x):
        f = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(f), f


class UserModule(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = TupleNet()

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, _):
        return nn.functional.cross_entropy(self(batch["image"])[0], batch["label"])

    def validation_step(self, batch, _):
        self.log("val_loss", nn.functional.cross_entropy(self(batch["image"])[0], batch["label"]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def test_user_shaped_run_normalised_dict_items_and_a_tuple_output(tmp_path):
    pipeline = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    train = DictItems(FakeData(size=32, image_size=(3, 16, 16), num_classes=4, transform=pipeline, random_offset=0))
    val = DictItems(FakeData(size=24, image_size=(3, 16, 16), num_classes=4, transform=pipeline, random_offset=50))
    cb = SaliencyCallback(
        methods=["gradient", "integrated_gradients"], output=0, occlusion_window=4, occlusion_baseline=0.5, **SMALL
    )
    model, _ = fit(
        tmp_path, [cb], epochs=1, model=UserModule(), train_dataloaders=DataLoader(train, batch_size=16),
        val_dataloaders=DataLoader(val, batch_size=12),
    )  # fmt: skip
    assert cb.norm_source == "transform" and tuple(cb.norm.mean) == pytest.approx(MEAN)
    assert cb.done_epochs == [0] and cb.sanity_epochs == [0]
    assert cb._sanity_layers == ["model.classifier", "model.features.4", "model.features.1", "model.features.0"]
    arrays = cb.sink.store.read_npz("saliency/epoch_0000/maps.npz")
    for m in ["gradient", "integrated_gradients"]:
        expected_maps = recompute(model, cb, m, epoch=0, output=0)
        np.testing.assert_allclose(arrays[f"maps/{m}"].astype(np.float32), expected_maps.numpy(), rtol=2e-3,
                                   atol=1e-3 * float(expected_maps.abs().max()), err_msg=m)  # fmt: skip
    # occlusion fills with the PIXEL value 0.5, i.e. (0.5 - mean) / std in the model's input space
    logits_model = LogitsModel(model, 0).eval()
    images, labels = cb.probe.images, cb.probe.labels
    grey = ((0.5 - torch.tensor(MEAN)) / torch.tensor(STD)).float()
    by_hand = saliency_map(occlusion(logits_model, images, labels, window=4, stride=4, baseline=grey))
    np.testing.assert_allclose(arrays["maps/occlusion"].astype(np.float32), by_hand.numpy(), rtol=2e-3, atol=1e-4)
    zero = saliency_map(occlusion(logits_model, images, labels, window=4, stride=4, baseline=0.0))
    assert not np.allclose(arrays["maps/occlusion"].astype(np.float32), zero.numpy(), rtol=1e-2, atol=1e-4)
    # the grid shows the probe images as pixels: the first tile is the de-normalised image
    grid = np.asarray(Image.open(cb.sink.store.root / "saliency" / "epoch_0000" / "maps.png").convert("RGB"))
    first = cb.example_indices(1)
    pixels = to_uint8(upscale(cb.norm.denormalize(images[first].float())))[0]
    assert np.abs(grid[2 : 2 + pixels.shape[0], 2 : 2 + pixels.shape[1]].astype(int) - pixels).max() <= 1
    normalised = to_uint8(upscale(images[first].float()))[0]
    assert np.abs(grid[2 : 2 + pixels.shape[0], 2 : 2 + pixels.shape[1]].astype(int) - normalised).max() > 10


def test_a_failing_probe_warns_once_and_training_goes_on(tmp_path, dm, monkeypatch):
    cb = SaliencyCallback(methods=["guided_backprop"], occlusion=False, **{**SMALL, "strict": False})
    model, trainer = fit(tmp_path, [cb], dm, epochs=1)

    def explode(*_):
        raise RuntimeError("head exploded")

    monkeypatch.setattr(model.net.fc, "forward", explode)
    with pytest.warns(UserWarning, match="SaliencyCallback probe failed.*guided_backprop.*head exploded"):
        cb.run(trainer, model, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cb.run(trainer, model, 8)  # counted, not warned again
    assert cb.failures == 2 and 7 not in cb.done_epochs and count_hooks(model) == 0


def test_an_occlusion_window_larger_than_the_images_fails_at_setup(tmp_path, dm):
    cb = SaliencyCallback(probe_size=6, occlusion_window=40)
    trainer = make_trainer(tmp_path, [cb], max_epochs=1)
    with pytest.raises(ValueError, match="Expected `occlusion_window` <= the probe images' side 32"):
        trainer.fit(demo_model(), dm)
    assert trainer.current_epoch == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"methods": []}, "Expected `methods` to be a non-empty list"),
        ({"methods": "gradient"}, "Expected `methods` to be a non-empty list"),
        ({"methods": ["gradient", "lrp"]}, "Expected `methods` to be one of 'gradient'.*'occlusion'; got 'lrp'"),
        ({"methods": ["gradient", "gradient"]}, "Expected `methods` to be distinct"),
        ({"methods": ["occlusion"], "occlusion": False}, "Expected `occlusion=True`"),
        ({"occlusion": 1}, "Expected `occlusion` to be a bool"),
        ({"target": "label"}, "Expected `target` to be one of 'true', 'predicted'"),
        ({"smoothgrad_samples": 0}, "Expected `smoothgrad_samples` to be a positive int"),
        ({"smoothgrad_sigma": -0.1}, "Expected `smoothgrad_sigma` to be a finite number >= 0"),
        ({"ig_steps": 1.5}, "Expected `ig_steps` to be a positive int"),
        ({"occlusion_window": 0}, "Expected `occlusion_window` to be a positive int"),
        ({"occlusion_stride": -1}, "Expected `occlusion_stride` to be a positive int"),
        ({"occlusion_baseline": 2.0}, "Expected `occlusion_baseline` to be a finite number >= 0 and <= 1"),
        ({"deletion_steps": 0}, "Expected `deletion_steps` to be a positive int"),
        ({"sanity_every": -1}, "Expected `sanity_every` to be an int >= 0"),
        ({"sanity_images": 0}, "Expected `sanity_images` to be a positive int"),
        ({"n_grid": 0}, "Expected `n_grid` to be a positive int"),
        ({"n_tracked": True}, "Expected `n_tracked` to be a positive int"),
        ({"max_strip": 0}, "Expected `max_strip` to be a positive int"),
    ],
)
def test_arguments_are_checked_in_init(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SaliencyCallback(**kwargs)


def test_defaults_and_sanity_disabled(tmp_path, dm):
    cb = SaliencyCallback()
    assert cb.methods == ("gradient", "smoothgrad", "guided_backprop", "occlusion") and cb.probe_size == 32
    off = SaliencyCallback(methods=["gradient"], occlusion=False, sanity_every=0, **SMALL)
    fit(tmp_path, [off], dm, epochs=1)
    assert off.sanity_epochs == [] and off.done_epochs == [0]
    assert not any("sanity" in t or "random_logit" in t for t in events(tmp_path).Tags()["scalars"])


def test_config_seed_is_per_epoch():
    assert run_seed(0, 1) != run_seed(0, 2) != run_seed(1, 2)
    assert SaliencyConfig().methods[-1] == "occlusion"


def test_the_yaml_preset_builds_the_callback(tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "examples"))
    from cli import main

    monkeypatch.chdir(tmp_path)
    args = ["--config", str(root / "callbacks" / "saliency.yaml"), "--model", "trainviz.models.DemoClassifier"]
    cli = main(args=[*args, "--trainer.logger", "false"], run=False)
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, SaliencyCallback)]
    assert cb.methods == ("gradient", "smoothgrad", "guided_backprop", "occlusion") and cb.sanity_every == 5


def test_the_record_reads_back_and_every_report_curve_points_at_a_recorded_value():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3)).eval()  # fmt: skip
    from trainviz.core.probeset import ProbeSet
    from trainviz.ops.sanity import randomizable_layers

    masks = torch.zeros(6, 8, 8, dtype=torch.bool)
    masks[:, 2:5, 2:5] = True
    probe = ProbeSet(torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2]), torch.arange(6), masks=masks)
    config = SaliencyConfig(methods=("gradient", "deconvnet", "occlusion"), deletion_steps=2, occlusion_window=4,
                            sanity_images=2, sanity_layers=randomizable_layers(net), n_grid=3)  # fmt: skip
    plain = compute(net, probe, config, epoch=0, sanity=False)
    checked = compute(net, probe, config, epoch=1, sanity=True)
    from trainviz.probes.saliency import SaliencyResult

    for result in (plain, checked):
        back = SaliencyResult.from_record(result.record())
        assert back == result and back.scalars() == pytest.approx(result.scalars(), nan_ok=True)
    assert back.sanity_layers == ["4", "0"] and set(checked.render()) == {"maps", "sanity"}
    assert set(plain.render()) == {"maps"}
    records = [plain.record(), checked.record()]
    for curve in checked.section()["curves"]:
        for series in curve["series"]:
            values = []
            for record in records:
                value = record
                for key in series["key"]:
                    value = value.get(key) if isinstance(value, dict) else None
                values.append(value)
            assert any(isinstance(v, float) for v in values), (curve["title"], series)


def test_under_a_budget_a_sanity_run_that_does_not_fit_drops_its_checks_first():
    # the plan is typed: the whole run (True) is the plan with the checks due, "maps" the one without them
    cb = SaliencyCallback(sanity_every=2)
    cb.prober = SaliencyProbe(None, SaliencyConfig(**cb.options.asdict()), cb.history)  # planning needs no images
    history = cb.history
    history.runs, cb.sanity_epochs = [0, 1], [0]
    assert history.sanity_due(cb.sanity_every)
    cb.prober.costs = {"sanity": 10.0, "maps": 1.0}
    assert cb._plan(20.0, False, 2).sanity is True
    assert cb._plan(2.0, False, 2).sanity is False
    assert [what for what, _ in cb.prober.skipped] == ["sanity"]
    assert cb._plan(0.5, False, 2) is None
    assert cb._plan(0.5, True, 2).sanity is True  # first and last runs are essential
    history.runs = [0, 1, 2]  # the checks skipped at epoch 2 come at the next run
    assert history.sanity_due(cb.sanity_every)
    history.runs, cb.sanity_epochs = [0, 1, 2], [0, 2]
    assert not history.sanity_due(cb.sanity_every) and cb._plan(2.0, False, 3).sanity is False
