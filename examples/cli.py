"""LightningCLI entry point for trainviz's demo models and the shapes data, to use the YAML presets in ``callbacks/``.

    python examples/cli.py fit --config callbacks/full.yaml --trainer.max_epochs 3
    python examples/cli.py fit --model trainviz.models.DemoClassifier --config callbacks/cam.yaml

``full.yaml`` names its model (``ClassMapClassifier``, which the decoder-map callback needs); with the other
presets choose a model with ``--model``.
"""

import importlib

from trainviz.core.namespace import namespace
from trainviz.data import ShapesDataModule

# The same presets load in `lightning.pytorch.cli.LightningCLI` and `pytorch_lightning.cli.LightningCLI`: trainviz's
# callbacks are subclasses of both namespaces' Callback. A user's script writes one of them, e.g.
# `from lightning.pytorch.cli import LightningCLI`; this example follows TRAINVIZ_LIGHTNING (or the installed one).
pl = importlib.import_module(namespace())
LightningCLI = importlib.import_module(f"{namespace()}.cli").LightningCLI


def main(args=None, run: bool = True):
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
