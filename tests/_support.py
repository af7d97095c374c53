"""Plain helpers for the tests, imported normally (``import _support``): what is needed at collection time, where a
fixture cannot be used (``@pytest.mark.parametrize`` over the model kinds or the callbacks), and a dataset wrapper.
Tests otherwise get these through the fixtures of ``tests/conftest.py`` (``pl``, ``make_trainer``, ``demo_model``,
``all_callbacks``, ``suite_options``, ``dm``, ``tiny_dm``).

The Lightning namespace of the tests: ``pytorch_lightning`` by default; ``TRAINVIZ_LIGHTNING=lightning`` runs them on
``lightning.pytorch`` (trainviz's models and data follow the same variable). ``make test`` runs the suite-wide tests
under both."""

from __future__ import annotations

import importlib
import os

import torch

LIGHTNING = os.environ.setdefault("TRAINVIZ_LIGHTNING", "pytorch_lightning")
pl = importlib.import_module("lightning.pytorch" if LIGHTNING in ("lightning", "lightning.pytorch") else LIGHTNING)

MODEL_KINDS = ("cnn", "classmap")


def all_callbacks(kind: str = "cnn"):
    """A fresh instance of every trainviz callback that applies to the demo model ``kind``, with small
    settings (the suite-wide tests use this)."""
    import trainviz

    small = {"probe_size": 24, "every_n_epochs": 1}
    return trainviz.default_callbacks(
        budget=None, **{name: {**small, **opts} for name, opts in suite_options(kind).items()}
    )


def suite_options(kind: str = "cnn") -> dict[str, dict]:
    """Small settings for every registered probe callback (``trainviz.callbacks.registry``) that applies to the demo
    model ``kind`` (the decoder maps need the class-map model): the ones below, else the callback's defaults. The
    manifest takes no probe options."""
    from trainviz.callbacks.base import ProbeCallback
    from trainviz.callbacks.registry import callback_classes

    cam_layers = ["net.features.1", "net.features"] if kind == "cnn" else ["net.encoder.layer2", "net.encoder"]
    embed_layers = ["net.features", "net.fc"] if kind == "cnn" else ["net.encoder", "net.decoder.flatten"]
    options = {
        "dynamics": {},
        "cam": {"deletion_steps": 4, "layers": cam_layers},
        "robustness": {
            "corruptions": ["grayscale", "gaussian_noise"],
            "severities": [1],
            "epsilons": [4 / 255],
            "flip_max_steps": 2,
            "cam_shift": True,
        },
        "embedding": {"layers": embed_layers, "methods": ["pca", "umap"], "linear_probe_folds": 0},
        "features": {"layers": ["net.features.0", "net.features"] if kind == "cnn" else ["auto"], "n_channels": 4},
        "maxact": {"steps": 4, "final_steps": 4, "probe_size": 8},
        "saliency": {
            "deletion_steps": 2,
            "smoothgrad_samples": 2,
            "sanity_images": 2,
            "occlusion_window": 8,
            "occlusion_stride": 8,
        },
    }
    every = [cls.name for cls in callback_classes() if issubclass(cls, ProbeCallback)]
    return {name: options.get(name, {}) for name in every if kind == "classmap" or name != "decoder_maps"}


def make_trainer(root, callbacks=(), max_epochs: int = 2, **kwargs):
    """A deterministic CPU trainer logging to TensorBoard under ``root`` (the ``make_trainer`` fixture)."""
    options = dict(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=pl.loggers.TensorBoardLogger(str(root), name="", version=""),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        deterministic=True,
        callbacks=list(callbacks),
        num_sanity_val_steps=1,
    )
    options.update(kwargs)
    return pl.Trainer(**options)


def demo_model(kind: str = "cnn", num_classes: int = 6, in_channels: int = 3, seed: int = 0):
    """The demo classifier (``"cnn"``) or the group-convolution encoder-decoder (``"classmap"``) (the ``demo_model``
    fixture)."""
    from trainviz.models import ClassMapClassifier, DemoClassifier

    torch.manual_seed(seed)
    if kind == "classmap":
        return ClassMapClassifier(num_classes=num_classes, in_channels=in_channels, encoder="small")
    return DemoClassifier(num_classes=num_classes, in_channels=in_channels)


class DictItems(torch.utils.data.Dataset):
    """Wraps a dataset of ``(image, label)`` into ``{"image", "label"}`` items, as many user datasets are."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        image, label = self.dataset[i]
        return {"image": image, "label": label}


def records(root) -> dict[str, list[dict]]:
    """Every callback's JSON-lines records under ``root/trainviz`` (the manifest's and the budget's left out), by
    ``<callback>/<file>``: what two runs that should agree are compared on (:func:`same`)."""
    import json
    from pathlib import Path

    out = {}
    for path in sorted((Path(root) / "trainviz").glob("*/*.jsonl")):
        if path.parent.name not in ("manifest", "budget"):
            out[f"{path.parent.name}/{path.name}"] = [json.loads(line) for line in path.read_text().splitlines()]
    return out


def same(a, b, where: str) -> None:
    """Assert two records agree: keys, lengths, counts, epochs and names exactly, floats to 1e-5 (NaN equals NaN),
    timings (keys with ``seconds``) skipped."""
    import math

    import pytest

    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            if "seconds" not in k:  # timings differ run to run
                same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not (isinstance(b, float) and math.isnan(a) and math.isnan(b)):
        assert b == pytest.approx(a, abs=1e-5), where
    else:
        assert a == b, where  # counts, epochs, names: exactly


def script_run(script, args, cwd, timeout: int = 400):
    """Run the test script ``script`` (a file) with ``args`` in a fresh Python, one torch thread per process, with
    trainviz's sources and ``tests/`` importable (a launcher such as ``strategy="ddp"`` starts it again for the other
    ranks): the finished process."""
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(tests.parent / "src"), str(tests), env.get("PYTHONPATH", "")])
    command = [sys.executable, str(script), *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def tiny_cnn():
    """A seeded two-convolution CNN in eval mode (3 input channels, 3 classes; GAP then a linear layer): the model of
    the CAM probe's unit tests."""
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    ).eval()  # fmt: skip
