"""Sharded strategies are refused at setup, on every rank, with what to do (trainviz.core.strategy): a probe forward on
rank 0 alone under FSDP2 killed the training run at the first epoch end (gloo) or hung it (NCCL)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from trainviz.core.strategy import check_strategy, sharded_strategy

ROOT = Path(__file__).resolve().parents[2]


def _stand_in(name: str, **attrs):
    return type(name, (), attrs)()


@pytest.mark.parametrize(
    "strategy, world, refused",
    [
        (_stand_in("ModelParallelStrategy"), 2, "ModelParallelStrategy"),
        (_stand_in("FSDPStrategy"), 8, "FSDPStrategy"),
        (
            _stand_in("DeepSpeedStrategy", config={"zero_optimization": {"stage": 3}}),
            2,
            "DeepSpeedStrategy (ZeRO stage 3)",
        ),
        (_stand_in("DeepSpeedStrategy", config={"zero_optimization": {"stage": 2}}), 2, None),
        (_stand_in("DDPStrategy"), 4, None),
        (_stand_in("FSDPStrategy"), 1, None),  # one process: nothing to desynchronise
        (_stand_in("SingleDeviceStrategy"), 1, None),
    ],
)
def test_sharded_strategies_with_more_than_one_process_are_refused(strategy, world, refused):
    trainer = SimpleNamespace(strategy=strategy, world_size=world)
    assert sharded_strategy(trainer) == refused
    if refused is None:
        check_strategy(trainer, "CAMCallback")
    else:
        with pytest.raises(
            ValueError, match=r"CAMCallback: trainviz cannot probe a model sharded .* world size"
        ) as err:
            check_strategy(trainer, "CAMCallback")
        assert "strategy='ddp'" in str(err.value) and refused in str(err.value)


def test_a_subclass_of_a_sharded_strategy_is_refused_too():
    class MyFSDP(type("FSDPStrategy", (), {})):
        pass

    assert sharded_strategy(SimpleNamespace(strategy=MyFSDP(), world_size=2)) == "MyFSDP"


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
print("FIT DONE", trainer.global_rank)
"""


@pytest.mark.slow
@pytest.mark.parametrize("with_trainviz", [False, True], ids=["without", "with"])
def test_fsdp2_with_two_gloo_processes_is_refused_at_setup_not_killed_at_epoch_end(tmp_path, with_trainviz):
    script = tmp_path / "fsdp2.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    )
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, str(script), "with" if with_trainviz else "without"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if not with_trainviz:  # the test bed trains: FSDP2 on 2 CPU processes
        assert done.returncode == 0 and "FIT DONE 0" in done.stdout, done.stderr[-3000:]
        return
    assert done.returncode != 0 and "FIT DONE" not in done.stdout
    assert (
        "trainviz cannot probe a model sharded across processes yet (ModelParallelStrategy, world size 2)"
        in done.stderr
    )
    assert "EnforceNotMet" not in done.stderr and "collective mismatch" not in done.stderr
