"""Which strategies trainviz probes under (trainviz.core.strategy).

A probe forward on rank 0 alone under FSDP2 killed the training run at the first epoch end (gloo) or hung it (NCCL).
FSDP2 now runs with every rank in lockstep; the sharded strategies it cannot enter (FSDP1, DeepSpeed ZeRO-3, tensor
parallelism) are refused at setup, on every rank, with what to do."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from trainviz.core.distributed import Collective
from trainviz.core.strategy import check_strategy, refusal, sharded_strategy

ROOT = Path(__file__).resolve().parents[2]


def _stand_in(name: str, **attrs):
    return type(name, (), attrs)()


def _mesh(tensor_parallel: int):
    return {
        "data_parallel": SimpleNamespace(size=lambda: 2),
        "tensor_parallel": SimpleNamespace(size=lambda: tensor_parallel),
    }


@pytest.mark.parametrize(
    "strategy, world, sharded, refused",
    [
        (_stand_in("ModelParallelStrategy"), 2, "ModelParallelStrategy", None),  # FSDP2: lockstep
        (_stand_in("ModelParallelStrategy", device_mesh=_mesh(1)), 2, "ModelParallelStrategy", None),
        (
            _stand_in("ModelParallelStrategy", device_mesh=_mesh(2)),
            4,
            "ModelParallelStrategy",
            "tensor_parallel_size=2",
        ),
        (_stand_in("FSDPStrategy"), 8, "FSDPStrategy", "FSDPStrategy with 8 processes"),
        (
            _stand_in("DeepSpeedStrategy", config={"zero_optimization": {"stage": 3}}),
            2,
            "DeepSpeedStrategy (ZeRO stage 3)",
            "DeepSpeedStrategy (ZeRO stage 3) with 2 processes",
        ),
        (_stand_in("DeepSpeedStrategy", config={"zero_optimization": {"stage": 2}}), 2, None, None),
        (_stand_in("DDPStrategy"), 4, None, None),
        (_stand_in("FSDPStrategy"), 1, None, None),  # one process: nothing to desynchronise
        (_stand_in("SingleDeviceStrategy"), 1, None, None),
    ],
)
def test_sharded_strategies_run_in_lockstep_or_are_refused_at_setup(strategy, world, sharded, refused):
    trainer = SimpleNamespace(strategy=strategy, world_size=world)
    assert sharded_strategy(trainer) == sharded
    if refused is None:
        assert refusal(trainer) is None
        check_strategy(trainer, "CAMCallback")
    else:
        with pytest.raises(ValueError, match=r"CAMCallback: trainviz cannot probe this sharded model") as err:
            check_strategy(trainer, "CAMCallback")
        message = str(err.value)
        assert refused in message and "strategy='ddp'" in message
        assert "ModelParallelStrategy" in message and "tensor_parallel_size=1" in message  # what to do instead


def test_a_sharded_model_is_probed_in_lockstep():
    """Under FSDP2 every rank computes the whole probe set as one share (the same calls in the same order) and rank 0
    keeps its own result: nothing travels; under DDP each rank has its share."""
    lockstep, ddp = Collective(world=2, rank=1, lockstep=True), Collective(world=2, rank=1)
    assert (lockstep.shares, lockstep.share_index) == (1, 0) and (ddp.shares, ddp.share_index) == (2, 1)
    assert lockstep.gather("partial") is None and Collective(2, 0, lockstep=True).gather("partial") == ["partial"]


def test_a_subclass_of_a_sharded_strategy_is_refused_too():
    class MyFSDP(type("FSDPStrategy", (), {})):
        pass

    assert sharded_strategy(SimpleNamespace(strategy=MyFSDP(), world_size=2)) == "MyFSDP"
    assert "MyFSDP with 2 processes" in refusal(SimpleNamespace(strategy=MyFSDP(), world_size=2))


SCRIPT = """
import sys
import torch
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.utils.data import DataLoader, TensorDataset
from _support import pl
import trainviz

class Sharded(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = None

    def configure_model(self):
        if self.net is None:
            self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                     nn.Linear(8, 3))
            fully_shard(self.net, mesh=self.device_mesh["data_parallel"])

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, _):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

data = TensorDataset(torch.rand(24, 3, 16, 16), torch.arange(24) % 3)
trainer = pl.Trainer(
    accelerator="cpu", devices=2, max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
    enable_model_summary=False,
    strategy=pl.strategies.ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
    callbacks=trainviz.default_callbacks(budget=None) if sys.argv[1] == "with" else [],
)
trainer.fit(Sharded(), DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
print(f"FIT DONE {trainer.global_rank}", flush=True)  # one write: the ranks share stdout
"""


@pytest.mark.slow
def test_the_fsdp2_run_that_died_at_the_first_epoch_end_now_trains_and_probes(tmp_path):
    """The issue's run: a small CNN sharded whole with `fully_shard`, 2 gloo processes and
    `default_callbacks(budget=None)`. It died at the first epoch end ("Is there a distributed collective mismatch in
    your code?"); now every rank joins every probe forward and the fit ends with every probe run and no failure."""
    script = tmp_path / "fsdp2.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    )
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, str(script), "with"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "FIT DONE 0" in done.stdout and "FIT DONE 1" in done.stdout, done.stderr[-3000:]
    assert "EnforceNotMet" not in done.stderr and "collective mismatch" not in done.stderr
    assert "failed at epoch" not in done.stderr
    written = {path.parent.name for path in (tmp_path / "trainviz").glob("*/metrics.jsonl")}
    assert {"cam", "dynamics", "features", "embedding", "robustness"} <= written


def test_a_data_dependent_stop_is_taken_by_every_rank_together(monkeypatch):
    """In lockstep a loop's stop (steps-to-flip once every image flipped) is agreed by all ranks: one rank's "stop"
    waits for the others' (an all-reduce); outside lockstep, or with DDP shares, it is the rank's own and free."""
    from trainviz.core import distributed

    votes = []

    def all_ok(self, ok):  # the all-reduce of a rank whose partner still wants to go on
        votes.append(ok)
        return False

    monkeypatch.setattr(Collective, "all_ok", all_ok)
    with distributed.in_lockstep(Collective(world=2, rank=0, lockstep=True)):
        assert distributed.agreed(True) is False and votes == [True]
    with distributed.in_lockstep(Collective(world=2, rank=0)):  # DDP: each rank its own share
        assert distributed.agreed(True) is True and votes == [True]
    assert distributed.agreed(True) is True
