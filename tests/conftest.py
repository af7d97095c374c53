"""Shared fixtures: the Lightning namespace under test, a deterministic CPU trainer, the demo models, every callback
with small settings, and tiny embedded data. The plain values behind them (needed where a fixture cannot be, at
collection time) are in ``tests/_support.py``."""

from __future__ import annotations

import os
import warnings

import _support
import pytest

os.environ.setdefault("PL_DISABLE_FORK", "1")
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*The number of training batches.*")


@pytest.fixture(scope="session")
def pl():
    """The Lightning namespace under test (``pytorch_lightning``, or ``lightning.pytorch`` with
    ``TRAINVIZ_LIGHTNING=lightning``): its Trainer, loggers and callbacks."""
    return _support.pl


@pytest.fixture(scope="session")
def make_trainer():
    """``make_trainer(root, callbacks=(), max_epochs=2, **trainer_kwargs)``: a deterministic CPU trainer that logs to
    TensorBoard under ``root``, without progress bar, model summary or checkpoints."""
    return _support.make_trainer


@pytest.fixture(scope="session")
def demo_model():
    """``demo_model(kind="cnn", num_classes=6, in_channels=3, seed=0)``: the demo classifier, or with
    ``kind="classmap"`` the group-convolution encoder-decoder, seeded."""
    return _support.demo_model


@pytest.fixture(scope="session")
def all_callbacks():
    """``all_callbacks(kind="cnn")``: a fresh instance of every callback that applies to the demo model ``kind``, with
    small settings."""
    return _support.all_callbacks


@pytest.fixture(scope="session")
def suite_options():
    """``suite_options(kind="cnn")``: the small per-callback settings of ``all_callbacks``."""
    return _support.suite_options


@pytest.fixture
def tiny_dm():
    from trainviz.data import ShapesDataModule

    return ShapesDataModule(n_train=96, n_val=48, batch_size=32)


@pytest.fixture
def dm(request):
    """Shapes data for a callback's fits: 96 training and 48 validation images in batches of 48, unless the test module
    sets ``DM_SIZES = (n_train, n_val, batch_size)``."""
    from trainviz.data import ShapesDataModule

    n_train, n_val, batch_size = getattr(request.module, "DM_SIZES", (96, 48, 48))
    return ShapesDataModule(n_train=n_train, n_val=n_val, batch_size=batch_size)
