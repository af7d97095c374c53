"""``RunManifestCallback``: what is needed to reproduce a run, after the provenance DeepForge records (Broll &
Whitaker, "DeepForge: An Open Source, Collaborative Environment for Reproducible Deep Learning": code version,
data, seeds and library versions of every run).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from typing_extensions import override

from trainviz.callbacks.base import ProbeCallback, make_sink, release_sinks
from trainviz.core.budget import Scheduler
from trainviz.core.common import json_number

__all__ = ["RunManifestCallback", "collect_manifest"]

PACKAGES = (
    "trainviz",
    "torch",
    "torchvision",
    "pytorch-lightning",
    "numpy",
    "scikit-learn",
    "umap-learn",
    "plotly",
    "tensorboard",
    "kornia",
)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return json_number(value)  # JSON has no NaN or infinity
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return repr(value)


def collect_manifest(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
    """Everything the manifest records, as plain JSON values."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain") if commit else None
    dm = trainer.datamodule
    probes = {
        cb.state_key: {
            "fingerprint": cb.probe.fingerprint(),
            "size": len(cb.probe),
            "seed": cb.probe_seed,
            "split": cb.split,
            "normalization": None
            if cb.norm is None
            else {"mean": list(cb.norm.mean), "std": list(cb.norm.std), "source": cb.norm_source},
            "pixels": cb.pixels,
            "display": None if cb.display is None else cb.display.record(),
        }
        for cb in trainer.callbacks
        if isinstance(cb, ProbeCallback) and cb.probe is not None
    }
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [sys.executable, *sys.argv],
        "cwd": os.getcwd(),
        "host": platform.node(),
        "git": {"commit": commit, "dirty": bool(status) if status is not None else None},
        "versions": _versions(),
        "seeds": {"PL_GLOBAL_SEED": os.environ.get("PL_GLOBAL_SEED"), "torch_initial_seed": torch.initial_seed()},
        "model": {"class": type(pl_module).__qualname__, "hparams": _plain(dict(pl_module.hparams))},
        "data": {
            "class": type(dm).__qualname__ if dm is not None else None,
            "hparams": _plain(dict(dm.hparams)) if dm is not None else {},
        },
        "trainer": {
            "max_epochs": trainer.max_epochs,
            "precision": str(trainer.precision),
            "accelerator": type(trainer.accelerator).__name__,
            "num_devices": trainer.num_devices,
            "world_size": trainer.world_size,
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "start_epoch": trainer.current_epoch,
            "ckpt_path": trainer.ckpt_path,
        },
        "probe_sets": probes,
    }


def _markdown(manifest: dict[str, Any]) -> str:
    rows = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            text = str(value).replace("|", "\\|")
            rows.append(f"| {prefix} | {text} |")

    walk("", manifest)
    return "| key | value |\n| --- | --- |\n" + "\n".join(rows)


class RunManifestCallback(Callback):
    """Records a run manifest when training starts (after a checkpoint is restored): git commit and dirty flag,
    package versions, seeds, hyperparameters of the model and datamodule, command line, trainer settings, and for
    every trainviz probe set its fingerprint and the pixel mapping used (mean, std, and where it came from:
    ``callback``, ``default_callbacks``, ``datamodule``, ``transform`` or ``identity``). Not a probe callback: it
    has no probe set and computes nothing on the model. Hyperparameters that are not JSON values are stored as
    their ``repr``, non-finite numbers as ``null``.

    Logged keys:
        - ``trainviz/manifest/manifest`` (text, step = start epoch): the manifest as a table.
        - artifacts ``manifest/manifest.json`` (the latest fit; at fit end it gains ``budget``: training
          seconds and, per callback with a ``budget``, its fraction, seconds spent and every skipped run or
          part with the reason) and ``manifest/runs.jsonl`` (one record per fit, so a resumed run keeps the
          first one).

    Raises:
        Nothing of its own: a missing ``git`` or package records ``None``; it writes on rank zero only and not under
        ``fast_dev_run``.

    Example:
        >>> import json, pathlib, tempfile, pytorch_lightning as pl
        >>> from trainviz import RunManifestCallback
        >>> from trainviz.data import ShapesDataModule
        >>> from trainviz.models import DemoClassifier
        >>> root = tempfile.mkdtemp()
        >>> trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, callbacks=[RunManifestCallback()], logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...                      default_root_dir=root)
        >>> trainer.fit(DemoClassifier(num_classes=6, in_channels=3), ShapesDataModule(n_train=64, n_val=32))
        >>> manifest = json.loads((pathlib.Path(root) / "trainviz" / "manifest" / "manifest.json").read_text())
        >>> manifest["model"]["class"], manifest["trainer"]["max_epochs"]
        ('DemoClassifier', 1)
    """

    name = "manifest"

    def __init__(self) -> None:
        super().__init__()
        self.manifest: dict[str, Any] | None = None
        self._log_dir: str | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._log_dir = trainer.log_dir or trainer.default_root_dir  # collective: every rank calls it

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.fast_dev_run:
            return
        self.manifest = collect_manifest(trainer, pl_module)
        sink = make_sink(trainer, self.name, self._log_dir or trainer.default_root_dir, self)
        step = trainer.current_epoch
        sink.text("manifest", _markdown(self.manifest), step)
        sink.json("manifest.json", self.manifest)
        sink.record("runs", {"start_epoch": step, **self.manifest})
        sink.flush()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            release_sinks(self)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        release_sinks(self)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After every callback's fit-end run: what the overhead budget let run, and what it skipped.
        scheduler = Scheduler.of(trainer)
        if self.manifest is None or scheduler is None or not trainer.is_global_zero:
            return
        self.manifest["budget"] = scheduler.summary()
        sink = make_sink(trainer, self.name, self._log_dir or trainer.default_root_dir, self)
        sink.json("manifest.json", self.manifest)
        sink.flush()
