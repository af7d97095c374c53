"""Cost of EmbeddingCallback: what the training thread waits for, and what the background projections cost.

    python benchmarks/embedding_cost.py [--points 2000] [--epochs 4] [--sizes 2000 10000] [--skip-fit]

Part 1 (interleaved, no training): the training-thread part of a run, i.e. the capture of the default layer
("auto": the last conv block) and of 4 layers (the 3 conv blocks, the largest being the first, and the logits),
with the logits (forward with hooks, pooling, copy to the CPU), against the bare forward of the same probe set, in
rounds that time each once; the median ratio over rounds is stable on a loaded machine (target: at most 1.5x).

Part 2 (a real fit): the demo CNN on generated shapes with ``--points`` validation images, all of them in the
probe set, ``EmbeddingCallback`` on the 3 conv blocks and the logits with PCA every epoch and UMAP + t-SNE every
2nd epoch. At every validation end a timing callback first runs the bare forward pass of the probe set (eval,
no grad, the same batches): the capture's floor. The ratio per run is the time the training thread was held by
the callback (its ``seconds`` scalar: forward with hooks, pooling, copy to the CPU, hand-off to the worker) over
that forward (target: at most 1.5x). It also reports the mean training-epoch time with the callback over the
same fit without it: the background projections share the CPU with training.

Part 3: seconds per method on clustered 256-D features (6 Gaussian classes) for each of ``--sizes``: PCA,
UMAP (first call in the process, with numba compilation and, above 4096 points, pynndescent's; then a later
call; then a warm start), t-SNE (scikit-learn or openTSNE, 1 thread; cold and warm-started), and the metrics.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger

LAYERS = ["net.features.0", "net.features.1", "net.features", "net.fc"]


class ForwardTimer(Callback):
    """Times the bare forward of the probe set at each validation end (before the embedding callback runs)."""

    def __init__(self, embedding) -> None:
        self.embedding, self.seconds, self.epoch_start, self.epoch_seconds = embedding, [], 0.0, []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epoch_seconds.append(time.perf_counter() - self.epoch_start)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.embedding is None:
            return
        images = self.embedding.device_probe(pl_module).images
        was_training = pl_module.training
        pl_module.eval()
        start = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(images), self.embedding.batch_size):
                pl_module(images[i : i + self.embedding.batch_size])
        self.seconds.append(time.perf_counter() - start)
        pl_module.train(was_training)


def capture_ratio(points: int, rounds: int, layers: list[str]) -> tuple[float, float, float]:
    """Median seconds of the bare forward and of the callback's capture, and the median per-round ratio."""
    from trainviz.callbacks.embedding import EmbeddingCallback
    from trainviz.core.layers import resolve_layers
    from trainviz.core.probeset import ProbeSet
    from trainviz.data import ShapesDataModule
    from trainviz.models import DemoClassifier

    dm = ShapesDataModule(n_train=60, n_val=points, seed=0)
    dm.setup("fit")
    images = ProbeSet.from_dataset(dm.val_dataloader().dataset, points, 0).images
    torch.manual_seed(0)
    model = DemoClassifier(num_classes=6, in_channels=3).eval()
    cb = EmbeddingCallback(layers=layers)
    cb._layers = resolve_layers(model, layers, images[:1])

    def forward() -> None:
        with torch.no_grad():
            for i in range(0, points, cb.batch_size):
                model(images[i : i + cb.batch_size])

    def capture() -> None:
        feats, logits = cb._capture(model, images)
        {name: f.float().cpu().numpy() for name, f in feats.items()}, logits.argmax(1).cpu().numpy()

    times: dict[str, list[float]] = {"forward": [], "capture": []}
    for r in range(rounds + 1):
        for name, fn in (("forward", forward), ("capture", capture))[:: 1 if r % 2 else -1]:
            start = time.perf_counter()
            fn()
            if r:  # round 0 warms up
                times[name].append(time.perf_counter() - start)
    ratio = statistics.median(c / f for c, f in zip(times["capture"], times["forward"]))
    return statistics.median(times["forward"]), statistics.median(times["capture"]), ratio


def fit(points: int, epochs: int, with_callback: bool) -> tuple[list[float], list[float], list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from trainviz.callbacks.embedding import EmbeddingCallback
    from trainviz.data import ShapesDataModule
    from trainviz.models import DemoClassifier

    pl.seed_everything(0, verbose=False)
    embedding = (
        EmbeddingCallback(layers=LAYERS, methods=["pca", "umap", "tsne"], slow_every_k=2) if with_callback else None
    )
    timer = ForwardTimer(embedding)
    root = tempfile.mkdtemp(prefix="trainviz-embedding-bench-")
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=TensorBoardLogger(root, name="", version=""),
        callbacks=[timer] + ([embedding] if embedding else []),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(DemoClassifier(num_classes=6, in_channels=3), ShapesDataModule(n_train=2400, n_val=points, seed=0))
    if embedding is None:
        return [], [], timer.epoch_seconds
    acc = EventAccumulator(root, size_guidance={"scalars": 0})
    acc.Reload()
    held = [e.value for e in acc.Scalars("trainviz/embedding/seconds")]
    for tag in ("worker_seconds", "projection_seconds/umap", "projection_seconds/tsne"):
        values = ", ".join(f"{e.step}: {e.value:.1f}" for e in acc.Scalars(f"trainviz/embedding/{tag}"))
        print(f"  background {tag} per epoch (s): {values}")
    return held, timer.seconds, timer.epoch_seconds


def clustered(n: int, dim: int = 256, classes: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.arange(n) % classes
    return (rng.normal(0, 3, size=(classes, dim))[labels] + rng.normal(size=(n, dim))).astype(np.float32), labels


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def projections(n: int) -> list[tuple[str, float]]:
    from trainviz.ops import embedding as ops

    x, y = clustered(n)
    rows = [("PCA (torch eigh)", timed(ops.pca, torch.from_numpy(x), 2)[0])]
    first, frame = timed(ops.umap_embed, x)
    rows += [("UMAP, first call at this size (compiles)", first), ("UMAP, later call", timed(ops.umap_embed, x)[0])]
    rows += [("UMAP, warm start from the previous frame", timed(ops.umap_embed, x + 0.01, init=frame)[0])]
    cold, start = timed(ops.tsne, x)
    rows += [("t-SNE (1 thread)", cold), ("t-SNE, warm start", timed(ops.tsne, x + 0.01, init=start)[0])]
    rows += [
        ("Procrustes alignment", timed(ops.procrustes_align, frame, start, scale=True)[0]),
        ("kNN accuracy, leave-one-out, k=5", timed(ops.knn_accuracy, torch.from_numpy(x), y)[0]),
        ("silhouette", timed(ops.silhouette, x, y)[0]),
        ("trustworthiness (5 neighbours)", timed(ops.trustworthiness, x, frame)[0]),
        ("linear probe, 3 folds", timed(ops.linear_probe_accuracy, x, y, n_splits=3)[0]),
    ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--sizes", type=int, nargs="*", default=[2000, 10000])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--skip-fit", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for layers in (["auto"], LAYERS):
        forward, captured, ratio = capture_ratio(args.points, args.rounds, layers)
        print(
            f"Capture of {layers} + logits, {args.points} points, median of {args.rounds} interleaved rounds: "
            f"bare forward {forward:.3f} s, capture {captured:.3f} s, ratio {ratio:.2f} (target <= 1.5)"
        )
    if not args.skip_fit:
        print(f"Fit: demo CNN, {args.points} probe points, layers {LAYERS}, PCA every epoch, UMAP + t-SNE every 2nd")
        _, _, plain_epochs = fit(args.points, args.epochs, with_callback=False)
        held, forward, epochs = fit(args.points, args.epochs, with_callback=True)
        print(
            "| epoch | training thread held (s) | bare forward of the probe set (s) | ratio |\n"
            "| --- | ---: | ---: | ---: |"
        )
        for e, (h, f) in enumerate(zip(held, forward)):
            print(f"| {e} | {h:.3f} | {f:.3f} | {h / f:.2f} |")
        print(f"median ratio: {statistics.median(h / f for h, f in zip(held, forward)):.2f} (target <= 1.5)")
        print(
            f"mean training epoch: {statistics.mean(epochs):.1f} s with the callback, "
            f"{statistics.mean(plain_epochs):.1f} s "
            f"without ({statistics.mean(epochs) / statistics.mean(plain_epochs):.2f}x)"
        )
    for n in args.sizes:
        print(f"\nProjections, {n} points x 256-D, 6 classes")
        print("| step | seconds |\n| --- | ---: |")
        for name, seconds in projections(n):
            print(f"| {name} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
