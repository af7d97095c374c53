"""Whole-fit overhead of ``trainviz.default_callbacks(budget=...)`` on a run where training dominates.

    python benchmarks/budget_overhead.py [--epochs 10] [--n-train 23000] [--budgets 0.1 0.05] [--opt-in 0.1]

A user-shaped run: a 4-block CNN written here (not a trainviz model), trained on the generated shapes photos
at 32x32 given as pixels through a torchvision ``Normalize`` transform (trainviz finds it), for ``--epochs``
epochs of about 20 s on 2 CPU threads. One fit without trainviz, then one per budget, in the same process and
order, each timed from ``fit`` to its return (everything trainviz does is inside: setup, every probe, the
background UMAP/t-SNE work it waits for, the fit-end summaries). Prints the ratios, what each callback ran and
skipped (the manifest's ``budget``); ``--opt-in B`` adds a fit of the whole suite with the opt-in callbacks
(``saliency={}``, ``maxact={}``) at budget ``B``, and what the old identity-and-clamp treatment of normalised
inputs did to the seed's blur and salt-and-pepper accuracies against the right pixels, on the bare run's final model.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms


class PixelDataset(Dataset):
    """Pixels in [0, 1] with a torchvision transform, as a user's dataset is."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), int(self.labels[i])


class UserCNN(pl.LightningModule):
    def __init__(self, classes: int) -> None:
        super().__init__()
        layers, c = [], 3
        for width in (32, 64, 128, 256):
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, classes)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))

    def training_step(self, batch, _):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=2e-3)


MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def make_loaders(n_train: int, n_val: int):
    from trainviz.data.shapes import make_shapes

    x, y, _ = make_shapes(n_train + n_val, 32, 0, 0.5)
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    pipeline = transforms.Compose([transforms.Normalize(MEAN, STD)])
    train = PixelDataset(x[:n_train], y[:n_train], pipeline)
    val = PixelDataset(x[n_train:], y[n_train:], pipeline)
    generator = torch.Generator().manual_seed(0)
    return DataLoader(train, batch_size=64, shuffle=True, generator=generator), DataLoader(val, batch_size=256)


class Clock(pl.Callback):
    """Where a fit's time goes: the training batches (first to last batch of each epoch, as seen by the first
    callback), validation, and what runs after training ends (fit-end probes, the writer draining)."""

    def __init__(self) -> None:
        self.train = self.val = 0.0
        self.train_end = 0.0

    def on_train_epoch_start(self, *_) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, *_) -> None:
        self._last = time.perf_counter()

    def on_train_epoch_end(self, *_) -> None:
        self.train += self._last - self._start

    def on_validation_start(self, *_) -> None:
        self._val = time.perf_counter()

    def on_validation_end(self, *_) -> None:
        self.val += time.perf_counter() - self._val

    def on_train_end(self, *_) -> None:
        self.train_end = time.perf_counter()


def fit(callbacks, args, root: str):
    pl.seed_everything(0, verbose=False)
    train, val = make_loaders(args.n_train, args.n_val)
    model = UserCNN(6)
    clock = Clock()
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        callbacks=[clock, *callbacks],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=root,
        logger=pl.loggers.TensorBoardLogger(root, name="", version=""),
    )
    start = time.perf_counter()
    trainer.fit(model, train, val)
    end = time.perf_counter()
    print(
        f"  training batches {clock.train:.1f} s, validation {clock.val:.1f} s, "
        f"after the last epoch {end - clock.train_end:.1f} s"
    )
    return end - start, model, val.dataset


def clamp_effect(model, dataset) -> dict[str, dict[str, float]]:
    """Accuracy under the seed probes with the right pixels against the old identity-and-clamp treatment."""
    from trainviz.data import Normalization
    from trainviz.ops.corruptions import corrupt

    norm = Normalization(MEAN, STD)
    inputs = torch.stack([dataset[i][0] for i in range(512)])
    labels = torch.tensor([dataset[i][1] for i in range(512)])
    out = {}
    model.eval()
    with torch.no_grad():
        for name in ("gaussian_blur_3x3", "gaussian_blur_5x5", "salt_pepper_0.0005", "salt_pepper_0.005", "grayscale"):
            right = model(norm.normalize(corrupt(norm.denormalize(inputs), name, 1, seed=0)))
            clamped = model(corrupt(inputs.clamp(0, 1), name, 1, seed=0))  # what trainviz 0.1 fed the model
            out[name] = {
                "right_pixels": (right.argmax(1) == labels).float().mean().item(),
                "identity_clamped": (clamped.argmax(1) == labels).float().mean().item(),
            }
        out["clean"] = {"accuracy": (model(inputs).argmax(1) == labels).float().mean().item()}
    return out


def main() -> None:
    import trainviz

    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--n-train", type=int, default=23000)
    parser.add_argument("--n-val", type=int, default=1024)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.1, 0.05])
    parser.add_argument("--opt-in", type=float, nargs="*", default=[], help="budgets of fits with saliency and maxact")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as root:
        bare, model, val = fit([], args, os.path.join(root, "bare"))
        print(
            f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
            f"{args.epochs} epochs of {args.n_train} images"
        )
        print(f"fit without trainviz: {bare:.1f} s ({bare / args.epochs:.1f} s per epoch)")
        runs = [(b, {}) for b in args.budgets] + [(b, {"saliency": {}, "maxact": {}}) for b in args.opt_in]
        for budget, extra in runs:
            run = os.path.join(root, f"budget{budget}{'_'.join(extra)}")
            seconds, _, _ = fit(trainviz.default_callbacks(budget=budget, **extra), args, run)
            manifest = json.load(open(os.path.join(run, "trainviz", "manifest", "manifest.json")))
            call = f"default_callbacks(budget={budget}{''.join(f', {k}={{}}' for k in extra)})"
            print(f"fit with {call}: {seconds:.1f} s; ratio {seconds / bare:.3f}")
            for name, ledger in manifest["budget"]["callbacks"].items():
                skipped = [f"{s['epoch']}:{s['what']}" for s in ledger["skipped"]]
                print(
                    f"  {name}: {ledger['runs']} runs, {ledger['foreground_seconds']:.1f} s + "
                    f"{ledger['background_seconds']:.1f} s background + {ledger.get('writer_seconds', 0):.1f} s "
                    f"writer, weighted (budget {ledger['fraction']:.3f}); skipped {', '.join(skipped) or 'nothing'}"
                )
            records = [json.loads(line) for line in open(os.path.join(run, "trainviz", "robustness", "metrics.jsonl"))]
            print(
                "  robustness rows per run:",
                [f"{r['epoch']}:{r['schedule']['rows']}/{r['schedule']['of']}" for r in records],
            )
        print("seed probes, right pixels against identity + clamp:", json.dumps(clamp_effect(model, val), indent=1))


if __name__ == "__main__":
    main()
