"""Training dynamics (Iuzzolino et al., Interactive Deep CNN Visualization) on scikit-learn's digits: confusion
matrices, per-class accuracy,
probability histograms and class-probability bars, every epoch.

    python examples/dynamics.py              # then: tensorboard --logdir runs/dynamics
"""

import pytorch_lightning as pl

from trainviz import DynamicsCallback, RunManifestCallback
from trainviz.data import DigitsDataModule
from trainviz.models import DemoClassifier

if __name__ == "__main__":
    pl.seed_everything(0)
    dm = DigitsDataModule()
    callbacks = [RunManifestCallback(), DynamicsCallback(every_n_epochs=1, probe_size=200, n_examples=10)]
    trainer = pl.Trainer(max_epochs=5, default_root_dir="runs/dynamics", callbacks=callbacks)
    trainer.fit(DemoClassifier(num_classes=10, in_channels=1), dm)
