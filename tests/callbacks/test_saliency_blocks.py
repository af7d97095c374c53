"""The saliency callback's sanity cascade by blocks (the default since issue 20), by given groups, and the checks
of its options (in ``__init__``, and the layer names at setup, before the first epoch)."""

from __future__ import annotations

import json

import pytest
import torch

from trainviz.callbacks.saliency import SaliencyCallback

SMALL = dict(
    methods=["gradient"], occlusion=False, probe_size=6, deletion_steps=2, sanity_images=2, n_grid=2, strict=True
)


def _records(root) -> list[dict]:
    (path,) = root.rglob("saliency/metrics.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_default_cascade_goes_by_blocks_and_is_recorded(tmp_path, tiny_dm, make_trainer):
    from trainviz.models import DemoClassifier

    torch.manual_seed(0)
    cb = SaliencyCallback(**SMALL)
    assert cb.sanity_steps == "blocks"
    make_trainer(tmp_path, [cb], max_epochs=1, limit_train_batches=1).fit(DemoClassifier(num_classes=6), tiny_dm)
    blocks = ["net.fc", "net.features.2", "net.features.1", "net.features.0"]
    assert cb._sanity_layers == blocks  # 4 steps against 7 layers with parameters
    (record,) = _records(tmp_path)
    assert record["sanity_layers"] == blocks and record["sanity_steps"] == "blocks"
    assert record["sanity_groups"]["net.features.2"] == ["net.features.2.1", "net.features.2.0"]
    assert set(record["sanity"]["gradient"]) == set(blocks)  # (the record's keys are sorted)


def test_given_groups_run_as_steps_and_a_wrong_name_fails_at_setup(tmp_path, tiny_dm, make_trainer):
    from trainviz.models import DemoClassifier

    cb = SaliencyCallback(sanity_groups=[["net.fc"], ["net.features.2", "net.features.1"], ["net"]], **SMALL)
    make_trainer(tmp_path, [cb], max_epochs=1, limit_train_batches=1).fit(DemoClassifier(num_classes=6), tiny_dm)
    (record,) = _records(tmp_path)
    assert record["sanity_steps"] == "groups"
    assert record["sanity_layers"] == ["net.fc", "net.features.2+net.features.1", "net"]
    assert record["sanity_groups"]["net"] == ["net.features.0.1", "net.features.0.0"]
    wrong = SaliencyCallback(sanity_groups=[["fc"]], **SMALL)
    trainer = make_trainer(tmp_path, [wrong], max_epochs=1, limit_train_batches=1, default_root_dir=str(tmp_path / "b"))
    with pytest.raises(ValueError, match=r"'fc' of the sanity groups is not a module.*\['net.fc', 'net.features.2'"):
        trainer.fit(DemoClassifier(num_classes=6), tiny_dm)
    assert wrong.done_epochs == []


def test_layers_mode_keeps_one_step_per_layer():
    cb = SaliencyCallback(sanity_steps="layers", **SMALL)
    assert cb.sanity_steps == "layers" and cb.sanity_groups is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sanity_steps": "block"}, "`sanity_steps`"),
        ({"sanity_groups": "net.fc"}, "`sanity_groups` to be a non-empty list of non-empty lists"),
        ({"sanity_groups": []}, "`sanity_groups` to be a non-empty list"),
        ({"sanity_groups": [[]]}, "got the group"),
        ({"sanity_groups": [["net.fc", 3]]}, "got the group"),
        ({"sanity_groups": [["net.fc"], ["net.fc"]]}, "each name once"),
        ({"sanity_groups": [["net.fc"]], "sanity_steps": "layers"}, "with sanity_steps='blocks'"),
    ],
)
def test_sanity_options_are_checked_in_init(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SaliencyCallback(**kwargs)
