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
import warnings
from collections.abc import Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any

import torch
from typing_extensions import override

from trainviz.callbacks.base import ProbeCallback, make_sink, release_sinks
from trainviz.core.budget import Scheduler
from trainviz.core.distributed import Collective
from trainviz.core.namespace import callback_base
from trainviz.core.redact import Redactor, check_patterns, strip_url_credentials

if TYPE_CHECKING:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import Callback
else:
    Callback = callback_base()  # the Callback of every installed Lightning namespace (trainviz.core.namespace)

__all__ = ["RunManifestCallback", "collect_manifest"]

PACKAGES = (
    "trainviz",
    "torch",
    "torchvision",
    "lightning",
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


def _remote() -> str | None:
    """The URL of the ``origin`` remote (else the first remote), without credentials, or ``None``."""
    names = (_git("remote") or "").split()
    if not names:
        return None
    return strip_url_credentials(_git("remote", "get-url", "origin" if "origin" in names else names[0]))


def collect_manifest(
    trainer: pl.Trainer, pl_module: pl.LightningModule, redactor: Redactor | None = None
) -> dict[str, Any]:
    """Everything the manifest records, as plain JSON values, with its secrets redacted by ``redactor`` (a
    default :class:`~trainviz.core.redact.Redactor` if ``None``; its ``redacted`` lists what it redacted)."""
    redactor = Redactor() if redactor is None else redactor
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
    manifest = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        # the command line first (its own rules: `--name value`, JSON arguments), then every value of the
        # manifest, hyperparameters structurally, before anything becomes a string
        "command": redactor.argv([sys.executable, *sys.argv], path="command"),
        "cwd": os.getcwd(),
        "host": platform.node(),
        "git": {
            "commit": commit,
            "dirty": bool(status) if status is not None else None,
            "remote": _remote() if commit else None,
        },
        "versions": _versions(),
        "seeds": {"PL_GLOBAL_SEED": os.environ.get("PL_GLOBAL_SEED"), "torch_initial_seed": torch.initial_seed()},
        "model": {"class": type(pl_module).__qualname__, "hparams": pl_module.hparams},
        "data": {
            "class": type(dm).__qualname__ if dm is not None else None,
            "hparams": dm.hparams if dm is not None else {},
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
    plain: dict[str, Any] = redactor.plain(manifest)
    plain["redaction"] = {
        "enabled": redactor.enabled,
        "extra_names": list(redactor.extra),
        "redacted": list(redactor.redacted),
    }
    return plain


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
    ``callback``, ``default_callbacks``, ``datamodule``, ``transform`` or ``identity``), and the git remote
    (``origin``, else the first) without credentials. Not a probe callback: it has no probe set and computes
    nothing on the model. Hyperparameters are stored as plain JSON values: dataclasses, ``argparse.Namespace``,
    OmegaConf configs (interpolations unresolved) and pydantic models as dicts, anything else as its ``repr``,
    non-finite numbers as ``null``.

    Secrets are redacted before anything is written (:mod:`trainviz.core.redact`): values whose name marks a
    secret (``api_key``, ``password``, ``secret``, ``hf_token``, ... but not ``class_token``, ``key_dim`` or
    ``author``) in the command line (``--name=value``, ``--name value``, Hydra ``a.b.password=value``, JSON
    arguments) and in the hyperparameters at any depth, and credentials inside any string (``user:password@`` in
    URLs, ``?token=``, ``&sig=``, ``Bearer ...``): the value becomes ``***``. ``redaction.redacted`` lists the
    paths of the redacted values (``command[3]``, ``model.hparams.s3.secret_access_key``), never the values.
    What the loggers record themselves (Lightning logs the hyperparameters to every logger, W&B records the
    command line) is outside trainviz's reach: see the README's "Secrets".

    Args:
        redact: ``True`` (default) redacts by the built-in names; a name pattern or a list of them adds names
            (matched by whole parts like the built-in ones, e.g. ``["wandb_key"]``); ``False`` turns redaction
            off, with a warning.

    Logged keys:
        - ``trainviz/manifest/manifest`` (text, step = start epoch): the manifest as a table (redacted).
        - artifacts ``manifest/manifest.json`` (the latest fit; at fit end it gains ``budget``: training
          seconds and, per callback with a ``budget``, its fraction, seconds spent and every skipped run or
          part with the reason) and ``manifest/runs.jsonl`` (one record per fit, so a resumed run keeps the
          first one).

    Raises:
        ValueError: ``redact`` is not a bool, a string or a list of strings. Otherwise nothing of its own: a
            missing ``git`` or package records ``None``; it writes on rank zero only and not under
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

    def __init__(self, redact: bool | str | Sequence[str] = True) -> None:
        super().__init__()
        if redact is False:
            warnings.warn(
                "RunManifestCallback(redact=False): the manifest records the command line and the hyperparameters "
                "verbatim, secrets included, in the artifact folder, TensorBoard and the HTML report.",
                UserWarning,
                stacklevel=2,
            )
        self.redact = redact
        self.extra_names: tuple[str, ...] = () if isinstance(redact, bool) else check_patterns(redact)
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
        redactor = Redactor(self.extra_names, enabled=self.redact is not False)
        self.manifest = collect_manifest(trainer, pl_module, redactor)
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
        if scheduler is not None:
            scheduler.stop(group=Collective.of(trainer))  # after every callback's fit-end runs (on_train_end)
        if self.manifest is None or scheduler is None or not trainer.is_global_zero:
            return
        self.manifest["budget"] = scheduler.summary()
        sink = make_sink(trainer, self.name, self._log_dir or trainer.default_root_dir, self)
        sink.json("manifest.json", self.manifest)
        sink.flush()
