"""Callbacks on models as users have them: a LightningModule returning ``(logits, aux)``, a dict, or the
logits second; ``output=`` and its setup error; a small ViT with ``layers="auto"``."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainviz.callbacks.cam import CAMCallback
from trainviz.callbacks.decoder_maps import DecoderMapCallback
from trainviz.callbacks.dynamics import DynamicsCallback
from trainviz.callbacks.embedding import EmbeddingCallback
from trainviz.callbacks.robustness import RobustnessCallback
from trainviz.core.hooks import count_hooks
from trainviz.ops.cam import minmax_scale

HOW = "pass `output=` to the callback (or `default_callbacks(output=...)`): a key, an index or a callable"


class AuxNet(pl.LightningModule):
    """A small CNN whose forward returns ``(logits, aux)`` (``"tuple"``), ``{"scores": logits, "aux": aux}``
    (``"dict"``) or ``(feature_maps, logits)`` (``"maps_first"``, which the defaults cannot read)."""

    def __init__(self, layout: str = "tuple", classes: int = 3) -> None:
        super().__init__()
        self.layout = layout
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)
        self.aux = nn.Linear(8, 2)
        self.steps = 0

    def forward(self, x: torch.Tensor):
        maps = self.net(x)
        z = self.pool(maps).flatten(1)
        logits = self.fc(z)
        if self.layout == "tuple":
            return logits, self.aux(z)
        if self.layout == "dict":
            return {"aux": self.aux(z), "scores": logits}
        return maps, logits

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        out = self(x)
        return out["scores"] if self.layout == "dict" else out[0 if self.layout == "tuple" else 1]

    def training_step(self, batch, batch_idx):
        self.steps += 1
        x, y = batch
        return F.cross_entropy(self.logits(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.logits(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loaders(n: int = 48, size: int = 16, classes: int = 3):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, size, size, generator=g)  # pixels in [0, 1]
    y = torch.arange(n) % classes
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False), DataLoader(
        TensorDataset(x[:24], y[:24]), batch_size=12
    )


@pytest.fixture(scope="session")
def fit(make_trainer):
    def fit(root: Path, model: pl.LightningModule, callbacks: list, **kwargs) -> pl.Trainer:
        pl.seed_everything(0, verbose=False)
        trainer = make_trainer(root, callbacks, max_epochs=1, **kwargs)
        train, val = loaders(size=getattr(model, "size", 16))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*(does not have many workers|number of training batches).*")
            trainer.fit(model, train, val)
        return trainer

    return fit


@pytest.mark.parametrize(
    ("layout", "output"), [("tuple", None), ("tuple", 0), ("dict", "scores"), ("tuple", lambda out: out[0])]
)
def test_cam_and_dynamics_run_on_a_model_returning_more_than_logits(tmp_path, layout, output, fit):
    from captum.attr import LayerAttribution, LayerGradCam

    torch.manual_seed(0)
    model = AuxNet(layout)
    cam = CAMCallback(probe_size=12, n_grid=4, n_tracked=2, deletion_steps=2, strict=True, output=output)
    dynamics = DynamicsCallback(probe_size=12, n_examples=2, strict=True, output=output)
    fit(tmp_path, model, [cam, dynamics])
    assert cam.done_epochs == [0] and dynamics.done_epochs == [0] and model.steps == 3
    assert list(cam._layers) == ["net"] and count_hooks(model) == 0  # "auto": the CNN rule, on the real tree
    model.eval()
    probe = dynamics.probe
    with torch.no_grad():
        expected = model.logits(probe.images).softmax(1)
    stored = dynamics.sink.store.read_npz("dynamics/epoch_0000/predictions.npz")
    torch.testing.assert_close(torch.as_tensor(stored["probs"]), expected, atol=1e-6, rtol=1e-5)
    # the CAM maps against Captum on the model's logits (the probe's true classes)
    probe = cam.probe
    maps = torch.as_tensor(cam.sink.store.read_npz("cam/epoch_0000/maps.npz")["maps/net"]).float()
    raw = LayerGradCam(model.logits, model.net).attribute(probe.images, probe.labels, relu_attributions=True).detach()
    assert raw.abs().amax() > 0
    reference = LayerAttribution.interpolate(minmax_scale(raw), (16, 16), interpolate_mode="bilinear")[
        :, 0
    ]  # scaled at 8 x 8
    torch.testing.assert_close(maps, reference, atol=2e-3, rtol=0)  # maps are stored as float16


PROBES = {
    "dynamics": lambda **kw: DynamicsCallback(probe_size=12, **kw),
    "cam": lambda **kw: CAMCallback(probe_size=12, layers="net.2", **kw),
    "robustness": lambda **kw: RobustnessCallback(
        corruptions=["grayscale"], epsilons=[], flip_max_steps=0, probe_size=12, **kw
    ),
    "robustness_cam": lambda **kw: RobustnessCallback(
        corruptions=["grayscale"], epsilons=[], flip_max_steps=0, probe_size=12, cam_shift=True, cam_layer="net.2", **kw
    ),
    "embedding": lambda **kw: EmbeddingCallback(
        layers=["net.2"], methods=["pca"], probe_size=12, linear_probe_folds=0, **kw
    ),
    "decoder_maps": lambda **kw: DecoderMapCallback(layer="net.2", probe_size=12, **kw),
}


@pytest.mark.parametrize("name", list(PROBES))
def test_an_unreadable_output_fails_at_fit_start_naming_output(tmp_path, name, fit):
    model = AuxNet("maps_first")
    with pytest.raises(
        ValueError,
        match=(
            "Expected the model to return logits of shape \\(N, K\\), "
            "but it returned tuple\\(Tensor\\[2, 8, 8, 8\\], Tensor\\[2, 3\\]\\)"
        ),
    ) as info:
        fit(tmp_path, model, [PROBES[name](strict=True)])
    assert HOW in str(info.value) and model.steps == 0 and count_hooks(model) == 0  # before the first epoch


@pytest.mark.parametrize("name", ["dynamics", "cam", "robustness_cam", "embedding"])
def test_output_index_reads_the_logits_second(tmp_path, name, fit):
    model = AuxNet("maps_first")
    cb = PROBES[name](strict=True, output=1)
    fit(tmp_path, model, [cb])
    assert cb.done_epochs == [0] and cb.failures == 0 and model.steps == 3


def test_output_is_checked_in_init():
    with pytest.raises(
        ValueError, match="Expected `output` to be None, a key \\(str\\), an index \\(int\\) or a callable"
    ):
        CAMCallback(output=2.5)
    with pytest.raises(ValueError, match="Expected `reshape` to be a callable"):
        CAMCallback(reshape="tokens")


class ViTModule(pl.LightningModule):
    """A LightningModule around the small class-token ViT of tests/ops/test_cam_vit.py, returning
    ``(logits, tokens)``."""

    size = 16

    def __init__(self) -> None:
        super().__init__()
        sys.path.insert(0, str(Path(__file__).parents[1] / "ops"))
        try:
            from test_cam_vit import ViT
        finally:
            sys.path.pop(0)
        self.net = ViT("cls", "prenorm")
        self.net.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor):
        return self.net(x), x.flatten(1)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0])[0], batch[1])

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_cam_callback_on_a_vit_picks_the_last_blocks_norm1_and_logs_it(tmp_path, caplog, fit):
    torch.manual_seed(0)
    model = ViTModule()
    cb = CAMCallback(probe_size=12, n_grid=4, n_tracked=2, deletion_steps=2, strict=True)
    with caplog.at_level(logging.INFO):
        fit(tmp_path, model, [cb])
    assert list(cb._layers) == ["net.blocks.1.norm1"] and cb.done_epochs == [0]
    assert "'net.blocks.1.norm1'" in caplog.text
    maps = torch.as_tensor(cb.sink.store.read_npz("cam/epoch_0000/maps.npz")["maps/net.blocks.1.norm1"]).float()
    assert maps.shape == (12, 16, 16) and bool((maps.flatten(1).std(1) > 0).all())  # not the blank last block
