"""Every rank probes its share (issue 19): under DDP each process computes its part of the probe set, rank 0 merges
and writes, and the records are those of one process on the same weights."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from _support import pl, records, same

from trainviz.callbacks.base import ProbeCallback
from trainviz.callbacks.cam import CAMCallback
from trainviz.callbacks.dynamics import DynamicsCallback


def _frozen(model):
    """No training changes the weights (Adam at lr 0) nor the BatchNorm statistics (momentum 0): every process, at
    any world size, probes the same model."""
    model.hparams.lr = 0.0
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.0
    return model


@pytest.mark.slow
def test_ddp_two_processes_give_the_records_of_one(tmp_path, suite_options, demo_model, make_trainer, pl):
    import trainviz
    from trainviz.data import ShapesDataModule

    options = {name: {"probe_size": 24, **opts} for name, opts in suite_options().items()}
    options["embedding"]["methods"] = ["pca"]  # UMAP would amplify float noise of 1e-7 in the features

    def fit(root: Path, **kwargs):
        callbacks = trainviz.default_callbacks(budget=None, **options)
        pl.seed_everything(0, verbose=False)
        trainer = make_trainer(root, callbacks, max_epochs=2, limit_train_batches=2, deterministic=False, **kwargs)
        trainer.fit(_frozen(demo_model()), ShapesDataModule(n_train=96, n_val=48, batch_size=32))  # a fresh one per fit
        return callbacks

    fit(tmp_path / "one")
    callbacks = fit(tmp_path / "two", strategy="ddp_spawn", devices=2)
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    probed = {cb.name for cb in callbacks if isinstance(cb, ProbeCallback)}
    assert {key.split("/")[0] for key in one} == probed  # every callback wrote records
    assert one.keys() == two.keys()
    for key in one:
        assert [r["epoch"] for r in two[key]] == [r["epoch"] for r in one[key]], key  # each epoch exactly once
        same(one[key], two[key], key)


class FailsOnRankOne(DynamicsCallback):
    """Dynamics whose share fails on rank 1 at epoch 0."""

    def _compute(self, pl_module, group, state):
        if group.rank == 1 and self._trainer.current_epoch == 0:
            raise RuntimeError("rank 1 broke")
        return super()._compute(pl_module, group, state)


class LoggedCAM(CAMCallback):
    """CAM whose ranks each write the share they computed (start, stop) into ``share_log``."""

    def __init__(self, share_log: Path, **kwargs):
        super().__init__(**kwargs)
        self.share_log = share_log

    def _share(self, pl_module, group):
        share = super()._share(pl_module, group)
        with open(self.share_log / f"{self.name}-rank{group.rank}.jsonl", "a") as f:
            f.write(json.dumps([share.start, share.stop]))
            f.write("\n")
        with open(self.share_log / f"{self.name}-rank{group.rank}.priced", "w") as f:
            f.write(str(self.prober.shares))  # the shares its budget estimates price the largest of
        return share


@pytest.mark.slow
def test_three_processes_and_two_images_a_failing_rank_and_an_empty_share(tmp_path, demo_model, make_trainer, pl):
    """Three ranks share two probe images (rank 2 has none but joins every collective); a probe that fails on rank 1
    alone is skipped by every rank together, with no hang, and training goes on."""
    from trainviz.data import ShapesDataModule

    def fit(root: Path, **kwargs):
        callbacks = [
            FailsOnRankOne(probe_size=2),
            LoggedCAM(tmp_path, probe_size=2, deletion_steps=2, layers=["net.features.1", "net.features"]),
        ]
        pl.seed_everything(0, verbose=False)
        trainer = make_trainer(root, callbacks, max_epochs=2, limit_train_batches=2, deterministic=False, **kwargs)
        trainer.fit(_frozen(demo_model()), ShapesDataModule(n_train=96, n_val=48, batch_size=16))

    fit(tmp_path / "one")
    assert (tmp_path / "cam-rank0.priced").read_text() == "1"
    for log in tmp_path.glob("*.jsonl"):
        log.unlink()
    fit(tmp_path / "three", strategy="ddp_spawn", devices=3)
    assert [(tmp_path / f"cam-rank{r}.priced").read_text() for r in range(3)] == ["3"] * 3
    one, three = records(tmp_path / "one"), records(tmp_path / "three")
    assert [r["epoch"] for r in one["dynamics/metrics.jsonl"]] == [0, 1]
    assert [r["epoch"] for r in three["dynamics/metrics.jsonl"]] == [1]  # epoch 0 failed on rank 1: all skipped it
    same(one["cam/metrics.jsonl"], three["cam/metrics.jsonl"], "cam")
    shares = {r: [json.loads(x) for x in (tmp_path / f"cam-rank{r}.jsonl").read_text().splitlines()] for r in range(3)}
    assert shares == {0: [[0, 1]] * 2, 1: [[1, 2]] * 2, 2: [[2, 2]] * 2}


class GlooSettles(pl.Callback):
    """For the bare fit only: at teardown a spawned rank gives up the GIL for 0.1 s, so that gloo's worker thread can
    free the tensor of Lightning's own last all-reduce (`reduce_boolean_decision`, 3 ms before a rank 1 exits here)
    before the interpreter exits; a process that exits first may abort (pytorch/pytorch#179291). Trainviz's own
    collectives wait for that thread themselves (`trainviz.core.distributed._settle`), so the probed fit has none."""

    def teardown(self, trainer, pl_module, stage):
        if trainer.world_size > 1:
            time.sleep(0.1)


@pytest.mark.slow
def test_ddp_training_is_bitwise_the_same_with_every_rank_probing(
    tmp_path, all_callbacks, demo_model, make_trainer, pl
):
    from trainviz.data import ShapesDataModule

    weights = []
    for name, callbacks in (("bare", [GlooSettles()]), ("probed", all_callbacks())):
        pl.seed_everything(0, verbose=False)
        model = demo_model()
        trainer = make_trainer(
            tmp_path / name, callbacks, max_epochs=2, limit_train_batches=2, strategy="ddp_spawn", devices=2
        )
        trainer.fit(model, ShapesDataModule(n_train=96, n_val=48, batch_size=16))
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    assert weights[0].keys() == weights[1].keys()
    changed = [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])]
    assert changed == []
    assert records(tmp_path / "probed")  # the suite did run
    start = demo_model().state_dict()
    assert any(not torch.equal(start[k], weights[0][k]) for k in start)  # the trained weights came back: it trained


DDP_SCRIPT = """
import sys
import torch
import _support
import trainviz
from trainviz.data import ShapesDataModule

options = {name: {"probe_size": 24, **opts} for name, opts in _support.suite_options().items()}
options["embedding"]["methods"] = ["pca"]
model = _support.demo_model()
model.hparams.lr = 0.0
for module in model.modules():
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        module.momentum = 0.0
_support.pl.seed_everything(0, verbose=False)
trainer = _support.make_trainer(
    sys.argv[1], trainviz.default_callbacks(budget=None, **options), max_epochs=2, limit_train_batches=4,
    accumulate_grad_batches=2, deterministic=False, strategy=sys.argv[2], devices=int(sys.argv[3]),
)
trainer.fit(model, ShapesDataModule(n_train=96, n_val=48, batch_size=16))
print(f"FIT DONE {trainer.global_rank}", flush=True)  # one write: the ranks share stdout
"""


@pytest.mark.slow
def test_ddp_launched_processes_accumulating_gradients_give_the_records_of_one(tmp_path):
    """`strategy="ddp"` (the launcher starts the script again for rank 1) with `accumulate_grad_batches=2`."""
    import os
    import subprocess
    import sys
    import textwrap

    tests = Path(__file__).resolve().parents[1]
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(tests.parent / "src"), str(tests), env.get("PYTHONPATH", "")])
    for name, strategy, devices in (("one", "auto", "1"), ("two", "ddp", "2")):
        done = subprocess.run(
            [sys.executable, str(script), str(tmp_path / name), strategy, devices],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400,
        )  # fmt: skip
        assert done.returncode == 0 and "FIT DONE 0" in done.stdout, done.stderr[-3000:]
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert one.keys() == two.keys() and len(one) >= 6
    for key in one:
        assert [r["epoch"] for r in two[key]] == [r["epoch"] for r in one[key]] == [0, 1], key
        same(one[key], two[key], key)


@pytest.mark.slow
def test_two_nodes_without_a_shared_filesystem(tmp_path):
    """A simulated second node: two launches of one process each (`num_nodes=2`, `NODE_RANK` 0 and 1), each with its
    own root folder. Only node 0 writes; node 1's folder gets no trainviz artifact; the records are one process's."""
    import os
    import socket
    import subprocess
    import sys
    import textwrap

    tests = Path(__file__).resolve().parents[1]
    script = tmp_path / "nodes.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT).replace("devices=int(sys.argv[3]),", "devices=1, num_nodes=2,"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2")
    env["PYTHONPATH"] = os.pathsep.join([str(tests.parent / "src"), str(tests), env.get("PYTHONPATH", "")])
    nodes = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / f"node{rank}"), "ddp", "1"],
            cwd=tmp_path,
            env={**env, "NODE_RANK": str(rank), "LOCAL_RANK": "0"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=400) for node in nodes]
    for node, (out, err) in zip(nodes, outputs):
        assert node.returncode == 0 and "FIT DONE" in out, err[-3000:]
    one_env = {k: v for k, v in env.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE")}
    alone = tmp_path / "alone.py"
    alone.write_text(textwrap.dedent(DDP_SCRIPT))
    done = subprocess.run(
        [sys.executable, str(alone), str(tmp_path / "one"), "auto", "1"],
        cwd=tmp_path, env=one_env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list((tmp_path / "node1").rglob("trainviz/*/*"))  # node 1 wrote nothing of trainviz's
    one, node0 = records(tmp_path / "one"), records(tmp_path / "node0")
    assert one.keys() == node0.keys() and len(one) >= 6
    for key in one:
        same(one[key], node0[key], key)
