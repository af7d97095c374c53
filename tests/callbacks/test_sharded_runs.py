"""A model sharded across processes with FSDP2 (issue 19): Lightning's ``ModelParallelStrategy`` with ``fully_shard``
in ``configure_model``, 2 gloo processes on the CPU. Every rank takes part in every probe forward and backward (the
probes' lockstep, :mod:`trainviz.core.strategy`); the whole suite and the opt-ins write each epoch once, with the
records of one process on the same weights, and training is bitwise the same as without trainviz.

``ModelParallelStrategy`` has one launcher (the script is started again for rank 1): there is no spawn variant of it.
The DDP tests (``test_distributed_runs.py``) cover ``ddp`` and ``ddp_spawn``."""

from __future__ import annotations

import textwrap

import pytest
import torch
from _support import records, same, script_run

SCRIPT = """
import json
import sys
import time

import torch
from torch.distributed.fsdp import fully_shard

import _support
import trainviz
from trainviz.data import ShapesDataModule
from trainviz.models import DemoClassifier


class Sharded(DemoClassifier):
    \"\"\"The demo classifier sharded with FSDP2: each block with parameters, then the whole network.\"\"\"

    def configure_model(self):
        if getattr(self, "sharded", False):
            return
        self.sharded = True
        mesh = self.device_mesh["data_parallel"]
        for block in self.net.features:
            if any(True for _ in block.parameters()):
                fully_shard(block, mesh=mesh)
        fully_shard(self.net, mesh=mesh)


root, config = sys.argv[1], json.loads(sys.argv[2])
sharded = config["devices"] > 1
torch.manual_seed(0)
model = (Sharded if sharded else DemoClassifier)(num_classes=6, in_channels=3)
if config["frozen"]:  # the same weights at any world size: Adam at lr 0, BatchNorm momentum 0
    model.hparams.lr = 0.0
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.0
callbacks = []
if config["suite"]:
    options = {name: {"probe_size": 24, "strict": True, **opts} for name, opts in _support.suite_options().items()}
    options["embedding"]["methods"] = ["pca"]  # UMAP would amplify float noise of 1e-7 in the features
    if config["frozen"]:  # compared with one process: a sharded model has no sanity checks (no deep copy)
        options["saliency"]["sanity_every"] = 0
    for name, size in config.get("sizes", {}).items():
        options[name]["probe_size"] = size
    callbacks = trainviz.default_callbacks(budget=None, **options)
_support.pl.seed_everything(0, verbose=False)
strategy = "auto"
if sharded:
    parallel = _support.pl.strategies.ModelParallelStrategy
    strategy = parallel(data_parallel_size=config["devices"], tensor_parallel_size=1)
trainer = _support.make_trainer(
    root, callbacks, max_epochs=2, limit_train_batches=4, accumulate_grad_batches=config["accumulate"],
    deterministic=False, strategy=strategy, devices=config["devices"],
)
trainer.fit(model, ShapesDataModule(n_train=96, n_val=48, batch_size=16))
weights = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in model.state_dict().items()}  # all ranks
if trainer.is_global_zero:
    torch.save({"weights": weights, "rng": torch.random.get_rng_state()}, f"{root}/end.pt")
if sharded:  # the gathers above (full_tensor) are this process's last collectives: gloo's worker thread frees their
    time.sleep(0.1)  # tensors a moment after they return, and may abort an exit that comes first (pytorch#179291)
print(f"FIT DONE {trainer.global_rank}", flush=True)  # one write: the ranks share stdout
"""


def _fit(tmp_path, name: str, **config):
    script = tmp_path / "sharded.py"
    script.write_text(textwrap.dedent(SCRIPT))
    (tmp_path / name).mkdir()
    config = {"devices": 2, "suite": True, "frozen": False, "accumulate": 1, **config}
    import json

    done = script_run(script, [tmp_path / name, json.dumps(config)], tmp_path)
    assert done.returncode == 0 and "FIT DONE 0" in done.stdout, done.stderr[-4000:]
    assert "collective mismatch" not in done.stderr and "failed at epoch" not in done.stderr
    return done


@pytest.mark.slow
def test_fsdp2_on_two_processes_gives_the_records_of_one_process(tmp_path):
    """The whole default suite plus the opt-ins (saliency, MaxOut), every callback strict (a probe error would end the
    fit): each writes epochs 0 and 1 exactly once, with the records of one process on the same (frozen) weights,
    filters gathered from the shards included."""
    _fit(tmp_path, "two", frozen=True)
    _fit(tmp_path, "one", frozen=True, devices=1)
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert {key.split("/")[0] for key in one} >= {"cam", "dynamics", "features", "embedding", "robustness"}
    assert {"saliency/metrics.jsonl", "maxact/metrics.jsonl"} <= one.keys()
    assert one.keys() == two.keys()
    for key in one:
        assert [r["epoch"] for r in two[key]] == [r["epoch"] for r in one[key]] == [0, 1], key
        same(one[key], two[key], key)
    assert (tmp_path / "two" / "trainviz" / "maxact" / "epoch_0001").is_dir()  # the fit-end pass, every rank in it


@pytest.mark.slow
def test_fsdp2_training_is_bitwise_the_same_with_the_suite(tmp_path):
    """FSDP2 on 2 processes with `accumulate_grad_batches=2`: the suite (with CAM and dynamics on one image, fewer
    than the ranks) leaves the trained weights, the BatchNorm statistics and rank 0's random stream bitwise as
    without it. The saliency callback says why it runs without its sanity checks."""
    _fit(tmp_path, "bare", suite=False, accumulate=2)
    done = _fit(tmp_path, "probed", accumulate=2, sizes={"cam": 1, "dynamics": 1})
    assert done.stderr.count("SaliencyCallback runs without its sanity checks") == 1  # rank 0 says why, once
    bare, probed = torch.load(tmp_path / "bare" / "end.pt"), torch.load(tmp_path / "probed" / "end.pt")
    assert bare["weights"].keys() == probed["weights"].keys()
    assert any("running_mean" in k for k in bare["weights"])
    for key, value in bare["weights"].items():
        assert torch.equal(value, probed["weights"][key]), key
    assert torch.equal(bare["rng"], probed["rng"])
    assert [r["epoch"] for r in records(tmp_path / "probed")["cam/metrics.jsonl"]] == [0, 1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="Lightning runs FSDPStrategy and DeepSpeed on CUDA only")
@pytest.mark.parametrize("kind", ["fsdp1", "deepspeed_stage_3"])
def test_fsdp1_and_deepspeed_stage_3_on_one_gpu_run_the_suite(tmp_path, kind, pl, make_trainer, suite_options):
    """At world size 1 (the only size a lent machine has) `FSDPStrategy` and DeepSpeed ZeRO-3 wrap the model as they
    would across GPUs; the whole suite, strict, writes each epoch once. With more processes setup refuses them
    (`test_strategy.py`)."""
    from trainviz.data import ShapesDataModule
    from trainviz.models import DemoClassifier

    if kind == "fsdp1":
        strategy = pl.strategies.FSDPStrategy()
    else:
        pytest.importorskip("deepspeed")  # may not install here; imported by Lightning only when used
        strategy = pl.strategies.DeepSpeedStrategy(stage=3)
    import trainviz

    options = {name: {"probe_size": 24, "strict": True, **opts} for name, opts in suite_options().items()}
    options["saliency"]["sanity_every"] = 0
    trainer = make_trainer(
        tmp_path, trainviz.default_callbacks(budget=None, **options), accelerator="gpu", devices=1,
        strategy=strategy, limit_train_batches=2, deterministic=False,
    )  # fmt: skip
    torch.manual_seed(0)
    trainer.fit(DemoClassifier(num_classes=6), ShapesDataModule(n_train=96, n_val=48, batch_size=16))
    written = records(tmp_path)
    assert {key.split("/")[0] for key in written} >= {"cam", "dynamics", "features", "embedding", "robustness"}
    for key, lines in written.items():
        assert [r["epoch"] for r in lines] == [0, 1], key


DIVERGENT = """
import os
import sys

import torch
from torch.distributed.fsdp import fully_shard
from torch.utils.data import DataLoader, TensorDataset

import _support
import trainviz
from trainviz.models import DemoClassifier


class Sharded(DemoClassifier):
    def configure_model(self):
        if not getattr(self, "sharded", False):
            self.sharded = True
            fully_shard(self.net, mesh=self.device_mesh["data_parallel"])


torch.manual_seed(os.getpid())  # data made per process: each rank's validation images differ
data = TensorDataset(torch.rand(48, 3, 32, 32), torch.arange(48) % 6)
torch.manual_seed(0)
model = Sharded(num_classes=6)
robust = dict(corruptions=["grayscale"], severities=[1], flip_max_steps=3, trajectory_images=4, probe_size=12)
callbacks = [
    trainviz.RobustnessCallback(**robust, strict=True),
    trainviz.DynamicsCallback(probe_size=12, strict=True),
]
parallel = _support.pl.strategies.ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
trainer = _support.make_trainer(sys.argv[1], callbacks, strategy=parallel, devices=2, deterministic=False)
trainer.fit(model, DataLoader(data, batch_size=8), DataLoader(data, batch_size=8))
print(f"FIT DONE {trainer.global_rank}", flush=True)  # one write: the ranks share stdout
"""


@pytest.mark.slow
def test_probe_data_that_differ_between_ranks_are_rank_zeros_everywhere(tmp_path):
    """Validation data made per process (each rank's images differ): under FSDP2 every rank would compute a different
    set in lockstep, with different numbers of model calls where the data decide (which images flipped), and hang.
    At fit start the ranks compare their probe sets' fingerprints; rank 0's set is sent to every rank, with a
    warning that says why, and the run trains and probes every epoch."""
    script = tmp_path / "divergent.py"
    script.write_text(textwrap.dedent(DIVERGENT))
    (tmp_path / "run").mkdir()
    done = script_run(script, [tmp_path / "run"], tmp_path, timeout=300)
    assert done.returncode == 0 and "FIT DONE 0" in done.stdout and "FIT DONE 1" in done.stdout, done.stderr[-4000:]
    assert done.stderr.count("probe set differs between processes") == 2  # once per callback, on rank 0
    written = records(tmp_path / "run")
    for key in ("robustness/metrics.jsonl", "dynamics/metrics.jsonl"):
        assert [r["epoch"] for r in written[key]] == [0, 1], key
