"""Where trainviz's background work should run on a small machine: the options the issue "Cheap enough for every
epoch" names, measured beside real training batches.

    python benchmarks/background_options.py [--rounds 5] [--batches 300] [--points 512]

Training: the 4-block CNN of ``budget_overhead.py`` (a user's model, not trainviz's), Adam, batches of 64 photos at
32x32, 2 torch threads. The background job: what the embedding worker runs beside training, trainviz's own
``umap_embed`` of ``--points`` random 256-D features (numba compiled beforehand, in every option) plus the
silhouette and a 3-fold linear probe. Each round runs, in turn:

- ``alone``: the training batches with nothing beside them (the baseline);
- ``thread``: the job on a thread of the training process, as the embedding worker does today;
- ``nice process``: the job in a separate process at ``os.nice(19)`` (started and warmed before the clock);
- ``inline``: the job on the training thread, then the batches (work only while training waits, at validation or
  a checkpoint, costs the same here: the job is far longer than the wait, so training waits for it).

For each it prints the seconds until both the batches and the job are done over the baseline's batches (the fit's
cost of the job, the figure that matters), split into the batches' extra seconds and the wait for the job after the
last batch (``--batches`` is chosen long enough that the job ends first, as in a fit, where the next epoch
trains), the training batches' median slowdown while the job ran, and the job's own seconds; medians over
interleaved rounds.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from budget_overhead import UserCNN  # noqa: E402  (the same user-shaped model)


def job(points: int, seed: int) -> float:
    """The embedding worker's job on ``points`` random 256-D features: UMAP, the silhouette, a linear probe."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import silhouette_score
    from sklearn.model_selection import cross_val_score

    from trainviz.ops.embedding import umap_embed

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, points)
    features = rng.normal(size=(points, 256)).astype(np.float32) + labels[:, None] * 0.3
    umap_embed(features, seed=seed)
    silhouette_score(features, labels)
    cross_val_score(LogisticRegression(max_iter=1000), features, labels, cv=3)
    return time.perf_counter() - start


def _serve(requests, replies) -> None:
    """The nice'd worker process: warm up (imports, numba), then run each requested job."""
    os.nice(19)
    torch.set_num_threads(1)
    job(64, 0)
    replies.put("ready")
    while (request := requests.get()) is not None:
        replies.put(job(*request))


class Trainer:
    def __init__(self, batches: int) -> None:
        torch.manual_seed(0)
        self.model = UserCNN(6)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=2e-3)
        self.x, self.y = torch.rand(64, 3, 32, 32), torch.randint(0, 6, (64,))
        self.batches = batches

    def train(self, batches: int | None = None) -> list[float]:
        times = []
        for _ in range(self.batches if batches is None else batches):
            start = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(self.model(self.x), self.y)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            times.append(time.perf_counter() - start)
        return times


def slowdown(times: list[float], baseline: float, seconds: float) -> float:
    """The median batch over ``baseline`` among the batches of the first ``seconds`` (while the job ran).

    >>> slowdown([2.0, 2.0, 1.0, 1.0], 1.0, 4.5)
    2.0
    """
    during, elapsed = [], 0.0
    for t in times:
        if elapsed >= seconds:
            break
        during.append(t)
        elapsed += t
    return statistics.median(during) / baseline if during else 1.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--points", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(2)
    requests, replies = mp.get_context("spawn").Queue(), mp.get_context("spawn").Queue()
    worker = mp.get_context("spawn").Process(target=_serve, args=(requests, replies), daemon=True)
    worker.start()
    job(64, 0)  # this process's imports and numba compilation, before any clock
    assert replies.get(timeout=300) == "ready"
    trainer = Trainer(args.batches)
    trainer.train(10)  # warm up
    found: dict[str, dict[str, list[float]]] = {}

    def book(option: str, extra: float, slow: float, job_seconds: float, wait: float = 0.0) -> None:
        entry = found.setdefault(option, {"extra": [], "wait": [], "slowdown": [], "job": []})
        entry["extra"].append(extra)
        entry["wait"].append(wait)
        entry["slowdown"].append(slow)
        entry["job"].append(job_seconds)

    for r in range(args.rounds):
        start = time.perf_counter()
        alone = trainer.train()
        base_total, base_batch = time.perf_counter() - start, statistics.median(alone)
        book("alone", 0.0, 1.0, 0.0)

        seconds: list[float] = []
        start = time.perf_counter()
        thread = threading.Thread(target=lambda out=seconds, seed=r: out.append(job(args.points, seed)))
        thread.start()
        times = trainer.train()
        trained = time.perf_counter()
        thread.join()
        extra, wait = time.perf_counter() - start - base_total, time.perf_counter() - trained
        book("thread", extra, slowdown(times, base_batch, seconds[0]), seconds[0], wait)

        start = time.perf_counter()
        requests.put((args.points, r))
        times = trainer.train()
        trained = time.perf_counter()
        took = replies.get()
        extra, wait = time.perf_counter() - start - base_total, time.perf_counter() - trained
        book("nice process", extra, slowdown(times, base_batch, took), took, wait)

        start = time.perf_counter()
        took = job(args.points, r)
        trainer.train()
        book("inline", time.perf_counter() - start - base_total, 1.0, took)
        print(
            f"round {r + 1}: batches alone {base_total:.2f} s; extra seconds "
            + ", ".join(f"{k} {v['extra'][-1]:+.2f}" for k, v in found.items() if k != "alone"),
            flush=True,
        )
    requests.put(None)
    worker.join(timeout=30)
    print(
        f"{args.rounds} rounds, {args.batches} batches of 64 (median batch alone {base_batch * 1000:.0f} ms), "
        f"job of {args.points} points:"
    )
    for option, entry in found.items():
        if option == "alone":
            continue
        print(
            f"  {option}: extra seconds median {statistics.median(entry['extra']):.2f} "
            f"(range {min(entry['extra']):.2f} to {max(entry['extra']):.2f}; of it waiting for the job after the "
            f"last batch {statistics.median(entry['wait']):.2f}), batches beside the job "
            f"{statistics.median(entry['slowdown']):.2f}x, the job {statistics.median(entry['job']):.2f} s"
        )


if __name__ == "__main__":
    main()
