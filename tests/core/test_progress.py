"""Progress of long work (trainviz.core.progress): a slow probe on Lightning's TQDM bar, nothing without a bar, the
corruption cache's rows, the embedding worker's queue, and a display that fails or sits on another rank."""

from __future__ import annotations

import re
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from trainviz.callbacks.base import ProbeCallback
from trainviz.core import progress
from trainviz.core.probeset import ProbeSet
from trainviz.data.base import Normalization
from trainviz.probes.embedding import EmbeddingWorker
from trainviz.probes.robustness import CorruptionCache


class Probe(ProbeCallback):
    name = "slow"

    def _run(self, trainer, pl_module, epoch):
        pass


def _slow(monkeypatch, cb, seconds=1.2):
    monkeypatch.setattr(cb, "_run", lambda trainer, pl_module, epoch: time.sleep(seconds))


def test_a_slow_probe_shows_below_lightnings_tqdm_bar(
    tmp_path, tiny_dm, monkeypatch, capfd, demo_model, make_trainer, pl
):
    cb = Probe(probe_size=12, strict=True)
    _slow(monkeypatch, cb)
    trainer = make_trainer(  # Lightning's default bar is Rich's when rich is installed: ask for TQDM's
        tmp_path,
        [cb, pl.callbacks.TQDMProgressBar()],
        max_epochs=2,
        enable_progress_bar=True,
        limit_train_batches=2,
        limit_val_batches=1,
    )
    assert isinstance(trainer.progress_bar_callback, pl.callbacks.TQDMProgressBar)
    trainer.fit(demo_model(), tiny_dm)
    out, err = capfd.readouterr()
    text = out + err
    assert cb.done_epochs == [0, 1]
    # epoch 0 is measured as long (one line once done); epoch 1 is estimated long (a live bar, then the line)
    assert re.search(r"trainviz: slow epoch 0 took 1\.\d s", text), text
    assert re.search(r"trainviz: slow epoch 1 took 1\.\d s", text), text
    # Lightning's bar goes on working: it shows both epochs and counted every batch
    assert "Epoch 1" in text
    assert trainer.progress_bar_callback.train_progress_bar.n == 2


def test_nothing_is_printed_without_a_progress_bar(tmp_path, tiny_dm, monkeypatch, capfd, demo_model, make_trainer):
    cb = Probe(probe_size=12, strict=True)
    _slow(monkeypatch, cb)
    trainer = make_trainer(tmp_path, [cb], max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    assert trainer.progress_bar_callback is None
    trainer.fit(demo_model(), tiny_dm)
    out, err = capfd.readouterr()
    assert cb.done_epochs == [0]
    assert "took" not in out + err and "slow epoch" not in out + err


@pytest.fixture(scope="session")
def _tqdm_trainer(pl):
    def _tqdm_trainer(rank_zero=True):
        return SimpleNamespace(is_global_zero=rank_zero, progress_bar_callback=pl.callbacks.TQDMProgressBar())

    return _tqdm_trainer


def test_short_work_shows_nothing_and_long_estimates_show_at_once(capfd, monkeypatch, _tqdm_trainer):
    with progress.task(_tqdm_trainer(), "trainviz: quick") as task:
        task.update(1, 2, "half")
    assert not task.shown and capfd.readouterr().out == ""
    monkeypatch.setattr(progress, "LONG_SECONDS", 0.05)
    with progress.task(_tqdm_trainer(), "trainviz: long", total=3, estimate=0.1) as task:
        assert task.shown  # the estimate says long: the bar is there from the start
        task.update(2, note="second part")
    out = capfd.readouterr().out
    assert "trainviz: long took 0.0 s (2/3 second part)" in out


def test_measured_long_work_opens_the_bar_on_the_next_update(capfd, monkeypatch, _tqdm_trainer):
    monkeypatch.setattr(progress, "LONG_SECONDS", 0.05)
    with progress.task(_tqdm_trainer(), "trainviz: rows") as task:
        task.update(0, 4, "row 1")
        assert not task.shown
        time.sleep(0.1)
        task.update(1, 4, "row 2")
        assert task.shown
    assert "trainviz: rows took 0.1 s (1/4 row 2)" in capfd.readouterr().out


def test_other_ranks_a_disabled_bar_and_no_trainer_show_nothing(_tqdm_trainer, pl):
    disabled = SimpleNamespace(is_global_zero=True, progress_bar_callback=pl.callbacks.TQDMProgressBar(refresh_rate=0))
    for trainer in (None, _tqdm_trainer(rank_zero=False), disabled):
        assert progress.display_for(trainer) is None
    assert progress.display_for(SimpleNamespace(is_global_zero=True, progress_bar_callback=None)) is None


def test_a_failing_display_never_raises_and_the_random_stream_is_kept(monkeypatch):
    class Broken(progress._Display):
        def open(self, desc, total):
            raise RuntimeError("no terminal")

        def write(self, line):
            raise OSError("closed")

    monkeypatch.setattr(progress, "LONG_SECONDS", 0.0)
    monkeypatch.setattr(progress, "display_for", lambda trainer: Broken())
    state = torch.random.get_rng_state()
    with progress.task(object(), "trainviz: broken", estimate=1.0) as task:
        task.update(1, 2, "still fine")
    assert task.display is None  # dropped after its first failure
    assert torch.equal(torch.random.get_rng_state(), state)


def test_a_rich_bar_prints_on_its_console_or_falls_back_to_the_logger(monkeypatch, pl):
    lines = []
    bar = pl.callbacks.RichProgressBar.__new__(pl.callbacks.RichProgressBar)  # rich itself need not be installed
    bar._enabled, bar._refresh_rate, bar._console = True, 1, None
    bar.progress = SimpleNamespace(console=SimpleNamespace(print=lambda line, **kw: lines.append(line)))
    trainer = SimpleNamespace(is_global_zero=True, progress_bar_callback=bar)
    monkeypatch.setattr(progress, "LONG_SECONDS", 0.0)
    with progress.task(trainer, "trainviz: rich", total=2) as task:
        task.update(2)
    assert lines[-1].startswith("trainviz: rich took ") and lines[-1].endswith(" (2/2)")
    bar.progress = None
    assert isinstance(progress.display_for(trainer), progress._LogDisplay)


def test_the_corruption_cache_reports_each_row():
    torch.manual_seed(0)
    probe = ProbeSet(torch.rand(6, 3, 16, 16), torch.arange(6) % 3, torch.arange(6), masks=None, class_names=None)
    norm, cache, calls = Normalization(mean=(0.0,) * 3, std=(1.0,) * 3), CorruptionCache(), []
    rows = [("grayscale", 1), ("gaussian_noise", 1), ("gaussian_noise", 2)]
    reference, _ = CorruptionCache().inputs(probe, rows, norm, 0, source=probe)
    inputs, seconds = cache.inputs(probe, rows, norm, 0, source=probe, progress=lambda *call: calls.append(call))
    assert torch.equal(inputs.tensor(), reference.tensor()) and seconds is not None  # reporting changes nothing
    assert calls == [
        (0, 3, "corrupting grayscale 1"),
        (1, 3, "corrupting gaussian_noise 1"),
        (2, 3, "corrupting gaussian_noise 2"),
        (3, 3, "corrupted rows cached"),
    ]
    calls.clear()
    cache.inputs(probe, rows, norm, 0, source=probe, progress=lambda *call: calls.append(call))
    assert calls == []  # every row cached: nothing to report


def _slow_job(started: threading.Event, seconds: float):
    def job():
        started.set()
        time.sleep(seconds)

    return job


def test_the_worker_reports_running_and_pending_jobs():
    worker, charged = EmbeddingWorker(), []
    worker.start()
    try:
        first, second = threading.Event(), threading.Event()
        worker.submit(0, _slow_job(first, 0.6), 1, True, charged.append)
        worker.submit(1, _slow_job(second, 0.6), 1, True, charged.append)
        assert first.wait(5)
        assert worker.counts() == (1, 1)  # the first runs, the second waits behind it
        calls = []
        worker.wait(progress=lambda *call: calls.append(call))
        assert calls[0] == (0, 2, "embedding worker: 1 running, 1 pending")
        assert (1, 2, "embedding worker: 1 running, 0 pending") in calls
        assert calls[-1] == (2, 2, "embedding jobs done")
        assert worker.counts() == (0, 0) and len(charged) == 2
    finally:
        worker.shutdown()


def test_the_worker_reports_while_the_pending_bytes_bound_makes_training_wait():
    worker = EmbeddingWorker(max_pending_bytes=10)
    worker.start()
    try:
        started, calls = threading.Event(), []
        worker.submit(0, _slow_job(started, 0.4), 8, True, lambda s: None)
        assert started.wait(5)
        worker.submit(1, lambda: None, 8, False, lambda s: None, progress=lambda *call: calls.append(call))
        assert calls and calls[0] == (0, None, "embedding worker: 1 running, 0 pending")
        worker.wait()
    finally:
        worker.shutdown()


@pytest.mark.parametrize("estimate", [None, 5.0])
def test_an_idle_task_keeps_counts_only(estimate):
    task = progress.Task(None, "trainviz: idle", estimate=estimate)
    task.update(3, 4, "note")
    task.close()
    assert (task.done, task.total, task.note, task.shown) == (3, 4, "note", False)
