"""EmbeddingCallback under real fits on small shapes data: captured features against a direct forward, frames
against the ops (PCA, warm-started UMAP, Procrustes), metrics, TensorBoard keys, plotly animations, projector
files read back through a TensorBoard server after a resume, background failures, no trace, hooks, settings,
DDP (the render functions it draws with: tests/render/test_embedding_images.py)."""

from __future__ import annotations

import importlib.util
import json
import re
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import trainviz.probes.embedding as embedding_module  # the computation: where the ops are looked up
from trainviz.callbacks.embedding import EmbeddingCallback
from trainviz.core.hooks import count_hooks
from trainviz.ops.embedding import knn_accuracy, pca, procrustes_align, silhouette, umap_embed
from trainviz.probes.embedding import EmbeddingResult

LAYERS = ["net.features.1", "net.features", "net.fc"]
_spec = importlib.util.spec_from_file_location(
    "projector_helpers", Path(__file__).parents[1] / "sinks" / "test_projector.py"
)
tb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tb)  # start_tensorboard, get, projector_info


DM_SIZES = (240, 120, 60)  # the `dm` fixture's n_train, n_val, batch_size


@pytest.fixture(scope="session")
def fit(demo_model, make_trainer):
    def fit(root, callbacks, dm, epochs=2, **kwargs):
        pl.seed_everything(0, verbose=False)
        model = demo_model()
        trainer = make_trainer(root, callbacks, max_epochs=epochs, **kwargs)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*(does not have many workers|number of training batches).*")
            trainer.fit(model, dm)
        return model, trainer

    return fit


class WaitForWorker(Callback):
    """Lets the background work of each run finish before the next epoch: a timing-independent cadence."""

    def __init__(self, cb: EmbeddingCallback) -> None:
        self.cb = cb

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.cb.worker.wait()


def npz(root, epoch, layer):
    with np.load(Path(root) / "trainviz" / "embedding" / f"epoch_{epoch:04d}" / f"{layer}.npz") as data:
        return dict(data)


def frame_names(html: str) -> list[str]:
    return re.findall(r'"name":\s*"(epoch \d+)"', html.split("addFrames", 1)[1])


# ------------------------------------------------------------------------------------------------ fits


def test_fit_captures_projects_scores_and_writes_every_output(tmp_path, dm, fit):
    cb = EmbeddingCallback(
        layers=LAYERS,
        methods=["umap", "pca"],
        slow_every_k=2,
        linear_probe_folds=2,
        save_features=True,
        n_neighbors=10,
        strict=True,
    )
    model, _ = fit(tmp_path, [cb, WaitForWorker(cb)], dm, epochs=4)
    assert cb.done_epochs == [0, 1, 2, 3] and cb.failures == 0 and count_hooks(model) == 0
    assert len(cb.probe) == 120 and cb.methods == ("pca", "umap")  # probe_size=None: the whole 120-image split

    # The last run's features and predictions are those of the final model on the probe images.
    probe, labels = cb.probe, cb.probe.labels.numpy()
    model.eval()
    with torch.no_grad():
        direct = {
            "net.features.1": model.net.features[:2](probe.images).mean((2, 3)),
            "net.features": model.net.features(probe.images).mean((2, 3)),
            "net.fc": model(probe.images),
        }
    last = {layer: npz(tmp_path, 3, layer) for layer in LAYERS}
    for layer in LAYERS:
        np.testing.assert_allclose(last[layer]["features"], direct[layer].numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(last[layer]["ids"], probe.ids.numpy())
        np.testing.assert_array_equal(last[layer]["predictions"], direct["net.fc"].argmax(1).numpy())

    # Frames: PCA every run, UMAP on runs 0 and 2 (k=2) and at the last epoch, each aligned to the previous.
    runs = [{layer: npz(tmp_path, e, layer) for layer in LAYERS} for e in range(4)]
    assert [sorted(k for k in r["net.fc"] if k in ("pca", "umap")) for r in runs] == [
        ["pca", "umap"],
        ["pca"],
        ["pca", "umap"],
        ["pca", "umap"],
    ]

    def unit(frame):  # centred, RMS radius 1
        centred = frame - frame.mean(0)
        return centred / np.sqrt((centred**2).sum(1).mean())

    f0, f1 = runs[0]["net.fc"]["features"], runs[1]["net.fc"]["features"]
    np.testing.assert_allclose(
        runs[0]["net.fc"]["pca"], unit(pca(torch.from_numpy(f0), 2).numpy()), rtol=1e-4, atol=1e-4
    )
    expected = procrustes_align(unit(pca(torch.from_numpy(f1), 2).numpy()), runs[0]["net.fc"]["pca"])
    np.testing.assert_allclose(runs[1]["net.fc"]["pca"], expected, rtol=1e-4, atol=1e-4)
    prev = runs[0]["net.features"]["umap"]
    warm = umap_embed(runs[2]["net.features"]["features"], init=prev, seed=0, n_neighbors=10)
    np.testing.assert_allclose(runs[2]["net.features"]["umap"], procrustes_align(unit(warm), prev), atol=1e-3)
    radius = np.sqrt((runs[3]["net.fc"]["pca"] ** 2).sum(1).mean())
    assert radius == pytest.approx(1, rel=1e-4) and np.abs(runs[3]["net.fc"]["pca"].mean(0)).max() < 1e-4

    # Metrics: recomputed from the stored features; TensorBoard has every key at the right steps.
    records = [json.loads(line) for line in (tmp_path / "trainviz/embedding/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    assert [r["methods"] for r in records] == [["pca", "umap"], ["pca"], ["pca", "umap"], ["pca", "umap"]]
    assert records[3]["net.fc/knn_accuracy"] == pytest.approx(knn_accuracy(last["net.fc"]["features"], labels, k=5))
    assert records[3]["net.features/silhouette"] == pytest.approx(silhouette(last["net.features"]["features"], labels))
    typed = EmbeddingResult.from_record(records[3])  # the record schema, read back through its type
    assert typed.methods == ("pca", "umap") and typed.record() == records[3]
    assert typed.layers["net.fc"].scores["knn_accuracy"] == records[3]["net.fc/knn_accuracy"]
    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars, images = set(acc.Tags()["scalars"]), set(acc.Tags()["images"])
    per_layer = [
        "knn_accuracy",
        "silhouette",
        "linear_probe_accuracy",
        "pca/trustworthiness",
        "pca/explained_variance",
        "pca/stability",
        "umap/trustworthiness",
        "umap/stability",
    ]
    assert {f"trainviz/embedding/{layer}/{key}" for layer in LAYERS for key in per_layer} <= scalars
    assert {
        "trainviz/embedding/seconds",
        "trainviz/embedding/worker_seconds",
        "trainviz/embedding/projection_seconds/umap",
    } <= scalars
    assert [e.step for e in acc.Scalars("trainviz/embedding/net.fc/knn_accuracy")] == [0, 1, 2, 3]
    assert [e.step for e in acc.Scalars("trainviz/embedding/net.fc/umap/trustworthiness")] == [0, 2, 3]
    assert [e.step for e in acc.Scalars("trainviz/embedding/net.fc/umap/stability")] == [2, 3]
    assert all(0.5 < e.value <= 1 for e in acc.Scalars("trainviz/embedding/net.fc/pca/trustworthiness"))
    assert {f"trainviz/embedding/{layer}/{m}" for layer in LAYERS for m in ("pca", "umap")} | {
        "trainviz/embedding/depth/pca",
        "trainviz/embedding/depth/umap",
    } == images
    assert [e.step for e in acc.Images("trainviz/embedding/depth/umap")] == [0, 2, 3]

    # Animations: one frame per run of the method, a relative plotly.js written once.
    folder = tmp_path / "trainviz" / "embedding"
    assert frame_names((folder / "net.fc_pca.html").read_text()) == ["epoch 0", "epoch 1", "epoch 2", "epoch 3"]
    assert frame_names((folder / "net.fc_umap.html").read_text()) == ["epoch 0", "epoch 2", "epoch 3"]
    depth = (folder / "depth_umap.html").read_text()
    assert 'src="plotly.min.js"' in depth and (folder / "plotly.min.js").stat().st_size > 1_000_000
    assert all(f'"text":"{layer}"' in depth.replace(": ", ":") for layer in LAYERS)  # one subplot per layer

    # The checkpoint state round-trips the frame history.
    fresh = EmbeddingCallback(layers=LAYERS, methods=["umap", "pca"])
    fresh.load_state_dict(cb.state_dict())
    assert fresh.history.frames.keys() == cb.history.frames.keys()
    assert all(
        np.array_equal(fresh.history.frames[k][e], f) for k, fr in cb.history.frames.items() for e, f in fr.items()
    )


def test_resumed_run_keeps_every_epoch_in_the_projector_and_the_animation(
    tmp_path, dm, monkeypatch, demo_model, make_trainer, pl
):
    """Also run under `lightning.pytorch` (`make test`'s second pass): TensorBoard read back through its server."""
    ckpt = tmp_path / "ckpt"

    def run(epochs, resume):
        cb = EmbeddingCallback(
            layers=["net.features", "net.fc"], methods="pca", linear_probe_folds=0, save_features=True, strict=True
        )
        pl.seed_everything(0, verbose=False)
        trainer = make_trainer(
            tmp_path,
            [cb, pl.callbacks.ModelCheckpoint(dirpath=ckpt, save_last=True)],
            max_epochs=epochs,
            enable_checkpointing=True,
            logger=pl.loggers.TensorBoardLogger(str(tmp_path), name="", version=""),
        )
        trainer.fit(demo_model(), dm, ckpt_path=str(ckpt / "last.ckpt") if resume else None)
        return cb

    # Without frames in the checkpoint, the resumed run must read the earlier frames back from its artifacts.
    with monkeypatch.context() as patch:
        patch.setattr(EmbeddingCallback, "_extra_state", lambda self: {})
        run(2, resume=False)
    cb = run(4, resume=True)  # a fresh callback and a new SummaryWriter on the same folder
    assert cb.done_epochs == [0, 1, 2, 3]

    url = tb.start_tensorboard(tmp_path)  # started after the fit: the plugin reads its config once
    info = tb.projector_info(url, ".")
    assert [e["tensorName"] for e in info["embeddings"]] == [
        f"{layer}@epoch{e}" for e in range(4) for layer in ("net.features", "net.fc")
    ]
    names = cb.probe.class_names
    for epoch in (0, 3):
        stored = npz(tmp_path, epoch, "net.fc")
        raw = tb.get(url, "/data/plugin/projector/tensor", run=".", name=f"net.fc@epoch{epoch}")
        np.testing.assert_array_equal(np.frombuffer(raw, "<f4").reshape(120, 6), stored["features"])
        table = (
            tb.get(url, "/data/plugin/projector/metadata", run=".", name=f"net.fc@epoch{epoch}").decode().splitlines()
        )
        rows = [line.split("\t") for line in table]
        assert rows[0] == ["id", "label", "prediction", "correct"] and len(rows) == 121
        assert [int(r[0]) for r in rows[1:]] == stored["ids"].tolist()
        assert [r[1] for r in rows[1:]] == [names[c] for c in stored["labels"]]
        assert [r[2] for r in rows[1:]] == [names[c] for c in stored["predictions"]]
        assert [r[3] == "True" for r in rows[1:]] == (stored["labels"] == stored["predictions"]).tolist()
    html = (tmp_path / "trainviz" / "embedding" / "net.fc_pca.html").read_text()
    assert frame_names(html) == [f"epoch {e}" for e in range(4)]


def test_umap_is_postponed_while_the_worker_is_still_busy_with_the_previous_one(tmp_path, dm, monkeypatch, fit):
    release, calls = threading.Event(), []

    def blocked_umap(x, *, init, seed, n_neighbors):  # the first UMAP holds the worker until epoch 1 has run
        calls.append(threading.current_thread().name)
        assert release.wait(timeout=120)
        return x[:, :2].copy()

    class Release(Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:  # after the probe's own epoch-end run
            if trainer.current_epoch == 1:
                release.set()
                cb.worker.wait()

    monkeypatch.setattr(embedding_module, "umap_embed", blocked_umap)
    cb = EmbeddingCallback(
        layers="net.fc", methods=["pca", "umap"], slow_every_k=1, probe_size=24, linear_probe_folds=0, strict=True
    )
    model, trainer = fit(tmp_path, [cb, Release()], dm, epochs=4)
    umap_epochs = [e for e in range(4) if "umap" in npz(tmp_path, e, "net.fc")]
    assert umap_epochs == [0, 2, 3]  # epoch 1 was due but the worker was busy: its UMAP moved to epoch 2
    assert all(name.startswith("trainviz-embedding") for name in calls)  # off the training thread


def test_the_dear_scores_every_second_run_are_recorded_as_such_and_reported(tmp_path, dm, fit):
    from trainviz.report import build_report

    layers = ["net.features", "net.fc"]
    cb = EmbeddingCallback(
        layers=layers, methods="pca", linear_probe_folds=2, scores_every=2, probe_size=60, projector=False, strict=True
    )
    fit(tmp_path, [cb, WaitForWorker(cb)], dm, epochs=3)
    assert cb.done_epochs == [0, 1, 2] and cb.failures == 0
    records = [json.loads(line) for line in (tmp_path / "trainviz/embedding/metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["scores"]) for r in records] == [(0, True), (1, False), (2, True)]
    dear = [f"{layer}/linear_probe_accuracy" for layer in layers] + [f"{layer}/pca/trustworthiness" for layer in layers]
    cheap = [f"{layer}/{key}" for layer in layers for key in ("knn_accuracy", "silhouette", "pca/explained_variance")]
    for record in records:
        assert all((key in record) == record["scores"] for key in dear), record
        assert all(key in record for key in cheap)
    assert [EmbeddingResult.from_record(r).record() for r in records] == records
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("trainviz/embedding/net.fc/linear_probe_accuracy")] == [0, 2]
    assert [e.step for e in acc.Scalars("trainviz/embedding/net.fc/knn_accuracy")] == [0, 1, 2]

    # The report draws the dear scores across the run without them (joined), the others at every epoch.
    text = build_report(tmp_path, tmp_path / "report" / "index.html").read_text()
    blocks = [json.loads(b) for b in re.findall(r'<script type="application/json" id="tv-\d+">(.*?)</script>', text)]
    figures = [b for b in blocks if isinstance(b, dict) and "layout" in b]  # the sections' curves
    traces = {(f["layout"]["title"]["text"], t["name"]): t for f in figures for t in f["data"]}
    probe_trace = traces[("Linear probe accuracy", "net.fc")]
    assert probe_trace["x"] == [0, 1, 2] and probe_trace["y"][1] is None and probe_trace["connectgaps"] is True
    assert probe_trace["y"][0] == records[0]["net.fc/linear_probe_accuracy"]
    assert traces[("Trustworthiness of the 2-D frames", "net.fc / pca")]["y"][1] is None
    knn_trace = traces[("kNN accuracy", "net.fc")]
    assert None not in knn_trace["y"] and "connectgaps" not in knn_trace


def test_aligned_umap_at_fit_end_embeds_all_epochs_jointly(tmp_path, dm, fit):
    cb = EmbeddingCallback(
        layers="net.fc",
        methods="pca",
        aligned_umap_at_end=True,
        probe_size=30,
        linear_probe_folds=0,
        n_neighbors=5,
        strict=True,
    )
    fit(tmp_path, [cb], dm, epochs=3)
    stored = npz(tmp_path, 2, "net.fc_aligned_umap")
    assert stored["frames"].shape == (3, 30, 2) and stored["epochs"].tolist() == [0, 1, 2]
    html = (tmp_path / "trainviz" / "embedding" / "net.fc_aligned_umap.html").read_text()
    assert frame_names(html) == ["epoch 0", "epoch 1", "epoch 2"]


def test_a_failing_background_projection_warns_once_and_training_goes_on(tmp_path, dm, monkeypatch, fit):
    def boom(*args, **kwargs):
        raise RuntimeError("tsne exploded")

    monkeypatch.setattr(embedding_module, "tsne", boom)
    cb = EmbeddingCallback(
        layers="net.fc", methods=["pca", "tsne"], slow_every_k=1, probe_size=24, linear_probe_folds=0
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, trainer = fit(tmp_path, [cb], dm, epochs=3)
    ours = [w for w in caught if "tsne exploded" in str(w.message)]
    assert len(ours) == 1 and "background projection failed" in str(ours[0].message)
    assert trainer.current_epoch == 3 and cb.failures == 3 and count_hooks(model) == 0
    strict = EmbeddingCallback(layers="net.fc", methods=["pca", "tsne"], probe_size=24, strict=True)
    with pytest.raises(RuntimeError, match="tsne exploded"):
        fit(tmp_path / "strict", [strict], dm, epochs=2)


def test_a_capture_that_raises_leaves_no_hook(tmp_path, dm, monkeypatch, fit):
    def boom(*args, **kwargs):
        raise RuntimeError("pooling exploded")

    cb = EmbeddingCallback(layers=LAYERS, methods="pca", probe_size=24)
    monkeypatch.setattr(embedding_module, "pool_features", boom)
    with pytest.raises(RuntimeError, match="pooling exploded"):  # the setup check captures once: a clear early error
        fit(tmp_path, [cb], dm, epochs=1)
    monkeypatch.undo()
    cb = EmbeddingCallback(layers=LAYERS, methods="pca", probe_size=24)
    calls = []

    def boom_in_run(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("pooling exploded")

    original_setup = EmbeddingCallback._setup

    def setup_then_break(self, trainer, pl_module):
        original_setup(self, trainer, pl_module)
        monkeypatch.setattr(embedding_module, "pool_features", boom_in_run)

    monkeypatch.setattr(EmbeddingCallback, "_setup", setup_then_break)
    with pytest.warns(UserWarning, match="pooling exploded"):
        model, trainer = fit(tmp_path / "run", [cb], dm, epochs=2)
    assert calls and count_hooks(model) == 0 and trainer.current_epoch == 2 and cb.done_epochs == []


def test_probing_with_umap_and_tsne_in_the_background_leaves_no_trace(tmp_path, fit):
    from trainviz.data import ShapesDataModule

    def run(callbacks):
        model, _ = fit(tmp_path / str(len(callbacks)), callbacks, ShapesDataModule(n_train=96, n_val=48, batch_size=32))
        return model, torch.rand(4), np.random.rand(3)

    plain, torch_next, numpy_next = run([])
    cb = EmbeddingCallback(layers=LAYERS, methods=["pca", "umap", "tsne"], slow_every_k=1, probe_size=40, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a background failure would warn: make it fail the test
        probed, torch_probed, numpy_probed = run([cb])
    for (name, a), (_, b) in zip(plain.state_dict().items(), probed.state_dict().items()):
        assert torch.equal(a, b), f"{name} differs with EmbeddingCallback"
    assert torch.equal(torch_next, torch_probed) and np.array_equal(numpy_next, numpy_probed)
    assert cb.done_epochs == [0, 1] and (tmp_path / "1" / "trainviz/embedding/epoch_0001/net.fc.npz").exists()


# -------------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"methods": ["pca", "isomap"]}, "Expected `methods` to be distinct names among 'pca', 'umap', 'tsne'"),
        ({"methods": []}, "Expected `methods`"),
        ({"probe_size": 10_001}, r"Expected `probe_size` to be at most 10000, got 10001"),
        ({"probe_size": 0}, r"Expected `probe_size` to be a positive int, got 0"),
        ({"slow_every_k": 0}, r"Expected `slow_every_k` to be a positive int, got 0"),
        ({"scores_every": 0}, r"Expected `scores_every` to be a positive int, got 0"),
        ({"linear_probe_folds": 1}, r"Expected `linear_probe_folds` to be 0 \(off\) or an int >= 2, got 1"),
        ({"layers": []}, "Expected `layers`"),
        ({"n_neighbors": 1}, "Expected `n_neighbors` to be an int >= 2"),
        ({"save_features": "yes"}, "Expected `save_features` to be a bool"),
    ],
)
def test_bad_arguments_fail_at_init(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EmbeddingCallback(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layers": ["net.featurez"]}, "Layer 'net.featurez' not found.*Closest matches: 'net.features'"),
        ({"probe_size": 4, "methods": ["pca", "umap"]}, "umap need at least 5 probe points, got 4"),
        ({"probe_size": 500}, "probe_size"),  # more than the 120 validation images
    ],
)
def test_bad_environment_fails_at_setup(tmp_path, dm, kwargs, message, demo_model, make_trainer):
    trainer = make_trainer(tmp_path, [EmbeddingCallback(**kwargs)], max_epochs=1)
    with pytest.raises(ValueError, match=message):
        trainer.fit(demo_model(), dm)
    assert trainer.current_epoch == 0


def test_default_probe_takes_up_to_256_points_of_the_split(tmp_path, demo_model, make_trainer):
    from trainviz.data import ShapesDataModule

    cb = EmbeddingCallback(layers="net.fc", methods="pca", linear_probe_folds=0, run_at_fit_end=False)
    trainer = make_trainer(tmp_path, [cb], max_epochs=1, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(demo_model(), ShapesDataModule(n_train=60, n_val=600, batch_size=60))
    assert len(cb.probe) == 256 and cb.probe_size == 256 and cb.requested_probe_size is None
    assert npz(tmp_path, 0, "net.fc")["pca"].shape == (256, 2)
    assert cb.options.batch_size == 64


def test_state_key_tells_instances_apart():
    keys = {
        EmbeddingCallback(layers="a").state_key,
        EmbeddingCallback(layers="b").state_key,
        EmbeddingCallback(layers="a", methods="pca").state_key,
        EmbeddingCallback(layers="a", probe_size=100).state_key,
    }
    assert len(keys) == 4


@pytest.mark.slow
def test_ddp_ranks_share_the_capture_and_rank_zero_writes_it_in_probe_order(tmp_path, demo_model, make_trainer):
    from trainviz.data import ShapesDataModule

    cb = EmbeddingCallback(
        layers=["net.features", "net.fc"],
        methods="pca",
        probe_size=45,
        save_features=True,
        linear_probe_folds=0,
        strict=True,
    )  # 45 points: unequal shares on 2 ranks
    pl.seed_everything(0, verbose=False)
    model = demo_model()
    trainer = make_trainer(tmp_path, [cb], max_epochs=2, strategy="ddp_spawn", devices=2, deterministic=False)
    trainer.fit(model, ShapesDataModule(n_train=96, n_val=48, batch_size=32))
    stored = npz(tmp_path, 1, "net.fc")  # the last run: the final weights, which ddp_spawn hands back to `model`
    from trainviz.core.probeset import ProbeSet

    dm = ShapesDataModule(n_train=96, n_val=48, batch_size=32)
    dm.setup("fit")
    probe = ProbeSet.from_dataset(dm.val_dataloader().dataset, 45, 0)
    np.testing.assert_array_equal(stored["ids"], probe.ids.numpy())
    model.eval()
    with torch.no_grad():
        np.testing.assert_allclose(stored["features"], model(probe.images).numpy(), rtol=1e-5, atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "trainviz/embedding").glob("epoch_*")) == ["epoch_0000", "epoch_0001"]
