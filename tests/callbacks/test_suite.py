"""Suite-wide guarantees, for every trainviz callback: no trace on training, hook hygiene, fault
isolation, resume, DDP, settings checked at setup, YAML presets."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import _support
import pytest
import torch

import trainviz
from trainviz.callbacks.base import ProbeCallback
from trainviz.core.hooks import count_hooks

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def _fit(demo_model, make_trainer, pl):
    def _fit(tmp_path, callbacks, dm, epochs=2, kind="cnn", **kw):
        pl.seed_everything(0, verbose=False)
        model = demo_model(kind)
        trainer = make_trainer(tmp_path, callbacks, max_epochs=epochs, **kw)
        trainer.fit(model, dm)
        return model, trainer

    return _fit


@pytest.mark.parametrize("kind", _support.MODEL_KINDS)
def test_full_suite_leaves_no_trace(tmp_path, tiny_dm, kind, _fit, all_callbacks):
    from trainviz.data import ShapesDataModule

    plain, _ = _fit(tmp_path / "plain", [], tiny_dm, kind=kind)
    next_plain = torch.rand(4)
    dm2 = ShapesDataModule(n_train=96, n_val=48, batch_size=32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a failing probe would warn: make it fail the test
        warnings.filterwarnings(
            "ignore", ".*(does not have many workers|number of training batches|TensorBoard|tensorboardX).*"
        )
        probed, trainer = _fit(tmp_path / "probed", all_callbacks(kind), dm2, kind=kind)
    next_probed = torch.rand(4)
    for (name, a), (_, b) in zip(plain.state_dict().items(), probed.state_dict().items()):
        assert torch.equal(a, b), f"{name} differs with the trainviz suite"
    assert torch.equal(next_plain, next_probed), "the global RNG stream changed"
    probes = [cb for cb in trainer.callbacks if isinstance(cb, ProbeCallback)]
    assert probes and all(cb.done_epochs == [0, 1] and cb.failures == 0 for cb in probes)


def test_dynamics_robustness_and_embedding_share_one_clean_forward_and_keep_their_results(tmp_path, tiny_dm, _fit):
    """On the same probe set (the default) robustness' clean row and the embedding's capture read the dynamics'
    forward of each epoch: one forward per epoch for the three, and each writes what it writes alone."""
    import numpy as np

    def trio():
        same = dict(probe_size=24, batch_size=8)  # the clean row a whole number of batches, as 256 in 64s
        robust = dict(corruptions=["grayscale", "gaussian_blur_3x3"], severities=[1], epsilons=[4 / 255])
        return [
            trainviz.DynamicsCallback(**same),
            trainviz.RobustnessCallback(**same, **robust, flip_max_steps=2),
            trainviz.EmbeddingCallback(**same, methods="pca", linear_probe_folds=0),
        ]

    three = trio()
    _fit(tmp_path / "three", three, tiny_dm)
    shared = three[0].clean_forward
    assert shared is not None and all(cb.clean_forward is shared for cb in three)
    assert (shared.forwards, shared.hits) == (2, 4)  # one forward an epoch, read by the other two
    # its least run, which the budget prices, leaves out the clean row the shared forward served: two seed probes
    # and prices a row by the shared forward of the probe set (the median of its forwards, one an epoch)
    robust = three[1].prober
    assert robust.costs()["row"] == shared.seconds[robust.clean.fingerprint] > 0
    assert robust.costs()["row"] != robust.history.costs["row"]  # its own measure of a row stays as it was
    overhead = robust.history.costs["overhead"]  # what its run cost besides its forwards (merge, tiles, hand-over)
    assert robust.clean_read and robust.core_seconds() == pytest.approx(overhead + 2 * robust.costs()["row"])
    assert three[1]._budget_floor() == robust.core_seconds()
    alone = trio()
    for cb in alone:
        _fit(tmp_path / cb.name, [cb], tiny_dm)
    assert all(cb.clean_forward.hits == 0 for cb in alone)
    robust = alone[1].prober  # alone it runs its clean row itself: three rows
    assert not robust.clean_read and robust.clean.seconds > 0
    assert robust.core_seconds() == pytest.approx(robust.history.costs["overhead"] + 3 * robust.clean.seconds)
    for cb in alone:
        paths = sorted((tmp_path / cb.name / "trainviz" / cb.name).glob("epoch_*/*.npz"))
        assert len(paths) >= 2, paths  # both epochs' arrays
        for path in paths:
            mine = tmp_path / "three" / path.relative_to(tmp_path / cb.name)
            with np.load(path) as a, np.load(mine) as b:
                assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a), path


@pytest.fixture(scope="session")
def _callback_named(all_callbacks):
    def _callback_named(kind: str, name: str):
        return next(cb for cb in all_callbacks(kind) if type(cb).__name__ == name)

    return _callback_named


# Every callback, on a demo model it applies to (the decoder-map callback needs the encoder-decoder).
HYGIENE_CASES = [
    ("classmap" if type(cb).__name__ == "DecoderMapCallback" else "cnn", type(cb).__name__)
    for cb in _support.all_callbacks("classmap")
]


@pytest.mark.parametrize("kind, name", HYGIENE_CASES, ids=[name for _, name in HYGIENE_CASES])
def test_hook_hygiene_each_callback_also_after_a_probe_raised(
    tmp_path, tiny_dm, kind, name, monkeypatch, _callback_named, _fit
):
    cb = _callback_named(kind, name)
    model, _ = _fit(tmp_path / "ok", [cb], tiny_dm, epochs=1, kind=kind)
    assert count_hooks(model) == 0
    if not isinstance(cb, ProbeCallback):
        return
    # A probe that dies inside the model's forward, with the callback's own hooks in place (in a run: a setup
    # check that dies raises before the first epoch, by design).
    import trainviz.callbacks.base as base

    state = {"probing": False}
    real_run = base.ProbeCallback.run

    def flagged_run(self, *args, **kwargs):
        state["probing"] = True
        try:
            return real_run(self, *args, **kwargs)
        finally:
            state["probing"] = False

    net_cls = type(model.net)
    real_forward = net_cls.forward

    def exploding_forward(self, x):
        if state["probing"]:
            raise RuntimeError("probe exploded")
        return real_forward(self, x)

    monkeypatch.setattr(base.ProbeCallback, "run", flagged_run)
    monkeypatch.setattr(net_cls, "forward", exploding_forward)
    cb2 = _callback_named(kind, name)
    with pytest.warns(UserWarning, match="probe exploded"):
        model, _ = _fit(tmp_path / "raised", [cb2], tiny_dm, epochs=1, kind=kind)
    assert cb2.failures == 1
    assert count_hooks(model) == 0


def test_a_failing_plan_warns_once_and_training_goes_on(tmp_path, tiny_dm, monkeypatch, _fit):
    from trainviz import DynamicsCallback

    def broken(self, credit, essential, epoch):
        raise RuntimeError("bad plan")

    monkeypatch.setattr(DynamicsCallback, "_plan", broken)
    cb = DynamicsCallback(probe_size=12)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, trainer = _fit(tmp_path, [cb], tiny_dm, epochs=2)
    assert trainer.current_epoch == 2 and cb.done_epochs == [] and cb.failures == 2
    ours = [w for w in caught if "bad plan" in str(w.message)]
    assert len(ours) == 1 and "DynamicsCallback plan failed at epoch 0" in str(ours[0].message)


def test_failing_probe_warns_once_and_training_goes_on(tmp_path, tiny_dm, monkeypatch, _fit):
    from trainviz import DynamicsCallback

    calls = []

    def boom(self, pl_module, group, state):  # every share of a run computes here (the compute contract)
        calls.append(self._trainer.current_epoch)
        raise ValueError("bad probe")

    monkeypatch.setattr(DynamicsCallback, "_compute", boom)
    cb = DynamicsCallback(probe_size=12)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, trainer = _fit(tmp_path, [cb], tiny_dm, epochs=3)
    assert trainer.current_epoch == 3 and calls == [0, 1, 2]
    ours = [w for w in caught if "trainviz" in str(w.message) and "bad probe" in str(w.message)]
    assert len(ours) == 1 and "DynamicsCallback" in str(ours[0].message)
    assert cb.failures == 3
    strict = DynamicsCallback(probe_size=12, strict=True)
    with pytest.raises(ValueError, match="bad probe"):
        _fit(tmp_path / "strict", [strict], tiny_dm, epochs=1)


def _artifact_epochs(log_dir: Path, name: str) -> list[int]:
    return sorted(int(p.name[6:]) for p in (log_dir / "trainviz" / name).glob("epoch_*"))


def test_resume_continues_the_same_series(tmp_path, tiny_dm, all_callbacks, demo_model, make_trainer, pl):
    from trainviz.data import ShapesDataModule

    ckpt_dir = tmp_path / "ckpt"
    first = all_callbacks()
    pl.seed_everything(0, verbose=False)
    trainer = make_trainer(
        tmp_path,
        first + [pl.callbacks.ModelCheckpoint(dirpath=ckpt_dir, save_last=True)],
        max_epochs=2,
        enable_checkpointing=True,
    )
    trainer.fit(demo_model(), tiny_dm)
    ids_before = {type(cb).__name__: cb.probe.ids.tolist() for cb in first if isinstance(cb, ProbeCallback)}

    # A different data seed would draw a different probe set: the resumed run must keep the saved one.
    second = all_callbacks()
    trainer = make_trainer(
        tmp_path,
        second + [pl.callbacks.ModelCheckpoint(dirpath=ckpt_dir, save_last=True)],
        max_epochs=4,
        enable_checkpointing=True,
    )
    trainer.fit(
        demo_model(),
        ShapesDataModule(n_train=96, n_val=48, batch_size=32, seed=5),
        ckpt_path=str(ckpt_dir / "last.ckpt"),
    )
    log_dir = Path(trainer.log_dir)
    for cb in second:
        if isinstance(cb, ProbeCallback):
            assert cb.probe.ids.tolist() == ids_before[type(cb).__name__]
            assert cb.done_epochs == [0, 1, 2, 3]
            assert _artifact_epochs(log_dir, cb.name) == [0, 1, 2, 3]
    records = [
        json.loads(line) for line in (log_dir / "trainviz" / "dynamics" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    runs = (log_dir / "trainviz" / "manifest" / "runs.jsonl").read_text().splitlines()
    assert [json.loads(r)["start_epoch"] for r in runs] == [0, 2]


@pytest.mark.parametrize(
    "make, fit_kwargs, message",
    [
        (lambda: trainviz.DynamicsCallback(probe_size=10_000), {}, "probe_size.*48 examples"),
        (lambda: trainviz.DynamicsCallback(probe_size=8), {"no_val": True}, "needs validation data"),
        (lambda: trainviz.DynamicsCallback(probe_size=8), {"flat": True}, "image"),
    ],
)
def test_bad_settings_fail_at_setup(tmp_path, tiny_dm, make, fit_kwargs, message, demo_model, make_trainer):
    from torch.utils.data import DataLoader, TensorDataset

    cb = make()
    trainer = make_trainer(tmp_path, [cb], max_epochs=1)
    model = demo_model()
    with pytest.raises(ValueError, match=message):
        if fit_kwargs.get("no_val"):
            tiny_dm.setup()
            trainer.fit(model, train_dataloaders=DataLoader(tiny_dm.train_set, batch_size=32))
        elif fit_kwargs.get("flat"):
            flat = TensorDataset(torch.randn(20, 7), torch.arange(20) % 2)
            trainer.fit(model, train_dataloaders=DataLoader(flat), val_dataloaders=DataLoader(flat))
        else:
            trainer.fit(model, tiny_dm)
    assert trainer.current_epoch == 0  # failed before the first epoch


def test_every_n_epochs_zero_is_rejected_with_the_house_message():
    with pytest.raises(ValueError, match=r"Expected `every_n_epochs` to be a positive int, got 0"):
        trainviz.DynamicsCallback(every_n_epochs=0)


def test_cadence_and_final_run(tmp_path, tiny_dm, _fit):
    cb = trainviz.DynamicsCallback(probe_size=12, every_n_epochs=2)
    _fit(tmp_path, [cb], tiny_dm, epochs=3)
    assert cb.done_epochs == [1, 2]  # epoch 1 by cadence, epoch 2 at fit end
    quiet = trainviz.DynamicsCallback(probe_size=12, every_n_epochs=2, run_at_fit_end=False)
    _fit(tmp_path / "b", [quiet], tiny_dm, epochs=3)
    assert quiet.done_epochs == [1]


def test_the_state_key_is_kept_until_an_attribute_changes():
    """Lightning reads every callback's state key at each hook call, several times a training batch: it is built
    once, and again after a setting it is made of changes."""
    cb = trainviz.RobustnessCallback(corruptions=["fog"])
    key = cb.state_key
    assert cb.state_key is key and key == cb._generate_state_key(**cb._state_args())
    cb.every_n_epochs = 3
    assert cb.state_key != key and cb.state_key == cb._generate_state_key(**cb._state_args())
    embedding = trainviz.EmbeddingCallback(layers="a")
    before = embedding.state_key
    embedding.requested_probe_size = 100
    assert embedding.state_key == trainviz.EmbeddingCallback(layers="a", probe_size=100).state_key != before


def test_two_instances_coexist_in_checkpoints_and_logs(tmp_path, tiny_dm, _fit):
    a, b = trainviz.DynamicsCallback(probe_size=12), trainviz.DynamicsCallback(probe_size=24, log_name="dynamics_big")
    assert a.state_key != b.state_key
    _fit(tmp_path, [a, b], tiny_dm, epochs=1)
    assert _artifact_epochs(tmp_path, "dynamics") == [0] and _artifact_epochs(tmp_path, "dynamics_big") == [0]
    with pytest.raises(ValueError, match="log_name"):
        trainviz.DynamicsCallback(log_name="a/b")


@pytest.mark.parametrize("preset", sorted((ROOT / "callbacks").glob("*.yaml")), ids=lambda p: p.name)
def test_yaml_presets_parse_with_lightning_cli(preset, tmp_path, monkeypatch):
    import sys

    sys.path.insert(0, str(ROOT / "examples"))
    from cli import main

    monkeypatch.chdir(tmp_path)
    import yaml

    config = yaml.safe_load(preset.read_text())
    model = [] if "model" in config else ["--model", "trainviz.models.ClassMapClassifier"]
    cli = main(args=["--config", str(preset), *model, "--trainer.logger", "false"], run=False)
    names = {type(cb).__name__ for cb in cli.trainer.callbacks}
    wanted = {c["class_path"].split(".")[-1] for c in config["trainer"]["callbacks"]}
    assert wanted <= names


@pytest.mark.slow
def test_ddp_two_cpu_processes_write_each_artifact_once(tmp_path, tiny_dm, all_callbacks, demo_model, make_trainer, pl):
    callbacks = all_callbacks()
    pl.seed_everything(0, verbose=False)
    trainer = make_trainer(tmp_path, callbacks, max_epochs=2, strategy="ddp_spawn", devices=2, deterministic=False)
    trainer.fit(demo_model(), tiny_dm)
    log_dir = tmp_path
    for cb in callbacks:
        if isinstance(cb, ProbeCallback):
            assert _artifact_epochs(log_dir, cb.name) == [0, 1]
    records = [
        json.loads(line) for line in (log_dir / "trainviz" / "dynamics" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in records] == [0, 1]
    assert len((log_dir / "trainviz" / "manifest" / "runs.jsonl").read_text().splitlines()) == 1
    # every artifact write goes through a store that signs the folder once per writing process: rank 1 wrote none
    from trainviz.sinks.artifacts import ArtifactStore

    assert len(ArtifactStore(log_dir / "trainviz").writers()) == 1


@pytest.mark.parametrize(
    "trainer_kwargs, expected",
    [
        ({"val_check_interval": 0.5}, [0, 1, 2]),  # two validations per epoch: one run, at the epoch's end
        ({"check_val_every_n_epoch": 2}, [0, 1, 2]),  # epochs without validation still run
        ({"limit_val_batches": 0}, [0, 1, 2]),  # no validation at all
    ],
)
def test_cadence_follows_training_epochs_not_validation(tmp_path, tiny_dm, trainer_kwargs, expected, _fit):
    cb = trainviz.DynamicsCallback(probe_size=12)
    _, trainer = _fit(tmp_path, [cb], tiny_dm, epochs=3, **trainer_kwargs)
    assert cb.done_epochs == expected
    # the run of the last epoch saw the final weights
    final = json.loads((tmp_path / "trainviz" / "dynamics" / "metrics.jsonl").read_text().splitlines()[-1])
    model = trainer.lightning_module
    probe = cb.probe
    with torch.no_grad():
        model.eval()
        acc = (model(probe.images).argmax(1) == probe.labels).double().mean().item()
    assert final["epoch"] == 2 and final["accuracy"] == pytest.approx(acc)


def test_fast_dev_run_writes_nothing(tmp_path, tiny_dm, monkeypatch, all_callbacks, demo_model, pl):
    monkeypatch.chdir(tmp_path)
    cbs = all_callbacks()
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        fast_dev_run=True, accelerator="cpu", callbacks=cbs, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(demo_model(), tiny_dm)
    assert list(tmp_path.iterdir()) == []
    assert all(cb.failures == 0 for cb in cbs if isinstance(cb, ProbeCallback))


def test_model_built_in_configure_model_is_checked_at_fit_start(tmp_path, tiny_dm, make_trainer, pl):
    from trainviz.models import DemoClassifier, SmallCNN

    class Lazy(DemoClassifier):
        def _build_net(self):
            return None

        def configure_model(self):
            if self.net is None:
                self.net = SmallCNN(6, 3)

    cb = trainviz.CAMCallback(layers=["net.features"], probe_size=12, deletion_steps=2)
    pl.seed_everything(0, verbose=False)
    make_trainer(tmp_path, [cb], max_epochs=1).fit(Lazy(), tiny_dm)
    assert cb.done_epochs == [0] and cb.failures == 0
    bad = trainviz.CAMCallback(layers=["net.featurez"], probe_size=12)
    trainer = make_trainer(tmp_path / "bad", [bad], max_epochs=1)
    with pytest.raises(ValueError, match="net.featurez"):
        trainer.fit(Lazy(), tiny_dm)
    assert trainer.global_step == 0


def test_probe_draw_does_not_consume_the_training_rng(tmp_path, demo_model, make_trainer, pl):
    """Reading probe items may run random augmentations; the training stream must not notice."""
    from torch.utils.data import DataLoader, Dataset

    class Flipping(Dataset):
        def __init__(self, n):
            g = torch.Generator().manual_seed(0)
            self.x, self.y = torch.rand(n, 3, 16, 16, generator=g), torch.arange(n) % 6

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            x = self.x[i].flip(-1) if torch.rand(()) < 0.5 else self.x[i]  # global RNG, like torchvision transforms
            return x, self.y[i]

    def fit(callbacks, root):
        pl.seed_everything(0, verbose=False)
        model = demo_model()
        data = Flipping(48)
        make_trainer(root, callbacks, max_epochs=1).fit(
            model,
            DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0)),
            DataLoader(data, batch_size=16),
        )
        return model, torch.rand(3)

    plain, rng_plain = fit([], tmp_path / "a")
    probed, rng_probed = fit([trainviz.DynamicsCallback(probe_size=12, split="train")], tmp_path / "b")
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), probed.state_dict().values()))
    assert torch.equal(rng_plain, rng_probed)


def test_resume_from_an_earlier_checkpoint_drops_abandoned_epochs_and_warns_again(
    tmp_path, tiny_dm, monkeypatch, demo_model, make_trainer, pl
):
    from trainviz import DynamicsCallback

    ckpt_dir = tmp_path / "ckpt"
    pl.seed_everything(0, verbose=False)
    first = DynamicsCallback(probe_size=12)
    trainer = make_trainer(
        tmp_path,
        [first, pl.callbacks.ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1, filename="{epoch}")],
        max_epochs=3,
        enable_checkpointing=True,
    )
    trainer.fit(demo_model(), tiny_dm)
    assert _artifact_epochs(tmp_path, "dynamics") == [0, 1, 2]

    def boom(self, pl_module, group, state):
        raise ValueError("late failure")

    monkeypatch.setattr(DynamicsCallback, "_compute", boom)
    second = DynamicsCallback(probe_size=12)
    trainer = make_trainer(tmp_path, [second], max_epochs=2, enable_checkpointing=True)
    with pytest.warns(UserWarning, match="late failure"):  # warns again in the new process, once
        trainer.fit(demo_model(), tiny_dm, ckpt_path=str(ckpt_dir / "epoch=0.ckpt"))
    second.sink.flush()
    assert _artifact_epochs(tmp_path, "dynamics") == [0]
    records = [
        json.loads(line)["epoch"]
        for line in (tmp_path / "trainviz" / "dynamics" / "metrics.jsonl").read_text().splitlines()
    ]
    assert records == [0]


def test_default_callbacks_options():
    names = [type(cb).__name__ for cb in trainviz.default_callbacks(cam=False, decoder_maps=True)]
    assert "CAMCallback" not in names and "DecoderMapCallback" in names
    with pytest.raises(ValueError, match="valid names"):
        trainviz.default_callbacks(camm={})
    with pytest.raises(ValueError, match="dict of options"):
        trainviz.default_callbacks(cam=3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["32-true", "16-mixed"])
def test_full_suite_on_the_gpu(tmp_path, tiny_dm, precision, all_callbacks, demo_model, make_trainer, pl):
    callbacks = all_callbacks()
    pl.seed_everything(0, verbose=False)
    trainer = make_trainer(
        tmp_path, callbacks, max_epochs=2, accelerator="gpu", precision=precision, deterministic=False
    )
    trainer.fit(demo_model(), tiny_dm)
    for cb in callbacks:
        if isinstance(cb, ProbeCallback):
            assert cb.done_epochs == [0, 1] and cb.failures == 0, type(cb).__name__
            assert cb._device_probe.images.is_cuda
