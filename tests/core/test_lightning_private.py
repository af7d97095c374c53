"""The one module that reads Lightning's private attributes (trainviz.core.lightning_private): each read on a real
fit, and with the attribute gone (a later Lightning release): the fallback, one warning naming the version, and the
fit goes on. No other module of trainviz reads a private Lightning attribute."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

import trainviz
from trainviz.callbacks.base import ProbeCallback
from trainviz.core import lightning_private as private

SRC = Path(__file__).resolve().parents[2] / "src" / "trainviz"


class _Spy(ProbeCallback):
    """Records what the accessors give during a fit."""

    name = "spy"
    needs_pixels = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.found: dict[str, object] = {}
        self.last_batches: list[bool] = []

    def setup(self, trainer, pl_module, stage):
        self.found = {split: private.data_source_dataset(trainer, split) for split in ("train", "val")}
        super().setup(trainer, pl_module, stage)

    def on_validation_start(self, trainer, pl_module):
        self.last_batches.append(private.is_last_batch(trainer))

    def _run(self, trainer, pl_module, epoch):
        pass


def test_the_fit_arguments_data_and_the_last_batch_are_found(tmp_path, tiny_dm, demo_model, make_trainer):
    tiny_dm.setup("fit")
    train, val = DataLoader(tiny_dm.train_set, batch_size=32), DataLoader(tiny_dm.val_set, batch_size=32)
    spy = _Spy(probe_size=8, normalization=tiny_dm.normalization)
    make_trainer(tmp_path, [spy], max_epochs=1, num_sanity_val_steps=0).fit(demo_model(), train, val)
    assert spy.found == {"train": tiny_dm.train_set, "val": tiny_dm.val_set}
    assert spy.last_batches == [True] and len(spy.probe) == 8  # the one validation ends the epoch's batches


def test_without_the_private_attributes_the_fallbacks_warn_with_the_version(
    tmp_path, tiny_dm, demo_model, make_trainer, monkeypatch, pl
):
    trainer = make_trainer(tmp_path, [], max_epochs=1)
    monkeypatch.delattr(trainer.fit_loop.epoch_loop.val_loop, "_data_source")
    monkeypatch.delattr(trainer.fit_loop.epoch_loop, "batch_progress")
    version = re.escape(pl.__version__)
    with pytest.warns(RuntimeWarning, match=rf"{version} has no `_data_source`.*probe data given to `fit`"):
        assert private.data_source_dataset(trainer, "val") is None
    with pytest.warns(RuntimeWarning, match=rf"{version} has no `epoch_loop.batch_progress.is_last_batch`"):
        assert private.is_last_batch(trainer) is False
    # a callback then asks for its data plainly, before the first epoch
    with pytest.warns(RuntimeWarning, match="_data_source"), pytest.raises(ValueError, match="probe_data="):
        trainer.strategy.connect(demo_model())
        trainviz.DynamicsCallback(probe_size=8).setup(trainer, demo_model(), "fit")


def test_the_progress_bar_console_and_the_mlflow_uri_fall_back_to_none():
    class Bar:
        _console = "console"

    class Logger:
        _tracking_uri = "file:./mlruns"

    assert private.rich_console(Bar()) == "console" and private.rich_console(object()) is None
    assert private.mlflow_tracking_uri(Logger()) == "file:./mlruns" and private.mlflow_tracking_uri(object()) is None


def test_no_other_module_reads_a_private_lightning_attribute():
    pattern = re.compile(r"\b(loop|trainer|fit_loop|logger|bar)\._[a-z]\w*")
    readers = [
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if path.name != "lightning_private.py" and pattern.search(path.read_text())
    ]
    assert readers == []
