"""Whole-fit overhead of ``trainviz.default_callbacks(budget=...)`` on a run where training dominates, in interleaved
pairs, against the run's own estimate.

    python benchmarks/budget_overhead.py [--pairs 9] [--epochs 6] [--n-train 12000] [--budgets 0.1 0.05]

A user-shaped run: a 4-block CNN written here (not a trainviz model), trained on the generated shapes photos at 32x32
given as pixels through a torchvision ``Normalize`` transform (trainviz finds it), for ``--epochs`` epochs of 10 s or
more on 2 CPU threads (``--n-train`` images an epoch: where the host runs 12,000 in less, pass more). Identical fits on
this machine differ by up to 20%, so one ratio says little: the script runs ``--pairs`` rounds, each a fit without
trainviz and one with ``default_callbacks(budget=B)`` for each of ``--budgets`` (in one process; the bare fit first in
odd rounds, as printed, and last in even ones, so a drift of the host within a round favours neither side; each budget's
pair is the round's bare fit and its own fit), each timed from ``fit`` to its return (everything trainviz does is
inside: setup, every probe, the background work it waits for, the fit-end summaries). For each pair it prints the ratio
in process CPU time (every thread of the process: the primary figure, since wall time here swings with the host) and in
wall time, and the run's own estimate X (the manifest's ``budget.overhead.estimate``: probe time plus the measured
slowdown of training batches, over the fit less those); then, per budget, the medians and spreads, the median X against
the measured median ratio minus 1, and how many runs each callback made over the epochs and at which epochs.

Each fit's CPU time is also split into user and system seconds. On this host the system part is mostly the kernel's page
faults, which swing between identical fits in one process (0.2 M to 16 M faults, 0.5 to 26 system seconds of 107 to 169
CPU seconds in round 7a); with glibc's malloc thresholds fixed (so that it neither moves tensors between ``mmap`` and
its heap as its dynamic threshold moves, nor trims the heap) they stayed at 0.05 M to 0.3 M faults and 0.2 to 0.6 s
(round 7b). To fix the allocator alike for both sides of every pair, run the script so (the rounds in BENCHMARKS.md say
which they used)::

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=67108864 \
        OMP_NUM_THREADS=2 NUMBA_NUM_THREADS=1 python benchmarks/budget_overhead.py --pairs 9 --budgets 0.1 0.05
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
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


def pair_figures(bare: tuple[float, float], probed: tuple[float, float]) -> tuple[float, float]:
    """``(CPU-time ratio, wall-time ratio)`` of one pair, from each fit's ``(cpu seconds, wall seconds)``.

    >>> pair_figures((100.0, 50.0), (110.0, 60.0))
    (1.1, 1.2)
    """
    return probed[0] / bare[0], probed[1] / bare[1]


def spread(values: list[float]) -> str:
    """Median, quartiles and range of ``values``, as one line.

    >>> spread([1.0, 2.0, 3.0, 4.0, 5.0])
    'median 3.000, quartiles 2.000-4.000, range 1.000-5.000'
    >>> spread([1.5])
    'median 1.500 (one value)'
    """
    if len(values) < 2:
        return f"median {values[0]:.3f} (one value)"
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return f"median {median:.3f}, quartiles {q1:.3f}-{q3:.3f}, range {min(values):.3f}-{max(values):.3f}"


def main() -> None:
    import trainviz

    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=9)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--n-train", type=int, default=12000)
    parser.add_argument("--n-val", type=int, default=1024)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.1])
    args = parser.parse_args()
    torch.set_num_threads(2)
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, threads {threads}, {args.epochs} epochs of {args.n_train} images")
    figures: dict[float, dict[str, list]] = {
        b: {"cpu": [], "wall": [], "user": [], "system": [], "x": [], "epochs": []} for b in args.budgets
    }
    with tempfile.TemporaryDirectory() as root:
        for pair in range(args.pairs):
            # the order alternates (bare first, then last), so a drift of the host within a round does not always
            # favour the same side
            order: list[float | None] = [None, *args.budgets] if pair % 2 == 0 else [*args.budgets[::-1], None]
            timed: dict[float | None, tuple[float, float]] = {}
            split: dict[float | None, tuple[float, float, int]] = {}
            for budget in order:
                run = os.path.join(root, f"pair{pair}_" + ("bare" if budget is None else f"budget{budget}"))
                callbacks = [] if budget is None else trainviz.default_callbacks(budget=budget)
                cpu, usage = time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
                wall, _, _ = fit(callbacks, args, run)
                timed[budget] = (time.process_time() - cpu, wall)
                split[budget] = user_system(usage, resource.getrusage(resource.RUSAGE_SELF))
                what = "bare" if budget is None else f"budget {budget}"
                print(
                    f"pair {pair + 1}: {what} {wall:.1f} s wall / {timed[budget][0]:.1f} s CPU "
                    f"({split[budget][0]:.1f} s user, {split[budget][1]:.1f} s system, "
                    f"{split[budget][2] / 1e6:.2f} M page faults)",
                    flush=True,
                )
            bare = timed[None]
            for budget in args.budgets:
                run = os.path.join(root, f"pair{pair}_budget{budget}")
                probed = timed[budget]
                manifest = json.load(open(os.path.join(run, "trainviz", "manifest", "manifest.json")))["budget"]
                cpu_ratio, wall_ratio = pair_figures(bare, probed)
                overhead = manifest["overhead"]
                found = figures[budget]
                found["cpu"].append(cpu_ratio)
                found["wall"].append(wall_ratio)
                found["user"].append(split[budget][0] / split[None][0])
                found["system"].append(split[budget][1] - split[None][1])
                found["x"].append(overhead["estimate"])
                found["epochs"].append({name: run_epochs(run, name) for name in manifest["callbacks"]})
                print(
                    f"  budget {budget}: {probed[1]:.1f} s wall / {probed[0]:.1f} s CPU: CPU ratio {cpu_ratio:.3f}, "
                    f"wall ratio {wall_ratio:.3f}; its own X {overhead['estimate']:.3f} (slowdown "
                    f"{overhead['slowdown_seconds']:.1f} s, {overhead['batches']['busy']} busy batches; writer and "
                    f"workers displaced {sum(c['displaced_seconds'] for c in manifest['callbacks'].values()):.1f} s at "
                    f"a load of {overhead['cpu_load']:.2f}); runs "
                    + ", ".join(f"{n} {len(e)}" for n, e in found["epochs"][-1].items()),
                    flush=True,
                )
    for budget, found in figures.items():
        print(f"budget {budget}, {args.pairs} pairs:")
        print(f"  CPU-time ratio: {spread(found['cpu'])}; per pair {' '.join(f'{r:.3f}' for r in found['cpu'])}")
        print(f"  wall-time ratio: {spread(found['wall'])}; per pair {' '.join(f'{r:.3f}' for r in found['wall'])}")
        print(f"  user-time ratio: {spread(found['user'])}; per pair {' '.join(f'{r:.3f}' for r in found['user'])}")
        print(
            f"  system seconds, probed less bare: {spread(found['system'])}; per pair "
            + " ".join(f"{s:+.1f}" for s in found["system"])
        )
        print(f"  the run's own X: {spread(found['x'])}; per pair {' '.join(f'{r:.3f}' for r in found['x'])}")
        x = statistics.median(found["x"])
        for what in ("cpu", "wall"):
            gap = x - (statistics.median(found[what]) - 1)
            print(f"  median X {x:.3f} against the {what}-time median ratio minus 1: {gap:+.3f}")
        for name in found["epochs"][0]:
            counts = [len(e[name]) for e in found["epochs"]]
            seen = sorted({tuple(e[name]) for e in found["epochs"]})
            print(
                f"  {name}: runs per fit {counts} over {args.epochs} epochs (median {statistics.median(counts)}); "
                f"epochs {' | '.join(','.join(map(str, s)) for s in seen)}"
            )


def user_system(before, after) -> tuple[float, float, int]:
    """``(user seconds, system seconds, minor page faults)`` of the process between two ``getrusage`` readings:
    the CPU-time ratio's two parts, the system part being mostly the kernel's page faults, which swing between
    identical fits on this host.

    >>> from types import SimpleNamespace as U
    >>> user_system(U(ru_utime=1.0, ru_stime=0.5, ru_minflt=10), U(ru_utime=3.5, ru_stime=0.75, ru_minflt=30))
    (2.5, 0.25, 20)
    """
    return after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime, after.ru_minflt - before.ru_minflt


def run_epochs(run: str, name: str) -> list[int]:
    """The epochs at which callback ``name`` ran in the fit under ``run`` (its metrics.jsonl records)."""
    path = os.path.join(run, "trainviz", name, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as lines:
        return sorted({json.loads(line)["epoch"] for line in lines if line.strip()})


if __name__ == "__main__":
    main()
