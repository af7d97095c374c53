"""The run manifest records what reproduces a run and no secrets: after a one-epoch fit with
``default_callbacks()`` and ``trainviz report``, a secret given on the command line, inside URLs, in the git
remote, the checkpoint path and nested hyperparameters appears in nothing trainviz writes (every file of the run
folder, the report, the TensorBoard event file, MLflow read back with ``MlflowClient``, the W&B offline run),
while the harmless values beside it are there; ``redact=`` adds names; ``redact=False`` warns and records
verbatim."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

import trainviz
from trainviz import RunManifestCallback

SECRET = "Zq9xS3CR3Tv4lue"
MARK = "Kp7harmlessMARK"  # beside each secret: proves that each channel carries the manifest at all


@pytest.fixture(scope="session")
def _manifest_fit(demo_model):
    def _manifest_fit(root: Path, callbacks: list, argv: list[str], monkeypatch, hparams: dict | None = None) -> dict:
        from trainviz.data import ShapesDataModule

        monkeypatch.setattr(sys, "argv", argv)
        model = demo_model()
        model.hparams.update(hparams or {})
        trainer = pl.Trainer(
            max_epochs=1,
            limit_train_batches=1,
            limit_val_batches=1,
            num_sanity_val_steps=0,
            callbacks=callbacks,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=str(root),
        )
        trainer.fit(model, ShapesDataModule(n_train=32, n_val=16, batch_size=16))
        return json.loads((root / "trainviz" / "manifest" / "manifest.json").read_text())

    return _manifest_fit


def test_redact_is_checked_in_init_and_false_warns():
    for bad in (None, 3, [""], ["ok", 2]):
        with pytest.raises(ValueError, match=r"Expected `redact` to be True, False, a name pattern"):
            RunManifestCallback(redact=bad)
    with pytest.warns(UserWarning, match=r"redact=False.*verbatim, secrets included"):
        RunManifestCallback(redact=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert RunManifestCallback().extra_names == ()
        assert RunManifestCallback(redact="wandb_key").extra_names == ("wandb_key",)
    (manifest,) = [cb for cb in trainviz.default_callbacks(manifest={"redact": ["wandb_key"]}) if cb.name == "manifest"]
    assert manifest.extra_names == ("wandb_key",)


def test_extra_names_and_redaction_off(tmp_path, monkeypatch, _manifest_fit):
    argv = ["train.py", "--wandb-key", SECRET, f"--api-key={SECRET}", f"--run={MARK}"]
    hparams = {"cfg": {"wandb_key": SECRET, "name": MARK}}
    manifest = _manifest_fit(tmp_path / "a", [RunManifestCallback(redact=["wandb_key"])], argv, monkeypatch, hparams)
    assert manifest["command"][1:] == ["train.py", "--wandb-key", "***", "--api-key=***", f"--run={MARK}"]
    assert manifest["model"]["hparams"]["cfg"] == {"wandb_key": "***", "name": MARK}
    assert manifest["redaction"] == {
        "enabled": True,
        "extra_names": ["wandb_key"],
        "redacted": ["command[3]", "command[4]", "model.hparams.cfg.wandb_key"],
    }
    with pytest.warns(UserWarning, match="redact=False"):
        off = RunManifestCallback(redact=False)
    manifest = _manifest_fit(tmp_path / "b", [off], argv, monkeypatch, hparams)
    assert manifest["command"][1:] == argv
    assert manifest["model"]["hparams"]["cfg"] == hparams["cfg"]
    assert manifest["redaction"] == {"enabled": False, "extra_names": [], "redacted": []}


def _git_repo(path: Path, remote: str) -> None:
    path.mkdir()
    git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    (path / "train.py").write_text("print()\n")
    subprocess.run([*git, "add", "train.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    subprocess.run([*git, "remote", "add", "origin", remote], check=True)


def test_git_remote_is_recorded_without_credentials(tmp_path, monkeypatch):
    from trainviz.callbacks.manifest import _remote

    _git_repo(tmp_path / "repo", f"https://x-access-token:{SECRET}@github.com/o/r.git")
    monkeypatch.chdir(tmp_path / "repo")
    assert _remote() == "https://x-access-token:***@github.com/o/r.git"
    subprocess.run(["git", "remote", "set-url", "origin", f"https://{SECRET}@github.com/o/r.git"], check=True)
    assert _remote() == "https://***@github.com/o/r.git"
    subprocess.run(["git", "remote", "rename", "origin", "upstream"], check=True)
    assert _remote() == "https://***@github.com/o/r.git"  # no origin: the first remote
    monkeypatch.chdir(tmp_path)
    assert _remote() is None  # not a repository


class _SignedCheckpointPath(Callback):
    """Makes the trainer report a signed checkpoint URL as its ``ckpt_path`` (as after ``fit(ckpt_path=URL)``)
    before the manifest reads it; Lightning reads the path only when it restores, before this hook."""

    def on_train_start(self, trainer, pl_module):
        trainer._checkpoint_connector._ckpt_path = f"s3://bucket/{MARK}/last.ckpt?X-Amz-Signature={SECRET}"


def _configured_model(hparams: dict, log_hyperparams: bool):
    """The demo classifier with more hyperparameters, saved as a user's model saves them (and, with
    ``log_hyperparams=False``, not sent to the loggers: ``save_hyperparameters(logger=False)``)."""
    from trainviz.models import DemoClassifier

    class ConfiguredClassifier(DemoClassifier):
        def __init__(self, s3: dict, cfg: object, dataset_url: str, **kwargs: object) -> None:
            super().__init__(**kwargs)
            self.save_hyperparameters(logger=log_hyperparams)

    pl.seed_everything(0, verbose=False)
    return ConfiguredClassifier(**hparams, num_classes=6, in_channels=3)


def _wandb_records(run_file: Path) -> list:
    """Every record of an offline W&B run file (see tests/sinks/test_loggers.py for the format)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    pos, block, chunks, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        if kind in (1, 4):
            chunks.append(buf + chunk if kind == 4 else chunk)
            buf = b""
        else:
            buf += chunk
    records = []
    for chunk in chunks:
        record = pb.Record()
        record.ParseFromString(chunk)
        records.append(record)
    return records


@pytest.mark.slow
def test_no_secret_in_anything_trainviz_writes(tmp_path, monkeypatch, suite_options):
    pytest.importorskip("wandb")
    mlflow = pytest.importorskip("mlflow")
    omegaconf = pytest.importorskip("omegaconf")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from trainviz.data import ShapesDataModule
    from trainviz.report import build_report

    root = tmp_path / "run"
    _git_repo(tmp_path / "repo", f"https://oauth2:{SECRET}@gitlab.example/{MARK}/r.git")
    monkeypatch.chdir(tmp_path / "repo")
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(root)}.items():
        monkeypatch.setenv(key, value)
    argv = [
        "train.py",
        f"--api-key={SECRET}",
        "--db",
        f"postgresql://{MARK}:{SECRET}@db.example:5432/x",
        "--hf-token",
        SECRET,
        f"model.s3.password={SECRET}",
        json.dumps({"wandb": {"api_key": SECRET, "project": MARK}}),
        f"--run-name={MARK}",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    # Lightning's own hyperparameter logging off (`save_hyperparameters(logger=False)`): hparams.yaml,
    # TensorBoard's hparams, MLflow params and the W&B config are the loggers' records, not trainviz's
    hparams = {
        "s3": {"bucket": MARK, "secret_access_key": SECRET},
        "cfg": omegaconf.OmegaConf.create({"db": {"host": MARK, "password": SECRET}}),
        "dataset_url": f"https://hub.example/{MARK}?token={SECRET}&rev=main",
    }
    model = _configured_model(hparams, log_hyperparams=False)
    dm = ShapesDataModule(n_train=64, n_val=32, batch_size=32)
    dm.hparams.update({"mirror": f"https://{MARK}:{SECRET}@mirror.example/data"})
    uri = f"sqlite:///{root}/mlflow.db"
    root.mkdir()
    loggers = [
        TensorBoardLogger(str(root), name="", version=""),
        MLFlowLogger("redact", tracking_uri=uri, artifact_location=str(root / "mlflow-artifacts")),
        # W&B records the command line itself (its run metadata): off here, see the README's "Secrets"
        WandbLogger(save_dir=str(root), offline=True, project="redact", settings={"x_disable_meta": True}),
    ]
    options = {name: {**opts, "probe_size": 16} for name, opts in suite_options().items()}
    options["embedding"]["methods"] = ["pca"]  # UMAP's compile time buys nothing here
    options = {k: v for k, v in options.items() if k in ("dynamics", "cam", "features", "robustness", "embedding")}
    callbacks = [_SignedCheckpointPath(), *trainviz.default_callbacks(budget=None, **options)]
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        accelerator="cpu",
        logger=loggers,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(root),
    )
    trainer.fit(model, dm)
    loggers[2].experiment.finish()
    page = build_report(root)

    # the manifest: secrets redacted where they were, the harmless values beside them kept
    manifest = json.loads((root / "trainviz" / "manifest" / "manifest.json").read_text())
    assert manifest["command"][1:] == [
        "train.py",
        "--api-key=***",
        "--db",
        f"postgresql://{MARK}:***@db.example:5432/x",
        "--hf-token",
        "***",
        "model.s3.password=***",
        json.dumps({"wandb": {"api_key": "***", "project": MARK}}),
        f"--run-name={MARK}",
    ]
    hparams = manifest["model"]["hparams"]
    assert {k: hparams[k] for k in ("num_classes", "arch")} == {"num_classes": 6, "arch": "cnn"}
    assert hparams["s3"] == {"bucket": MARK, "secret_access_key": "***"}
    assert hparams["cfg"] == {"db": {"host": MARK, "password": "***"}}
    assert hparams["dataset_url"] == f"https://hub.example/{MARK}?token=***&rev=main"
    assert manifest["data"]["hparams"] == {"mirror": f"https://{MARK}:***@mirror.example/data"}
    assert manifest["git"]["remote"] == f"https://oauth2:***@gitlab.example/{MARK}/r.git"
    assert manifest["trainer"]["ckpt_path"] == f"s3://bucket/{MARK}/last.ckpt?X-Amz-Signature=***"
    assert manifest["redaction"]["redacted"] == [
        "command[2]",
        "command[4]",
        "command[6]",
        "command[7]",
        "command[8].wandb.api_key",
        "model.hparams.s3.secret_access_key",
        "model.hparams.cfg.db.password",
        "model.hparams.dataset_url",
        "data.hparams.mirror",
        "trainer.ckpt_path",
    ]

    # every file under the run folder: the artifacts, the report, TensorBoard, MLflow's store, the W&B run
    files = [p for p in root.rglob("*") if p.is_file()]
    leaks = [str(p.relative_to(root)) for p in files if SECRET.encode() in p.read_bytes()]
    assert leaks == []
    carried = {str(p.relative_to(root)) for p in files if MARK.encode() in p.read_bytes()}
    assert {"trainviz/manifest/manifest.json", "trainviz/manifest/runs.jsonl"} <= carried
    assert page.read_text().count(MARK) >= 6  # the report's manifest table
    (events,) = root.glob("events.out.tfevents.*")
    assert str(events.relative_to(root)) in carried

    # TensorBoard: the manifest's text, read back
    acc = EventAccumulator(str(root), size_guidance={"tensors": 0})
    acc.Reload()
    (text,) = acc.Tensors("trainviz/manifest/manifest/text_summary")
    table = text.tensor_proto.string_val[0].decode()
    assert f"--run-name={MARK}" in table and "--api-key=***" in table
    assert SECRET not in table

    # MLflow: what trainviz logs (metrics, images, the artifact folder), read back with its client
    client = mlflow.MlflowClient(uri)
    run_id = loggers[1].run_id
    run = client.get_run(run_id)
    assert not any(SECRET in f"{k}={v}" for k, v in {**run.data.params, **run.data.tags}.items())
    assert run.data.metrics  # trainviz's scalars arrived
    got = Path(client.download_artifacts(run_id, "trainviz/manifest", str(tmp_path / "mlflow-download")))
    logged = json.loads((got / "manifest.json").read_text())
    assert logged["command"] == manifest["command"] and logged["model"]["hparams"] == hparams
    downloaded = [p for p in got.rglob("*") if p.is_file()]
    assert downloaded and not any(SECRET.encode() in p.read_bytes() for p in downloaded)

    # W&B: every record of the offline run (trainviz's history rows among them)
    (run_file,) = root.glob("wandb/offline-run-*/run-*.wandb")
    records = _wandb_records(run_file)
    assert any(r.WhichOneof("record_type") == "history" for r in records)
    assert not any(SECRET in str(r) for r in records)
