"""Zhang's encoder-decoder with group convolution, trained with :class:`DecoderMapCallback` watching its class maps.

On the embedded ``shapes`` data (no download)::

    python examples/group_conv_decoder.py --epochs 10
    tensorboard --logdir runs/group_conv_decoder

On your own images, one sub-folder per class (``torchvision.datasets.ImageFolder``; resized to 64x64, a
seeded 80/20 train/validation split, the seed's ResNet-18 encoder: 8x8 class maps)::

    python examples/group_conv_decoder.py --images path/to/folder --epochs 30
    python examples/group_conv_decoder.py --images path/to/folder --weights resnet18.pth  # pretrained encoder

``--weights`` loads a state dict file you already have into the encoder (e.g. torchvision's
``resnet18-f37072fd.pth``; an ``fc`` head in it is ignored). Nothing is ever downloaded.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from trainviz.callbacks.decoder_maps import DecoderMapCallback
from trainviz.data import Normalization, ShapesDataModule, TensorImageDataModule, TensorImageDataset
from trainviz.models.lightning import ClassMapClassifier

IMAGENET = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


class ImageFolderDataModule(TensorImageDataModule):
    """An ``ImageFolder`` read once into memory at ``size`` x ``size``, split 80/20 with a seeded generator."""

    def __init__(self, root: str, size: int = 64, val_fraction: float = 0.2, **kwargs) -> None:
        super().__init__(**kwargs)
        try:
            from torchvision import transforms
            from torchvision.datasets import ImageFolder
        except ImportError as err:
            raise ImportError("Training on an image folder needs torchvision: pip install torchvision") from err
        if not os.path.isdir(root):
            raise ValueError(f"Expected `--images` to be a folder with one sub-folder per class, got {root!r}.")
        tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor()])
        self.folder = ImageFolder(root, transform=tf)
        self.class_names = list(self.folder.classes)
        self.in_channels, self.normalization, self.val_fraction = 3, IMAGENET, val_fraction

    def build(self) -> tuple[TensorImageDataset, TensorImageDataset]:
        images = torch.stack([self.normalization.normalize(self.folder[i][0]) for i in range(len(self.folder))])
        labels = torch.as_tensor(self.folder.targets)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed))
        n_val = max(1, int(len(labels) * self.val_fraction))
        val, train = order[:n_val], order[n_val:]
        return (
            TensorImageDataset(images[train], labels[train], class_names=self.class_names),
            TensorImageDataset(images[val], labels[val], class_names=self.class_names),
        )


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", help="an image folder (one sub-folder per class); default: the shapes data")
    parser.add_argument("--weights", help="a state dict file for the encoder (never downloaded)")
    parser.add_argument("--encoder", choices=("small", "resnet18"), help="default: small on shapes, resnet18 on images")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--every-n-epochs", type=int, default=1)
    parser.add_argument("--probe-size", type=int, default=96)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--out", default="runs/group_conv_decoder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--small", action="store_true", help="a tiny shapes set (smoke test)")
    args = parser.parse_args(argv)

    pl.seed_everything(args.seed, verbose=False)
    if args.images:
        dm: TensorImageDataModule = ImageFolderDataModule(args.images, seed=args.seed)
    else:
        sizes = {"n_train": 240, "n_val": 120} if args.small else {}
        dm = ShapesDataModule(seed=args.seed, **sizes)
    encoder = args.encoder or ("resnet18" if args.images else "small")
    model = ClassMapClassifier(
        dm.num_classes, dm.in_channels, encoder=encoder, lr=args.lr, pretrained_path=args.weights
    )
    callback = DecoderMapCallback(every_n_epochs=args.every_n_epochs, probe_size=args.probe_size, probe_seed=args.seed)
    logger = TensorBoardLogger(args.out, name="")
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="auto",
        devices=1,
        logger=logger,
        callbacks=[callback],
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    trainer.fit(model, dm)
    artifacts = os.path.join(logger.log_dir, "trainviz", DecoderMapCallback.name)
    print(f"TensorBoard: tensorboard --logdir {args.out}\nArtifacts:   {artifacts}")
    return logger.log_dir


if __name__ == "__main__":
    main()
