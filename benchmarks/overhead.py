"""Overhead of the full trainviz suite: wall time of `fit` with and without it, in one run, as a ratio.

    python benchmarks/overhead.py [--epochs 3] [--data shapes]

Both fits use the same seed, data and model; the suite's first-epoch costs (numba compilation, corruption
caches) are included, so the ratio is what a user pays for a short run.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import pytorch_lightning as pl
import torch


def fit_seconds(callbacks, epochs: int, data: str, root: str) -> float:
    from pytorch_lightning.loggers import TensorBoardLogger

    from trainviz.data import DigitsDataModule, ShapesDataModule
    from trainviz.models import DemoClassifier

    pl.seed_everything(0, verbose=False)
    dm = ShapesDataModule() if data == "shapes" else DigitsDataModule()
    model = DemoClassifier(num_classes=dm.num_classes, in_channels=dm.in_channels)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=TensorBoardLogger(root, name=""),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    start = time.perf_counter()
    trainer.fit(model, dm)
    return time.perf_counter() - start


def main() -> None:
    import trainviz

    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data", default="shapes", choices=("shapes", "digits"))
    parser.add_argument("--budget", type=float, default=None, help="default_callbacks(budget=); default: none")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        bare = fit_seconds([], args.epochs, args.data, root + "/bare")
        suite = fit_seconds(trainviz.default_callbacks(budget=args.budget), args.epochs, args.data, root + "/suite")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, data {args.data}, epochs {args.epochs}")
    print(f"fit without trainviz: {bare:.1f} s; with default_callbacks(): {suite:.1f} s; ratio {suite / bare:.2f}x")


if __name__ == "__main__":
    main()
