"""Inputs that are not photos (issue 17, section 3): CT slices in Hounsfield units, a 1 x 128 x T spectrogram and a
4-channel input through ``default_callbacks(pixels=False)``: the probes that compute on the model's inputs write
their artifacts, the pixel probes are left out with one warning, and without the declaration today's error."""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import trainviz
from trainviz.callbacks.base import ProbeCallback
from trainviz.core.display import pictures

PIXEL_PROBES = {"robustness", "maxact"}
SAID = "declared not to be photos (pixels=False)"


def _ct(n: int = 48, side: int = 24) -> TensorDataset:
    """CT-like slices in Hounsfield units: air (-1000) around a disc of soft tissue (~40) or bone (~1500-2000)."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    labels = torch.arange(n) % 2
    images = torch.full((n, 1, side, side), -1000.0) + 20 * torch.randn(n, 1, side, side, generator=g)
    for i in range(n):
        cy, cx = 6 + torch.randint(side - 12, (2,), generator=g)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 16
        images[i, 0][disc] = 1500.0 + 500 * torch.rand(1, generator=g) if labels[i] else 40.0
    return TensorDataset(images.clamp(-1000, 2000), labels)


def _spectrograms(n: int = 48, mels: int = 128, frames: int = 32) -> TensorDataset:
    """Log-mel-like spectrograms (dB, about -80..0): class 1 has a band of energy in the low mels."""
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(n) % 2
    spec = -60 + 8 * torch.randn(n, 1, mels, frames, generator=g)
    spec[labels == 1, :, 10:30] += 40
    return TensorDataset(spec.clamp(-80, 0), labels)


def _multispectral(n: int = 48, side: int = 16) -> TensorDataset:
    """Standardised bands (RGB plus near infrared, zero mean, unit variance): no pixel mapping to give."""
    g = torch.Generator().manual_seed(2)
    labels = torch.arange(n) % 2
    bands = torch.randn(n, 4, side, side, generator=g)
    bands[labels == 1, 3, : side // 2] += 2.0  # vegetation is bright in the infrared band
    return TensorDataset(bands, labels)


def _loaders(data: TensorDataset) -> tuple[DataLoader, DataLoader]:
    return DataLoader(data, batch_size=16, shuffle=False), DataLoader(data, batch_size=16)


@pytest.fixture(scope="session")
def _options(suite_options):
    def _options() -> dict[str, dict]:
        options = suite_options("cnn")
        options["embedding"] = {**options["embedding"], "methods": ["pca"]}  # UMAP's compilation is not the point here
        return {name: {"probe_size": 16, **opts} for name, opts in options.items()}

    return _options


@pytest.fixture(scope="session")
def _fit(demo_model, make_trainer):
    def _fit(root, data, callbacks, epochs: int = 1):
        torch.manual_seed(0)
        model = demo_model("cnn", num_classes=2, in_channels=data.tensors[0].shape[1])
        trainer = make_trainer(root, callbacks, max_epochs=epochs, num_sanity_val_steps=0)
        trainer.fit(model, *_loaders(data))
        return model, trainer

    return _fit


@pytest.mark.parametrize(
    "make, display_channels",
    [(_ct, None), (_spectrograms, None), (_multispectral, [3, 1, 0])],
    ids=["ct_hounsfield", "spectrogram_1x128x32", "four_channels"],
)
def test_declared_not_photos_every_other_probe_writes_and_pixel_probes_are_off(
    tmp_path, make, display_channels, caplog, monkeypatch, _fit, _options
):
    data = make()  # "once" is per Trainer (trainviz.sinks.registry.say_once): this fit's Trainer is new
    with pytest.warns(UserWarning, match=r"pixels=False\) leaves out robustness, maxact: .*corrupts pixels") as rec:
        callbacks = trainviz.default_callbacks(
            budget=None, pixels=False, display_channels=display_channels, **_options()
        )
    assert len([w for w in rec if "leaves out" in str(w.message)]) == 1  # one warning, for both
    names = {cb.name for cb in callbacks if isinstance(cb, ProbeCallback)}
    assert names == {"dynamics", "cam", "features", "embedding", "saliency"} and not names & PIXEL_PROBES
    with caplog.at_level(logging.INFO), warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no probe failed (a failure warns)
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*(number of training batches|log_every_n_steps).*")
        _fit(tmp_path, data, callbacks)
    probes = [cb for cb in callbacks if isinstance(cb, ProbeCallback)]
    for cb in probes:
        assert cb.done_epochs == [0] and cb.failures == 0, cb.name
        assert cb.norm is None and cb.display.norm is None, cb.name
        written = list((tmp_path / "trainviz" / cb.name).rglob("*.*"))
        assert any(p.suffix == ".png" for p in written) and any(p.suffix == ".jsonl" for p in written), cb.name
    # the log says it once, whatever the number of callbacks
    assert sum(SAID in r.getMessage() for r in caplog.records) == 1
    # pictures: each image's shown channels scaled by their own 1st and 99th percentiles (numpy's)
    cam = next(cb for cb in probes if cb.name == "cam")
    images = cam.probe.images[:3]
    shown = pictures(images, cam.norm, cam.display).numpy()
    chosen = images[:, display_channels or [0]].double().numpy()
    for i in range(3):
        for c in range(chosen.shape[1]):
            low, high = np.percentile(chosen[i, c], [1, 99])
            np.testing.assert_allclose(shown[i, c], np.clip((chosen[i, c] - low) / (high - low), 0, 1), atol=1e-5)
    manifest = json.loads((tmp_path / "trainviz" / "manifest" / "manifest.json").read_text())
    for entry in manifest["probe_sets"].values():
        assert entry["pixels"] is False and entry["normalization"] is None
        assert entry["display"] == {
            "scaling": "percentile",
            "per": "image and channel",
            "percentiles": [1.0, 99.0],
            "channels": display_channels or [0],
        }


def test_without_the_declaration_the_error_of_today_names_pixels_false(tmp_path, _fit):
    data = _ct(n=32)
    callbacks = trainviz.default_callbacks(budget=None, embedding=False, cam=False, features=False)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]: per-channel range \[-1e\+03, 1\.\d+e\+03\]") as err:
        _fit(tmp_path, data, callbacks)
    assert "`pixels=False`" in str(err.value) and "default_callbacks(normalization=" in str(err.value)


def test_a_pixel_probe_built_directly_refuses_non_photos(tmp_path, _fit):
    with pytest.raises(ValueError, match=r"RobustnessCallback acts on pixels .*`pixels=False`"):
        trainviz.RobustnessCallback(pixels=False)
    with pytest.raises(ValueError, match=r"MaxActivationCallback acts on pixels"):
        trainviz.MaxActivationCallback(pixels=False)
    with pytest.raises(ValueError, match="not both"):
        trainviz.CAMCallback(pixels=False, normalization=((0.5,), (0.2,)))
    with pytest.raises(ValueError, match="not both"):
        trainviz.default_callbacks(pixels=False, normalization=((0.5,), (0.2,)))
    with pytest.raises(ValueError, match="Expected `pixels`"):
        trainviz.DynamicsCallback(pixels="no")
    # built without the declaration on CT values: setup refuses before the first epoch, and says why it cannot run
    robust = trainviz.RobustnessCallback(corruptions=["gaussian_noise"], severities=[1], epsilons=[], probe_size=8)
    with pytest.raises(ValueError, match=r"RobustnessCallback does not apply to them .*leaves it out"):
        _fit(tmp_path, _ct(n=16), [robust])


def test_saliency_occlusion_baseline_is_in_model_input_space_without_pixels():
    with pytest.raises(ValueError, match="occlusion_baseline"):
        trainviz.SaliencyCallback(occlusion_baseline=-1000.0)  # a pixel value must lie in [0, 1]
    cb = trainviz.SaliencyCallback(occlusion_baseline=-1000.0, pixels=False)  # air, in Hounsfield units
    assert cb.occlusion_baseline == -1000.0


def test_four_channel_photos_skip_the_corruptions_that_assume_rgb_and_show_a_chosen_triple(tmp_path, _fit):
    g = torch.Generator().manual_seed(3)
    data = TensorDataset(torch.rand(32, 4, 16, 16, generator=g), torch.arange(32) % 2)  # RGB + infrared in [0, 1]
    cb = trainviz.RobustnessCallback(
        corruptions=["grayscale", "channels_bgr", "jpeg_compression", "gaussian_noise", "gaussian_blur_3x3"],
        severities=[1],
        epsilons=[4 / 255],
        flip_max_steps=1,
        probe_size=8,
        display_channels=[0, 1, 2],
        strict=True,
    )
    maxout = trainviz.MaxActivationCallback(
        classes=[0, 1], steps=2, final_steps=0, probe_size=8, display_channels=[3, 1, 0], strict=True
    )
    _fit(tmp_path, data, [cb, maxout], epochs=2)
    assert maxout.done_epochs == [0, 1] and list((tmp_path / "trainviz" / "maxact").rglob("*.png"))
    assert set(cb.skipped) == {"grayscale", "channels_bgr", "jpeg_compression"}
    assert all("C=4" in reason for reason in cb.skipped.values())
    assert {name for name, _ in cb.active} == {"gaussian_noise", "gaussian_blur_3x3"} and cb.done_epochs == [0, 1]
    assert list((tmp_path / "trainviz" / "robustness").rglob("*.png"))


def test_yaml_carries_pixels_and_display_channels_through_lightning_cli(tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    from cli import main

    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(
        "trainer:\n  callbacks:\n    - class_path: trainviz.CAMCallback\n      init_args:\n"
        "        pixels: false\n        display_channels: [3, 1, 0]\n"
        "    - class_path: trainviz.SaliencyCallback\n      init_args:\n"
        "        pixels: false\n        occlusion_baseline: -1000.0\n"
    )
    args = ["--config", str(config), "--model", "trainviz.models.DemoClassifier", "--trainer.logger", "false"]
    cli = main(args=args, run=False)
    cam, saliency = [c for c in cli.trainer.callbacks if isinstance(c, ProbeCallback)]
    assert (cam.pixels, cam.display_channels) == (False, (3, 1, 0))
    assert (saliency.pixels, saliency.occlusion_baseline) == (False, -1000.0)
    config.write_text(
        "trainer:\n  callbacks:\n    - class_path: trainviz.RobustnessCallback\n"
        "      init_args:\n        pixels: false\n"
    )
    with pytest.raises(ValueError, match=r"RobustnessCallback acts on pixels"):
        main(args=args, run=False)
