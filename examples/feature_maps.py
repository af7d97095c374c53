"""Filters, activation maps and activation distributions while a network trains (FeatureMapCallback).

Two runs, after the first sections of Fleuret's "Under the hood" (EE-559 lecture 8):

1. the demo CNN on the embedded shapes data: first-layer filters in colour, a deeper layer's filters as channel
   grids, the most active channels of two layers over a few probe images, histograms, dead units and sparsity;
2. the lecture's toy, ``nn.Sequential(nn.Linear(2, 20), nn.ReLU(), nn.Linear(20, 2))`` on 2-D points: each hidden
   unit's line ``w.x + b = 0`` over the points, epoch after epoch.

python examples/feature_maps.py [--epochs 4]      # then: tensorboard --logdir runs/feature_maps
"""

import argparse

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainviz.callbacks.features import FeatureMapCallback
from trainviz.data import ShapesDataModule
from trainviz.models import DemoClassifier


class Toy(pl.LightningModule):
    """Seed 001's one-hidden-layer network R^2 -> R^2 (20 hidden units)."""

    def __init__(self, hidden: int = 20) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, _):
        self.log("val_loss", nn.functional.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def disc(n: int, seed: int) -> TensorDataset:
    """Points uniform in [-1, 1]^2; class 1 inside the disc of radius sqrt(2/pi) (half the area)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g) * 2 - 1
    return TensorDataset(x, (x.norm(dim=1) < (2 / torch.pi) ** 0.5).long())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()

    pl.seed_everything(0)
    dm = ShapesDataModule()
    cnn = FeatureMapCallback(layers=["net.features.0", "net.features"], filter_layers=["net.features.1.0"])
    pl.Trainer(max_epochs=args.epochs, default_root_dir="runs/feature_maps/cnn", callbacks=[cnn]).fit(
        DemoClassifier(num_classes=dm.num_classes, in_channels=dm.in_channels), dm
    )

    pl.seed_everything(0)
    toy = FeatureMapCallback(probe_size=256)  # layers="auto": the ReLU; line_layer="auto": the Linear(2, 20)
    pl.Trainer(max_epochs=10 * args.epochs, default_root_dir="runs/feature_maps/toy", callbacks=[toy]).fit(
        Toy(), DataLoader(disc(1024, 0), batch_size=64, shuffle=True), DataLoader(disc(512, 1), batch_size=256)
    )
