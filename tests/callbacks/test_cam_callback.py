"""CAMCallback under real fits on small shapes data: tags, artifacts, hygiene, no trace, setup checks, state."""

from __future__ import annotations

import warnings

import pytest
import pytorch_lightning as pl
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainviz.callbacks.cam import CAMCallback
from trainviz.core.hooks import count_hooks
from trainviz.core.probeset import ProbeSet

LAYERS = ["net.features.1", "net.features"]
METRICS = ["average_drop", "increase_in_confidence", "deletion_auc"]


DM_SIZES = (240, 120, 60)  # the `dm` fixture's n_train, n_val, batch_size


@pytest.fixture(scope="session")
def fit(demo_model, make_trainer):
    def fit(root, callbacks, dm, epochs=2):
        pl.seed_everything(0, verbose=False)
        model = demo_model()
        trainer = make_trainer(root, callbacks, max_epochs=epochs)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*(does not have many workers|number of training batches).*")
            trainer.fit(model, dm)
        return model, trainer

    return fit


def events(root):
    acc = EventAccumulator(str(root), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_two_epoch_fit_writes_every_key_and_artifact(tmp_path, dm, fit):
    cb = CAMCallback(layers=LAYERS, guided=True, probe_size=24, n_grid=8, n_tracked=3, deletion_steps=4, strict=True)
    model, _ = fit(tmp_path, [cb], dm)
    assert cb.done_epochs == [0, 1] and count_hooks(model) == 0
    acc = events(tmp_path)
    keys = [*LAYERS, "aggregate"]
    expected = {
        f"trainviz/cam/{k}/{m}"
        for k in keys
        for m in [*METRICS, "pointing_game", "energy_pointing_game", "drift_correlation"]
    }
    expected |= {"trainviz/cam/pointing_game_chance", "trainviz/cam/target_probability", "trainviz/cam/seconds"}
    assert {t for t in acc.Tags()["scalars"] if t.startswith("trainviz/")} == expected
    images = {f"trainviz/cam/{k}/overlay" for k in keys}
    images |= {
        "trainviz/cam/layers",
        "trainviz/cam/aggregate/class_mean",
        "trainviz/cam/aggregate/guided_grad_cam",
        "trainviz/cam/evolution",
    }
    assert set(acc.Tags()["images"]) == images
    assert [e.step for e in acc.Scalars("trainviz/cam/aggregate/pointing_game")] == [0, 1]
    assert [e.step for e in acc.Scalars("trainviz/cam/aggregate/drift_correlation")] == [1]  # needs a previous run
    assert [e.step for e in acc.Images("trainviz/cam/evolution")] == [1]
    for name in ["pointing_game", "energy_pointing_game", *METRICS]:
        assert all(0 <= e.value <= 1 for e in acc.Scalars(f"trainviz/cam/aggregate/{name}"))
    chance = cb.probe.masks.flatten(1).float().mean(1).mean().item()
    assert acc.Scalars("trainviz/cam/pointing_game_chance")[0].value == pytest.approx(chance, rel=1e-5)

    store = cb.sink.store
    assert [r["epoch"] for r in store.read_jsonl("cam/metrics.jsonl")] == [0, 1]
    arrays = store.read_npz("cam/epoch_0001/maps.npz")
    assert arrays["maps/aggregate"].shape == (24, 32, 32) and arrays["deletion_curve/net.features"].shape == (24, 5)
    assert arrays["ids"].tolist() == cb.probe.ids.tolist()
    for key in keys:
        assert {
            f"pointing_hit/{key}",
            f"energy/{key}",
            f"drop/{key}",
            f"increase/{key}",
            f"deletion_auc/{key}",
            f"drift/{key}",
        } <= set(arrays)
    evolution = store.read_npz("cam/epoch_0001/evolution.npz")
    assert evolution["maps"].shape == (2, 3, 32, 32) and evolution["epochs"].tolist() == [0, 1]
    assert (store.root / "cam" / "epoch_0001" / "evolution.png").exists()
    assert (store.root / "cam" / "epoch_0000" / "net.features.1" / "overlay.png").exists()


def test_one_layer_cam_without_masks(tmp_path, dm, fit):
    dm.setup()
    images, labels = dm.val_set.images, dm.val_set.labels
    probe = ProbeSet(images[:18], labels[:18], torch.arange(18), masks=None, class_names=dm.class_names)
    cb = CAMCallback(method="cam", probe_data=probe, deletion_steps=4, strict=True)
    fit(tmp_path, [cb], dm, epochs=1)
    assert list(cb._layers) == ["net.features"]  # "auto": the last 4-D layer, before global average pooling
    tags = set(events(tmp_path).Tags()["scalars"])
    assert not any("pointing" in t for t in tags)
    record = cb.sink.store.read_jsonl("cam/metrics.jsonl")[0]
    for name in METRICS:  # with one layer the aggregate is that layer's map
        assert record[f"aggregate/{name}"] == record[f"net.features/{name}"]


def test_no_hooks_remain_after_a_probe_raised(tmp_path, dm, monkeypatch, fit):
    cb = CAMCallback(layers=LAYERS, guided=True, probe_size=12, deletion_steps=2)
    model, trainer = fit(tmp_path, [cb], dm, epochs=1)

    def explode(*_):
        raise RuntimeError("head exploded")

    monkeypatch.setattr(model.net.fc, "forward", explode)  # dies mid-forward, capture and guided hooks placed
    with pytest.warns(UserWarning, match="CAMCallback probe failed.*net.features.1.*head exploded"):
        cb.run(trainer, model, 7)
    assert cb.failures == 1 and 7 not in cb.done_epochs
    assert count_hooks(model) == 0


def test_run_inside_inference_mode_leaves_batchnorm_and_flags(tmp_path, dm, fit):
    cb = CAMCallback(layers=LAYERS, method="gradcam++", guided=True, probe_size=12, deletion_steps=2, strict=True)
    model, trainer = fit(tmp_path, [cb], dm, epochs=1)
    model.train()
    model.net.features[1][1].eval()  # a frozen BatchNorm stays frozen
    flags = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        cb.run(trainer, model, 5)
    assert 5 in cb.done_epochs
    assert [m.training for m in model.modules()] == flags
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": ["net.features", "net.featurez"]}, "Layer 'net.featurez' not found.*'net.features"),
        ({"layers": ["net.features.1"], "method": "cam"}, "CAM does not apply at layer 'net.features.1'"),
        ({"layers": ["net.fc"]}, "Expected layer 'net.fc' to output feature maps"),
    ],
)
def test_bad_layers_fail_at_setup(tmp_path, dm, kwargs, message, demo_model, make_trainer):
    cb = CAMCallback(probe_size=12, **kwargs)
    trainer = make_trainer(tmp_path, [cb], max_epochs=1)
    with pytest.raises(ValueError, match=message):
        trainer.fit(demo_model(), dm)
    assert trainer.current_epoch == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": []}, "Expected `layers` to be a layer name"),
        ({"layers": ["a", "a"]}, "distinct names"),
        ({"method": "scorecam"}, "Expected `method` to be one of"),
        ({"aggregate": "sum"}, "Expected `aggregate` to be one of"),
        ({"target": "label"}, "Expected `target` to be one of 'true', 'predicted'"),
        ({"guided": 1}, "Expected `guided` to be a bool"),
        ({"n_grid": 0}, "Expected `n_grid` to be a positive int"),
        ({"n_tracked": -1}, "Expected `n_tracked` to be a positive int"),
        ({"fc_layer": "net.fc"}, "used with method='cam'"),
        ({"pointing_tolerance": -2}, "non-negative int"),
        ({"faithfulness_every": 0}, "Expected `faithfulness_every` to be a positive int, got 0"),
    ],
)
def test_arguments_are_checked_in_init(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CAMCallback(**kwargs)


def test_state_round_trip_keeps_the_evolution_history(tmp_path, dm, fit):
    cb = CAMCallback(layers=LAYERS, probe_size=12, n_tracked=2, deletion_steps=2, strict=True)
    fit(tmp_path, [cb], dm)
    state = cb.state_dict()
    resumed = CAMCallback(layers=LAYERS, probe_size=12, n_tracked=2)
    resumed.load_state_dict(state)
    assert [e for e, _ in resumed.history.runs] == [0, 1]
    for (_, a), (_, b) in zip(resumed.history.runs, cb.history.runs):
        assert torch.equal(a, b) and a.dtype == torch.float16 and a.shape == (2, 32, 32)
    assert set(resumed.history.previous) == {*LAYERS, "aggregate"}
    assert resumed.history.faithfulness_epochs == [0, 1]  # when the faithfulness scores are next due
    assert resumed.state_key == cb.state_key
    assert CAMCallback(layers=LAYERS, method="gradcam++").state_key != cb.state_key


def test_faithfulness_every_2_records_which_runs_have_the_scores(tmp_path, dm, fit):
    cb = CAMCallback(layers=LAYERS, probe_size=12, n_tracked=2, deletion_steps=2, faithfulness_every=2, strict=True)
    fit(tmp_path, [cb], dm, epochs=4)  # the last run without the scores writes the section
    assert cb.done_epochs == [0, 1, 2, 3]
    store = cb.sink.store
    records = store.read_jsonl("cam/metrics.jsonl")
    assert [(r["epoch"], r["faithfulness"]) for r in records] == [(0, True), (1, False), (2, True), (3, False)]
    assert ["aggregate/deletion_auc" in r for r in records] == [True, False, True, False]
    assert not any(k.rsplit("/", 1)[-1] in METRICS for k in records[1])  # absent, not null
    assert all(r["aggregate/pointing_game"] is not None for r in records)  # the maps and localisation every run
    assert "aggregate/drift_correlation" in records[1] and "aggregate/drift_correlation" in records[2]
    arrays = store.read_npz("cam/epoch_0001/maps.npz")
    assert "pointing_hit/aggregate" in arrays and not any(k.startswith(("drop/", "deletion_")) for k in arrays)
    assert "deletion_curve/aggregate" in store.read_npz("cam/epoch_0002/maps.npz")
    assert [e.step for e in events(tmp_path).Scalars("trainviz/cam/aggregate/deletion_auc")] == [0, 2]
    assert store.read_npz("cam/epoch_0003/evolution.npz")["epochs"].tolist() == [0, 1, 2, 3]
    assert cb.history.faithfulness_epochs == [0, 2]

    from trainviz.report.sections import curve_figure, discover, render_sections

    (section,) = [s for s in discover(store.root) if s.name == "cam"]  # written by the last run, without the scores
    curve = next(c for c in section.spec["curves"] if c["title"] == "Deletion AUC")
    figure = curve_figure(curve, section.records())
    assert [t["name"] for t in figure["data"]] == [*LAYERS, "aggregate"]
    assert [v is None for v in figure["data"][-1]["y"]] == [False, True, False, True]  # a gap where none ran
    _, html, _ = render_sections(store.root, tmp_path)
    cam = html[html.index('data-section="cam"') :]
    assert "Deletion AUC" in cam[: cam.index("</details>")]


def test_under_a_budget_the_faithfulness_scores_are_left_out_first(tmp_path, dm, fit):
    cb = CAMCallback(layers=LAYERS, probe_size=12, deletion_steps=2, budget=1e-6, strict=True)
    fit(tmp_path, [cb], dm, epochs=3)  # no credit: the first run whole, the middle skipped, the last the maps alone
    assert cb.done_epochs == [0, 2]
    records = cb.sink.store.read_jsonl("cam/metrics.jsonl")
    assert [(r["epoch"], r["faithfulness"]) for r in records] == [(0, True), (2, False)]
    assert "aggregate/deletion_auc" not in records[1] and "aggregate/pointing_game" in records[1]
    skips = cb.scheduler.ledgers["cam"].skips
    assert [(s["epoch"], s["what"]) for s in skips] == [(1, "run"), (2, "faithfulness")]
    assert "the faithfulness scores" in skips[1]["reason"] and "credit" in skips[1]["reason"]
