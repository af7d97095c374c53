"""Every Lightning logger gets what it can show, read back with the logger's own client: W&B offline (its run
file and media), MLflow on a local sqlite store (MlflowClient), CSVLogger (metrics.csv), all in one fit."""

from __future__ import annotations

import csv
import glob
import json
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

import trainviz

pytest.importorskip("wandb")
pytest.importorskip("mlflow")


def wandb_rows(run_file: str) -> tuple[list[dict], list]:
    """History rows and metric definitions of an offline W&B run file (a LevelDB-style log of ``Record``
    protobufs after a 7-byte ``:W&B`` header), read with W&B's own protobuf classes."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(run_file).read_bytes()
    pos, block, chunks, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the rest of a block is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        if kind in (1, 4):  # a whole record, or the last piece of one
            chunks.append(buf + chunk if kind == 4 else chunk)
            buf = b""
        else:
            buf += chunk
    rows, metrics = [], []
    for chunk in chunks:
        record = pb.Record()
        record.ParseFromString(chunk)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
        elif kind == "metric":
            metrics.append((record.metric.name or record.metric.glob_name, record.metric.step_metric))
    return rows, metrics


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, demo_model, pl):
    root = tmp_path_factory.mktemp("loggers")
    mp = pytest.MonkeyPatch()
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(root)}.items():
        mp.setenv(key, value)
    uri = f"sqlite:///{root}/mlflow.db"
    loggers = [
        pl.loggers.WandbLogger(save_dir=str(root), offline=True, project="trainviz-test"),
        pl.loggers.MLFlowLogger("t", tracking_uri=uri, artifact_location=str(root / "mlflow-artifacts")),
        pl.loggers.CSVLogger(str(root), name="csv"),
    ]
    callbacks = [
        trainviz.DynamicsCallback(probe_size=24),
        trainviz.CAMCallback(probe_size=12, deletion_steps=2),
        trainviz.EmbeddingCallback(layers=["net.features"], methods=["pca"], probe_size=24, linear_probe_folds=0),
        trainviz.FeatureMapCallback(layers=["net.features"], probe_size=12, n_channels=2),
        trainviz.SaliencyCallback(
            methods=["gradient"], occlusion=False, probe_size=8, deletion_steps=2, sanity_every=0
        ),
        trainviz.MaxActivationCallback(classes=[0, 1], steps=2, final_steps=2),
        trainviz.RobustnessCallback(
            corruptions=["grayscale"], epsilons=[1 / 255], flip_max_steps=2, random_directions=8, probe_size=12
        ),
    ]
    pl.seed_everything(0, verbose=False)
    from trainviz.data import ShapesDataModule

    trainer = pl.Trainer(
        max_epochs=3,
        callbacks=callbacks,
        logger=loggers,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=str(root),
        limit_train_batches=2,
        accelerator="cpu",
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(demo_model(), ShapesDataModule(n_train=64, n_val=48, batch_size=32))
    loggers[0].experiment.finish()  # as a script's end does: W&B commits its last history row then
    mp.undo()
    ours = [str(w.message) for w in caught if "trainviz" in str(w.message)]
    return {"root": root, "loggers": loggers, "uri": uri, "trainer": trainer, "warnings": ours}


def test_wandb_gets_scalars_on_an_epoch_axis_and_captioned_images(fitted):
    (run_file,) = glob.glob(str(fitted["root"] / "wandb" / "offline-run-*" / "run-*.wandb"))
    rows, metrics = wandb_rows(run_file)
    assert ("trainviz/*", "epoch") in metrics  # the x-axis declared with define_metric
    accuracy = [(r["epoch"], r["trainviz/dynamics/accuracy"]) for r in rows if "trainviz/dynamics/accuracy" in r]
    assert [e for e, _ in accuracy] == [0, 1, 2]
    records = [
        json.loads(line)
        for line in (fitted["root"] / "trainviz" / "dynamics" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [a for _, a in accuracy] == pytest.approx([r["accuracy"] for r in records])
    images = [r for r in rows if "trainviz/dynamics/confusion_matrix/filenames" in r]
    assert [r["epoch"] for r in images] == [0, 1, 2]
    assert images[-1]["trainviz/dynamics/confusion_matrix/captions"] == ["dynamics confusion_matrix, epoch 2"]
    media = Path(run_file).parent / "files"
    for row in images:
        (name,) = row["trainviz/dynamics/confusion_matrix/filenames"]
        assert (media / name).is_file() and name.startswith("media/images/trainviz/dynamics/confusion_matrix_")
    steps = [r["_step"] for r in rows if "_step" in r]
    assert steps == sorted(steps)  # W&B's own step only grows
    tables = [r for r in rows if r.get("trainviz/embedding/net.features/pca/table/_type") == "table-file"]
    assert [r["epoch"] for r in tables] == [0, 1, 2]
    table_file = tables[-1]["trainviz/embedding/net.features/pca/table/path"]
    table = json.loads((media / table_file).read_text())
    assert table["columns"] == ["x", "y", "label", "prediction", "epoch"] and len(table["data"]) == 24
    frame = np.load(fitted["root"] / "trainviz" / "embedding" / "epoch_0002" / "net.features.npz")["pca"]
    np.testing.assert_allclose(np.array([row[:2] for row in table["data"]]), frame, atol=1e-5)


def test_mlflow_gets_metrics_per_epoch_images_per_step_and_the_artifact_folder(fitted):
    from mlflow import MlflowClient

    client = MlflowClient(fitted["uri"])
    run_id = fitted["loggers"][1].run_id
    history = client.get_metric_history(run_id, "trainviz/dynamics/accuracy")
    assert sorted(m.step for m in history) == [0, 1, 2]
    cam = client.get_metric_history(run_id, "trainviz/cam/aggregate/average_drop")
    assert sorted(m.step for m in cam) == [0, 1, 2]
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    assert any("confusion_matrix" in path for path in images), images
    assert [a.path for a in client.list_artifacts(run_id, "trainviz")] == sorted(
        f"trainviz/{p.name}" for p in (fitted["root"] / "trainviz").iterdir()
    )


def test_csv_logger_gets_the_scalars_with_an_epoch_column(fitted):
    path = Path(fitted["loggers"][2].log_dir) / "metrics.csv"
    rows = list(csv.DictReader(path.open()))
    columns = set(rows[0])
    assert {"epoch", "trainviz/dynamics/accuracy", "trainviz/cam/aggregate/average_drop"} <= columns
    epochs = [int(float(r["epoch"])) for r in rows if r["trainviz/dynamics/accuracy"]]
    assert epochs == [0, 1, 2]


def test_no_private_tensorboard_beside_other_loggers(fitted):
    assert not (fitted["root"] / "tensorboard").exists()
    assert not list(fitted["root"].rglob("events.out.tfevents.*"))


def test_a_missing_logger_package_names_its_extra(monkeypatch):
    from trainviz.sinks import loggers

    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name: None)
    for backend, extra in (
        (loggers.WandbBackend, "wandb"),
        (loggers.MLflowBackend, "mlflow"),
        (loggers.CometBackend, "comet"),
    ):
        with pytest.raises(ImportError, match=rf"pip install trainviz\[{extra}\]"):
            backend(object())


# One scalar and one image of each inspection callback (features, saliency, MaxOut), in W&B and MLflow.
INSPECTION = {
    "trainviz/features/net.features/dead_fraction": "trainviz/features/net.features/overlay",
    "trainviz/saliency/gradient/deletion_auc": "trainviz/saliency/maps",
    "trainviz/maxact/classes/1/activation": "trainviz/maxact/classes/grid",
}


def _records(fitted, name: str) -> list[dict]:
    path = fitted["root"] / "trainviz" / name / "metrics.jsonl"
    return sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda r: r["epoch"])


def test_the_inspection_callbacks_reach_wandb_and_mlflow(fitted):
    from mlflow import MlflowClient

    (run_file,) = glob.glob(str(fitted["root"] / "wandb" / "offline-run-*" / "run-*.wandb"))
    rows, _ = wandb_rows(run_file)
    client = MlflowClient(fitted["uri"])
    run_id = fitted["loggers"][1].run_id
    logged = {a.path for a in client.list_artifacts(run_id, "images")}
    for scalar, image in INSPECTION.items():
        values = [(r["epoch"], r[scalar]) for r in rows if scalar in r]
        assert [e for e, _ in values] == [0, 1, 2], scalar
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, scalar))
        assert [e for e, _ in history] == [0, 1, 2], scalar
        assert [v for _, v in history] == pytest.approx([v for _, v in values]), scalar
        assert [r["epoch"] for r in rows if f"{image}/filenames" in r] == [0, 1, 2], image
        steps = {
            p.split("+step+")[1].split("+")[0] for p in logged if p.startswith(f"images/{image.replace('/', '~')}+")
        }
        assert steps == {"0", "1", "2"}, (image, sorted(logged))  # MLflow writes the key's slashes as ~
    key = "trainviz/features/net.features/dead_fraction"
    wandb_dead = [r[key] for r in rows if key in r]
    assert wandb_dead == pytest.approx([r["net.features/dead_fraction"] for r in _records(fitted, "features")])


def test_mlflow_names_with_characters_it_refuses_are_rewritten_not_lost(fitted):
    """MLflow refuses a whole metric batch for one name with ``@``: the FGSM accuracy is logged as ``:``."""
    from mlflow import MlflowClient

    assert fitted["warnings"] == []  # no background write failed
    client = MlflowClient(fitted["uri"])
    run_id = fitted["loggers"][1].run_id
    fgsm = client.get_metric_history(run_id, "trainviz/robustness/fgsm/accuracy:0.0039")
    clean = client.get_metric_history(run_id, "trainviz/robustness/clean/accuracy")
    records = [
        json.loads(line) for line in (fitted["root"] / "trainviz/robustness/metrics.jsonl").read_text().splitlines()
    ]
    assert sorted(m.step for m in fgsm) == sorted(m.step for m in clean) == sorted(r["epoch"] for r in records)
    assert sorted(m.step for m in client.get_metric_history(run_id, "trainviz/robustness/adversarial/flip_rate"))


def test_csv_scalars_wait_for_the_training_thread_while_a_checkpoint_is_saved(tmp_path, pl):
    """Lightning's checkpoint save runs inside fsspec's transaction on the shared local file system; a CSV save
    from trainviz's writer thread meanwhile was taken into it and the checkpoint failed (a DDP run died of it). The
    CSV logger's scalars are now held and handed over on the training thread."""
    import fsspec

    from trainviz.sinks import BackgroundWriter, Sink
    from trainviz.sinks.loggers import CSVBackend

    logger = pl.loggers.CSVLogger(str(tmp_path), name="", version="")
    sink = Sink("demo", None, None, background=BackgroundWriter(), loggers=[CSVBackend(logger)])
    fs = fsspec.filesystem("file")
    with fs.transaction:  # what Lightning's _atomic_save holds on the training thread
        with fs.open(str(tmp_path / "last.ckpt"), "wb") as f:
            f.write(b"checkpoint")
            sink.scalar("acc", 0.5, 3)
            sink.background.flush()  # the writer thread has run the write
    assert (tmp_path / "last.ckpt").read_bytes() == b"checkpoint"  # the transaction committed
    assert not (tmp_path / "metrics.csv").exists()  # held until the training thread hands it over
    sink.flush()
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert rows == [{"trainviz/demo/acc": "0.5", "epoch": "3", "step": rows[0]["step"]}]
