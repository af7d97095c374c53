"""The contract's collectives with three real gloo processes: plan broadcast, partials gathered in rank order,
one agreed failure; and CAM computed in three processes' shares equals CAM in one process."""

from __future__ import annotations

import os
import socket
import threading

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from trainviz.core.contract import Credit, Share
from trainviz.core.distributed import Collective
from trainviz.core.probeset import ProbeSet
from trainviz.probes.cam import CAMConfig, CAMOptions, CAMProbe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)
    ).eval()


def _probe() -> ProbeSet:
    g = torch.Generator().manual_seed(1)
    return ProbeSet(torch.rand(5, 3, 10, 10, generator=g), torch.tensor([0, 1, 2, 0, 1]), torch.arange(5))


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        c = Collective(world, rank)
        plan = c.broadcast({"rows": [3, 1]} if rank == 0 else "not rank 0's")
        gathered = c.gather({"rank": rank, "t": torch.full((rank + 1,), float(rank))})
        agreed = (c.all_ok(True), c.all_ok(rank == 0))
        model, probe = _net(), _probe()
        prober = CAMProbe(probe, CAMConfig({"0": model[0]}, CAMOptions(deletion_steps=2, n_grid=4)))
        cam_plan = c.broadcast(prober.plan(Credit(epoch=3)))
        part = prober.compute(model, Share.of(probe, world, rank), cam_plan, c.broadcast(prober.state()))
        parts = c.gather(part)
        record = prober.merge(parts, cam_plan).record() if c.is_zero else None
        if c.is_zero:
            torch.save({"plan": plan, "gathered": gathered, "agreed": agreed, "record": record}, out)
        else:
            torch.save({"plan": plan, "gathered": gathered, "agreed": agreed}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_three_gloo_processes_broadcast_gather_agree_and_merge_cam(tmp_path):
    out = str(tmp_path / "zero.pt")
    mp.spawn(_worker, args=(3, _free_port(), out), nprocs=3, join=True)
    zero, one = torch.load(out, weights_only=False), torch.load(f"{out}.1", weights_only=False)
    assert zero["plan"] == one["plan"] == {"rows": [3, 1]}
    assert [g["rank"] for g in zero["gathered"]] == [0, 1, 2] and one["gathered"] is None
    assert torch.equal(zero["gathered"][2]["t"], torch.full((3,), 2.0))
    assert zero["agreed"] == one["agreed"] == (True, False)  # rank 1 and 2's False is everyone's
    model, probe = _net(), _probe()
    alone = CAMProbe(probe, CAMConfig({"0": model[0]}, CAMOptions(deletion_steps=2, n_grid=4)))
    expected = alone.run(model, Credit(epoch=3)).record()
    assert zero["record"].keys() == expected.keys()
    for key, value in expected.items():
        assert zero["record"][key] == pytest.approx(value, abs=1e-5), key


def test_one_process_is_local():
    c = Collective.of(type("T", (), {"world_size": 4, "global_rank": 2})())  # no process group: alone
    assert (c.world, c.rank, c.is_zero) == (1, 0, True)
    assert c.gather(1) == [1] and c.broadcast(2) == 2 and not c.all_ok(False)


def _ends_after_a_collective(rank: int, world: int, port: int) -> None:
    """A rank whose last act is trainviz's collectives, ended without `destroy_process_group` (as a spawned Lightning
    rank ends a fit)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    c = Collective(world, rank)
    for i in range(3):
        c.broadcast({"i": i}), c.gather({"rank": rank}), c.all_ok(True), c.largest(float(rank))


@pytest.mark.timeout(300)
def test_ranks_that_end_right_after_a_collective_exit_cleanly():
    """torch.distributed's own object collectives, as a process's last act, made 6 of 15 such 3-process runs abort
    ("terminate called without an active exception": gloo's worker thread freed a Python tensor during the
    interpreter's exit). Trainviz's own ones wait for the worker to let go, so 8 runs in a row end cleanly."""
    for _ in range(8):
        mp.spawn(_ends_after_a_collective, args=(3, _free_port()), nprocs=3, join=True)  # raises on an abort


def test_settle_waits_for_the_other_holder_of_a_tensor(monkeypatch):
    from trainviz.core import distributed

    monkeypatch.setitem(distributed._SETTLE, "timeout", distributed.SETTLE_SECONDS)  # restored after the test
    held, owner = torch.zeros(2), torch.zeros(2, requires_grad=True)
    tensors = [held]
    before = distributed._references(tensors)
    owner.grad = held  # a second reference, held by C++ (as gloo's worker thread holds a collective's tensors) ...
    uses, references = held._use_count(), distributed._references(tensors)[0]
    assert uses == 2 and references == before[0] + 1  # ... and one to its Python object
    release = threading.Timer(0.05, setattr, (owner, "grad", None))
    release.start()
    assert distributed._settle(tensors, before, timeout=30.0)  # the other holder let go meanwhile (the wait gives
    release.join()  # up the GIL, which dropping the Python reference needs)
    assert held._use_count() == 1
    extra = held  # the C++ reference gone, a Python one not yet (the moment before the worker takes the GIL)
    assert not distributed._settle(tensors, before, timeout=0.01)  # gives up
    assert distributed._SETTLE["timeout"] == 0.0  # and does not wait again in this process
    del extra
    assert distributed._settle(tensors, before)
