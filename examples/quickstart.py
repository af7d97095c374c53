"""The full trainviz suite on the embedded shapes data, in a few lines.

python examples/quickstart.py            # then: tensorboard --logdir runs/quickstart
"""

import pytorch_lightning as pl

import trainviz
from trainviz.data import ShapesDataModule
from trainviz.models import DemoClassifier

if __name__ == "__main__":
    pl.seed_everything(0)
    dm = ShapesDataModule()
    trainer = pl.Trainer(max_epochs=4, default_root_dir="runs/quickstart", callbacks=trainviz.default_callbacks())
    trainer.fit(DemoClassifier(num_classes=dm.num_classes, in_channels=dm.in_channels), dm)
