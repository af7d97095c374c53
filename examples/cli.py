"""LightningCLI entry point for the demo model and data, to use the YAML presets in ``callbacks/``.

    python examples/cli.py fit --config callbacks/full.yaml --trainer.max_epochs 3
"""

from pytorch_lightning.cli import LightningCLI

from trainviz.data import ShapesDataModule
from trainviz.models import DemoClassifier


def main(args=None, run: bool = True) -> LightningCLI:
    return LightningCLI(DemoClassifier, ShapesDataModule, args=args, run=run, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
