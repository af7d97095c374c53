"""MaxOut during training: the input each class and a few channels respond to most, every epoch, on the embedded
shapes data; then the op on its own, on the trained network.

    python examples/maxact.py [--epochs 4] [--robust]     # then: tensorboard --logdir runs/maxact
"""

import argparse

import pytorch_lightning as pl

from trainviz.callbacks.maxact import MaxActivationCallback
from trainviz.core.guard import probe_guard
from trainviz.core.outputs import LogitsModel
from trainviz.data import ShapesDataModule
from trainviz.models import DemoClassifier
from trainviz.ops.maxact import maximize

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--robust", action="store_true", help="Lucent's FFT parameterisation and transforms")
    args = parser.parse_args()

    pl.seed_everything(0)
    dm = ShapesDataModule()
    model = DemoClassifier(num_classes=dm.num_classes, in_channels=dm.in_channels)
    maxact = MaxActivationCallback(
        layers=["net.features.1"], channels=8, steps=64, final_steps=256, edge_weight=1.0, robust=args.robust
    )
    trainer = pl.Trainer(max_epochs=args.epochs, default_root_dir="runs/maxact", callbacks=[maxact])
    trainer.fit(model, dm)

    # the op alone: every class in one batch, in pixel space through the data's normalisation
    with probe_guard(model):
        out = maximize(
            LogitsModel(model),
            [("logit", k) for k in range(dm.num_classes)],
            tuple(maxact.probe.images.shape[1:]),
            steps=128,
            normalization=maxact.norm,
            robust=args.robust,
        )
    for key, value in zip(out.keys, out.activation.tolist()):
        print(f"{key}: activation {value:.2f}")
