"""Both Lightning namespaces (trainviz.core.namespace): callbacks that are real callbacks of both, loggers and progress
bars recognised in the namespace they come from, models and data following the program's own import, and a user's
run written with `import lightning as L` whose TensorBoard and CSV logs fill with trainviz's tags."""

from __future__ import annotations

import csv
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainviz
from trainviz.core import namespace as ns_mod
from trainviz.core.namespace import NAMESPACES, callback_bases, is_instance, namespace, namespace_of

ROOT = Path(__file__).resolve().parents[2]
BOTH = [n for n in NAMESPACES if n in ns_mod.installed()]
pytestmark = pytest.mark.skipif(len(BOTH) < 2, reason="needs both `lightning` and `pytorch_lightning` installed")


def _user_module(ns: str):
    """A user's own LightningModule in namespace ``ns``: a small CNN written without trainviz in mind."""
    L = importlib.import_module(ns)

    class UserNet(L.LightningModule):
        def __init__(self, num_classes: int = 3):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
            )
            self.head = nn.Linear(8, num_classes)

        def forward(self, x):
            return self.head(self.body(x).mean((2, 3)))

        def training_step(self, batch, _):
            x, y = batch
            loss = nn.functional.cross_entropy(self(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_loss", nn.functional.cross_entropy(self(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    return UserNet


def _loaders():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(48, 3, 16, 16, generator=g), torch.arange(48) % 3
    x[y == 1, 0] += 0.5  # something to learn, still in [0, 1] after the clamp
    data = TensorDataset(x.clamp(0, 1), y)
    return DataLoader(data, batch_size=16, shuffle=True, generator=g), DataLoader(data, batch_size=16)


def test_every_callback_is_a_callback_of_both_namespaces():
    bases = callback_bases()
    assert {b.__module__.split(".callbacks")[0] for b in bases} == set(BOTH)
    callbacks = trainviz.default_callbacks(decoder_maps={}, saliency={}, maxact={})
    assert len(callbacks) == 9
    for cb in callbacks:
        for base in bases:
            assert isinstance(cb, base), (type(cb).__name__, base)


@pytest.mark.parametrize("ns", BOTH)
def test_a_user_run_in_either_namespace_logs_trainviz_to_its_tensorboard_and_csv(tmp_path, ns):
    """The issue's first report: `L.Trainer(callbacks=trainviz.default_callbacks())` left TensorBoard empty."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    L = importlib.import_module(ns)
    tb = L.loggers.TensorBoardLogger(str(tmp_path), name="tb", version="")
    csv_logger = L.loggers.CSVLogger(str(tmp_path), name="csv", version="")
    small = {"probe_size": 12}
    callbacks = trainviz.default_callbacks(
        budget=None,
        cam=small,
        dynamics=small,
        features={**small, "n_channels": 2},
        embedding={**small, "methods": ["pca"], "linear_probe_folds": 0},
        robustness={
            **small,
            "corruptions": ["grayscale"],
            "severities": [1],
            "epsilons": [2 / 255],
            "flip_max_steps": 1,
        },
    )
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=[tb, csv_logger],
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    torch.manual_seed(0)
    trainer.fit(_user_module(ns)(), *_loaders())
    assert all(cb.failures == 0 for cb in callbacks if hasattr(cb, "failures"))

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = [t for t in events.Tags()["scalars"] if t.startswith("trainviz/")]
    images = [t for t in events.Tags()["images"] if t.startswith("trainviz/")]
    for name in ("dynamics", "cam", "features", "robustness", "embedding"):
        assert any(t.startswith(f"trainviz/{name}/") for t in scalars + images), (name, scalars, images)
    assert len(scalars) >= 10 and len(images) >= 5

    with open(tmp_path / "csv" / "metrics.csv", newline="") as f:
        header = next(csv.reader(f))
    assert any(h.startswith("trainviz/dynamics/") for h in header) and "epoch" in header


@pytest.mark.parametrize("ns", BOTH)
def test_loggers_and_bars_are_recognised_in_their_own_namespace(tmp_path, ns):
    from trainviz.core.progress import _TqdmDisplay, display_for
    from trainviz.sinks.loggers import CSVBackend, MLflowBackend, logger_backends
    from trainviz.sinks.tensorboard import find_summary_writer

    L = importlib.import_module(ns)
    other = next(n for n in BOTH if n != ns)
    tb = L.loggers.TensorBoardLogger(str(tmp_path), name="tb")
    csv_logger = L.loggers.CSVLogger(str(tmp_path), name="csv")
    mlflow = L.loggers.MLFlowLogger("t", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    assert namespace_of(tb) == ns and namespace_of(object()) is None
    assert namespace_of(L.loggers.TensorBoardLogger) == ns and namespace_of(_user_module(ns)) == ns  # classes too
    assert is_instance(tb, "loggers", "TensorBoardLogger") and not is_instance(
        csv_logger, "loggers", "TensorBoardLogger"
    )

    class Trainer:  # what the sink reads of a trainer
        loggers = [tb, csv_logger, mlflow]
        is_global_zero = True
        progress_bar_callback = L.callbacks.TQDMProgressBar()

    assert find_summary_writer(Trainer) is tb.experiment
    assert [type(b) for b in logger_backends(Trainer.loggers)] == [CSVBackend, MLflowBackend]
    assert isinstance(display_for(Trainer), _TqdmDisplay)
    # the other namespace's classes are different classes, and recognised too
    foreign = importlib.import_module(other)
    assert not isinstance(tb, foreign.loggers.TensorBoardLogger)
    assert is_instance(foreign.loggers.CSVLogger(str(tmp_path), name="o"), "loggers", "CSVLogger")


@pytest.mark.parametrize("ns", BOTH)
def test_presets_load_in_either_lightning_cli(ns, tmp_path, monkeypatch):
    """jsonargparse checks that a class path is a subclass of its own namespace's Callback."""
    cli_module = importlib.import_module(f"{ns}.cli")
    monkeypatch.chdir(tmp_path)
    model = _user_module(ns)
    for preset in ("cam.yaml", "full.yaml"):
        args = ["--config", str(ROOT / "callbacks" / preset), "--trainer.logger", "false"]
        if preset == "full.yaml":  # it names its model and data: keep only the trainer's callbacks
            import yaml

            config = yaml.safe_load((ROOT / "callbacks" / preset).read_text())
            (tmp_path / "callbacks.yaml").write_text(
                yaml.safe_dump({"trainer": {"callbacks": config["trainer"]["callbacks"]}})
            )
            args[1] = str(tmp_path / "callbacks.yaml")
        cli = cli_module.LightningCLI(model, run=False, args=args)
        names = {type(cb).__name__ for cb in cli.trainer.callbacks}
        assert "CAMCallback" in names and namespace_of(cli.trainer) == ns


def test_namespace_choice(monkeypatch):
    monkeypatch.setenv("TRAINVIZ_LIGHTNING", "lightning")
    assert namespace() == "lightning.pytorch"
    monkeypatch.setenv("TRAINVIZ_LIGHTNING", "pytorch_lightning")
    assert namespace() == "pytorch_lightning"
    monkeypatch.setenv("TRAINVIZ_LIGHTNING", "torch_lightning")
    with pytest.raises(ValueError, match="'lightning', 'pytorch_lightning'"):
        namespace()
    monkeypatch.delenv("TRAINVIZ_LIGHTNING")
    # the one namespace the program imported itself, not one trainviz imported for its callback bases
    monkeypatch.setattr(ns_mod, "_ours", {"lightning.pytorch"})
    assert namespace() == "pytorch_lightning"
    monkeypatch.setattr(ns_mod, "_ours", {"pytorch_lightning"})
    assert namespace() == "lightning.pytorch"
    monkeypatch.setattr(ns_mod, "_ours", set())  # both imported by the program: `lightning` first
    assert namespace() == "lightning.pytorch"
    monkeypatch.setattr(ns_mod, "installed", lambda: ())
    with pytest.raises(ImportError, match=r"trainviz\[lightning\].*trainviz\[pytorch-lightning\]"):
        namespace()
    with pytest.raises(ImportError, match="neither `lightning` nor `pytorch_lightning`"):
        callback_bases()


def _python(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "TRAINVIZ_LIGHTNING"} | env
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), environ.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


@pytest.mark.slow
def test_models_and_data_follow_the_programs_own_import():
    check = (
        "import trainviz\n"
        "from trainviz.models import DemoClassifier, ClassMapClassifier\n"
        "from trainviz.data import ShapesDataModule\n"
        "from trainviz.core.namespace import namespace_of\n"
        "cb = trainviz.CAMCallback()\n"  # imports both namespaces for its bases: must not change the choice
        "print(namespace_of(DemoClassifier(num_classes=2)), namespace_of(ClassMapClassifier(num_classes=2, "
        "encoder='small')), namespace_of(ShapesDataModule()))"
    )
    assert _python("import lightning as L\n" + check) == " ".join(["lightning.pytorch"] * 3)
    assert _python("import pytorch_lightning as pl\n" + check) == " ".join(["pytorch_lightning"] * 3)
    assert _python(check, TRAINVIZ_LIGHTNING="pytorch_lightning") == " ".join(["pytorch_lightning"] * 3)


ONLY_ONE = """
import sys
sys.modules[{blocked!r}] = None  # as if it were not installed: importing it raises ImportError
import {module} as L
import trainviz
from trainviz.data import ShapesDataModule
from trainviz.models import DemoClassifier
callbacks = trainviz.default_callbacks(budget=None, embedding={{"methods": ["pca"]}}, robustness={{
    "corruptions": ["grayscale"], "severities": [1], "epsilons": [2 / 255], "flip_max_steps": 1}})
trainer = L.Trainer(max_epochs=1, limit_train_batches=2, callbacks=callbacks, enable_progress_bar=False,
                    enable_model_summary=False, enable_checkpointing=False, default_root_dir={root!r})
trainer.fit(DemoClassifier(num_classes=6, in_channels=3), ShapesDataModule(n_train=64, n_val=48))
assert all(cb.failures == 0 for cb in callbacks if hasattr(cb, "failures"))
print("ok", {blocked!r} in sys.modules and sys.modules[{blocked!r}] is None)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "module, blocked", [("lightning.pytorch", "pytorch_lightning"), ("pytorch_lightning", "lightning")]
)
def test_a_machine_with_only_one_lightning_package_runs_the_suite(tmp_path, module, blocked):
    """trainviz imports nothing of the namespace the user lacks (a user of one should not need the other)."""
    code = ONLY_ONE.format(blocked=blocked, module=module, root=str(tmp_path))
    assert _python(code) == "ok True"
    assert list(tmp_path.rglob("trainviz/cam/metrics.jsonl")) and list(tmp_path.rglob("events.out.tfevents.*"))
