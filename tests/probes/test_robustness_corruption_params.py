"""The robustness probe's corruption cache (uint8 rows on the host, streamed a batch at a time), its parameter
set (by the probe images' size, or forced) and the mCE beside a reference run's normalised one."""

from __future__ import annotations

import json

import pytest
import torch

from trainviz.core.probeset import ProbeSet
from trainviz.data import Normalization
from trainviz.models import DemoClassifier
from trainviz.ops.corruptions import corrupt
from trainviz.probes import robustness as probes


def _probe(size: int = 32, n: int = 10) -> ProbeSet:
    torch.manual_seed(0)
    return ProbeSet(images=torch.rand(n, 3, size, size), labels=torch.arange(n) % 3, ids=torch.arange(n))


NORM = Normalization(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
ROWS = [("grayscale", 1), ("gaussian_noise", 2), ("fog", 3), ("contrast", 5)]


def test_cached_rows_are_uint8_on_the_host_and_match_the_float_path():
    probe = _probe()
    probe = ProbeSet(NORM.normalize(probe.images), probe.labels, probe.ids)
    cache = probes.CorruptionCache()
    inputs, seconds = cache.inputs(probe, ROWS, NORM, 0, source=probe)
    assert seconds is not None and len(cache) == len(ROWS)
    assert all(b.dtype == torch.uint8 and b.device.type == "cpu" for b in inputs.blocks)
    pixels = NORM.denormalize(probe.images)
    float_path = torch.cat([probe.images, *(NORM.normalize(corrupt(pixels, n, s, seed=0)) for n, s in ROWS)])
    streamed = inputs.tensor()
    assert streamed.dtype == probe.images.dtype and torch.equal(streamed[:10], probe.images)  # clean as is
    # rounding to 8 bits moves a pixel by at most 1/510, i.e. 1/(510 std) in model units
    tolerance = 0.5 / 255 / min(NORM.std) + 1e-6
    assert (streamed - float_path).abs().max() <= tolerance
    assert (streamed - float_path).abs().max() > 0  # the float path is not what is served
    # batches that straddle blocks give the same images as the whole, and the model's numbers agree
    assert torch.equal(torch.cat([inputs[a : a + 7] for a in range(0, len(inputs), 7)]), streamed)
    idx = torch.tensor([3, 17, 45])
    assert torch.equal(inputs.index_select(0, idx), streamed[idx])
    model = DemoClassifier(num_classes=3).eval()
    config = probes.RobustnessConfig(NORM, batch_size=4)
    streamed_result = probes.compute(model, probe, inputs, probes.Plan(ROWS, False, False), config, 0)
    float_result = probes.compute(model, probe, float_path, probes.Plan(ROWS, False, False), config, 0)
    for a, b in zip(streamed_result.table, float_result.table):
        assert a.confidence == pytest.approx(b.confidence, abs=1e-3) and a.nll == pytest.approx(b.nll, abs=1e-3)
    assert streamed_result.clean == float_result.clean


def test_the_cache_keys_the_parameter_set():
    probe = _probe()
    cache = probes.CorruptionCache()
    identity = Normalization.identity(3)
    cifar, _ = cache.inputs(probe, [("gaussian_noise", 5)], identity, 0, source=probe)
    imagenet, seconds = cache.inputs(probe, [("gaussian_noise", 5)], identity, 0, source=probe, param_set="imagenet-c")
    assert seconds is not None  # another set: corrupted again
    change = [(x.tensor()[10:] - probe.images).std().item() for x in (cifar, imagenet)]
    assert change[1] > 2 * change[0]  # sigma .38 against .10


def test_mce_keeps_its_default_reference_and_a_reference_run_adds_the_normalised_one(tmp_path):
    probe = _probe()
    rows = [("grayscale", 1), ("fog", 1)]
    ref = {"clean_accuracy": 0.9, "corruption_accuracy/grayscale/s1": 0.5, "corruption_accuracy/fog/s1": 0.8}
    (tmp_path / "summary.json").write_text(json.dumps(ref))
    reference = probes.load_reference(tmp_path / "summary.json", rows)
    model = DemoClassifier(num_classes=3).eval()
    inputs, _ = probes.CorruptionCache().inputs(probe, rows, Normalization.identity(3), 0, source=probe)
    plain_config = probes.RobustnessConfig(Normalization.identity(3), param_set="cifar10-c")
    plain = probes.compute(model, probe, inputs, probes.Plan(rows, False, False), plain_config, 0)
    config = probes.RobustnessConfig(Normalization.identity(3), reference=reference, param_set="cifar10-c")
    result = probes.compute(model, probe, inputs, probes.Plan(rows, False, False), config, 0)
    assert result.mce == plain.mce and result.relative_mce == plain.relative_mce  # the default reference
    errors = {name: 1 - stats.accuracy for name, stats in result.corruptions.items()}
    assert result.corruptions["fog"].normalized_ce == pytest.approx(errors["fog"] / 0.2)
    assert result.normalized_mce == pytest.approx((errors["grayscale"] / 0.5 + errors["fog"] / 0.2) / 2)
    assert plain.normalized_mce is None and "normalized_mce" not in plain.summary()
    summary, record = result.summary(), result.record()
    assert summary["normalized_ce/grayscale"] == pytest.approx(errors["grayscale"] / 0.5)
    assert record["normalized_mce_reference"] == str(tmp_path / "summary.json")
    assert type(result).from_record(record).record() == record


def test_the_report_states_the_set_the_protocol_the_mce_reference_and_frost(tmp_path):
    from trainviz.probes import robustness_report as builder  # issue 18: robustness draws its own part

    probe = _probe()
    rows = [("frost", 1), ("fog", 1)]
    ref = {"clean_accuracy": 0.9, "corruption_accuracy/frost/s1": 0.5, "corruption_accuracy/fog/s1": 0.8}
    (tmp_path / "summary.json").write_text(json.dumps(ref))
    config = probes.RobustnessConfig(
        Normalization.identity(3),
        reference=probes.load_reference(tmp_path / "summary.json", rows),
        param_set="imagenet-c",
    )
    inputs, _ = probes.CorruptionCache().inputs(probe, rows, config.norm, 0, source=probe, param_set="imagenet-c")
    result = probes.compute(
        DemoClassifier(num_classes=3).eval(), probe, inputs, probes.Plan(rows, False, False), config, 0
    )
    run = builder._Run([type(result).from_record(result.record())])
    head = builder._headline(run, result.report_summary())
    assert "imagenet-c set" in head and "corrupted on the fly" in head and "JPEG-saved" in head
    assert "mCE and relative mCE: unnormalised" in head and "Normalised mCE: reference run" in head
    assert "normalized_mce" in head
    table = builder._accuracy_table(run.latest, {})
    frost_row = next(line for line in table.split("<tr>") if line.startswith("<th>frost"))
    assert "approximation" in frost_row and "approximation" not in table.split("<th>fog")[1]


def test_a_reference_made_with_another_parameter_set_is_refused(tmp_path):
    rows = [("grayscale", 1), ("fog", 1)]
    ref = {"clean_accuracy": 0.9, "corruption_accuracy/grayscale/s1": 0.5, "corruption_accuracy/fog/s1": 0.8}
    (tmp_path / "old.json").write_text(json.dumps(ref))  # written before the sets existed: taken as it is
    assert probes.load_reference(tmp_path / "old.json", rows, "imagenet-c").clean_error == pytest.approx(0.1)
    (tmp_path / "cifar.json").write_text(json.dumps({**ref, "protocol": {"corruption_params": "cifar10-c"}}))
    assert probes.load_reference(tmp_path / "cifar.json", rows, "cifar10-c").clean_error == pytest.approx(0.1)
    with pytest.raises(ValueError, match="'cifar10-c' parameters and this run uses 'imagenet-c'.*corruption_params="):
        probes.load_reference(tmp_path / "cifar.json", rows, "imagenet-c")
