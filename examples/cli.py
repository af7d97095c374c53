"""LightningCLI entry point for trainviz's demo models and the shapes data, to use the YAML presets in ``callbacks/``.

    python examples/cli.py fit --config callbacks/full.yaml --trainer.max_epochs 3
    python examples/cli.py fit --model trainviz.models.DemoClassifier --config callbacks/cam.yaml

``full.yaml`` names its model (``ClassMapClassifier``, which the decoder-map callback needs); with the other
presets choose a model with ``--model``.
"""

import pytorch_lightning as pl
from pytorch_lightning.cli import LightningCLI

from trainviz.data import ShapesDataModule


def main(args=None, run: bool = True) -> LightningCLI:
    return LightningCLI(
        pl.LightningModule,
        ShapesDataModule,
        subclass_mode_model=True,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    main()
