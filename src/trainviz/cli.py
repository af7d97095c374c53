"""``trainviz`` command line: ``trainviz demo`` trains a demo model on embedded data with every callback.

Example:
    $ trainviz demo --data shapes --epochs 6 --out runs/demo
    $ tensorboard --logdir runs/demo
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

__all__ = ["main", "run_demo"]


def run_demo(data: str = "shapes", epochs: int = 6, out: str = "runs/demo", accelerator: str = "auto", seed: int = 0, small: bool = False, progress: bool = True) -> str:
    """Train the demo model with the full callback suite; returns the run's log folder.

    Args:
        data: ``"shapes"`` (generated RGB shapes with masks) or ``"digits"`` (scikit-learn's digits).
        epochs: training epochs.
        out: output folder (TensorBoard logs and trainviz artifacts go to ``out/version_N``).
        accelerator: Lightning accelerator (``"auto"``, ``"cpu"``, ``"gpu"``).
        seed: global seed (``pl.seed_everything``).
        small: a tiny data set, for smoke tests.
        progress: show Lightning's progress bar.
    """
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import TensorBoardLogger

    import trainviz
    from trainviz.data import DigitsDataModule, ShapesDataModule
    from trainviz.models import DemoClassifier

    pl.seed_everything(seed, workers=True, verbose=False)
    if data == "shapes":
        dm = ShapesDataModule(n_train=240, n_val=120, seed=seed) if small else ShapesDataModule(seed=seed)
    elif data == "digits":
        dm = DigitsDataModule(seed=seed)
    else:
        raise ValueError(f"Expected `--data` to be one of 'shapes', 'digits', got {data!r}.")
    model = DemoClassifier(num_classes=dm.num_classes, in_channels=dm.in_channels)
    logger = TensorBoardLogger(out, name="")
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=1,
        logger=logger,
        callbacks=trainviz.default_callbacks(probe_seed=seed),
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    trainer.fit(model, dm)
    return logger.log_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainviz", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a demo model on embedded data with every trainviz callback")
    demo.add_argument("--data", choices=("shapes", "digits"), default="shapes")
    demo.add_argument("--epochs", type=int, default=6)
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--accelerator", default="auto")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--small", action="store_true", help="tiny data set (smoke test)")
    demo.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    if args.command == "demo":
        if args.epochs < 1:
            parser.error(f"--epochs must be a positive int, got {args.epochs}")
        start = time.perf_counter()
        log_dir = run_demo(args.data, args.epochs, args.out, args.accelerator, args.seed, args.small, not args.no_progress)
        print(f"\ntrainviz demo finished in {time.perf_counter() - start:.0f} s.")
        print(f"  TensorBoard:  tensorboard --logdir {args.out}")
        print(f"  Artifacts:    {os.path.join(log_dir, 'trainviz')}")
        return 0
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
