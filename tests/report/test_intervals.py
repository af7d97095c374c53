"""Wilson intervals and low-count classes in summary.json and in the report page, from hand-built records
whose counts are known: equal to scipy's intervals, the flag only below 10 images, old records without
counts still building."""

from __future__ import annotations

import json

import handmade
import numpy as np
import pytest
from scipy.stats import binomtest

from trainviz.probes.robustness_names import NAMES
from trainviz.report import build_report, proportion_interval, report_summary, summary_from_record


def scipy_ci(k: int, n: int) -> list[float]:
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return [float(ci.low), float(ci.high)]


def built(tmp_path, rec=None):
    page = build_report(handmade.write_run(tmp_path / "run", rec))
    return page.read_text(), json.loads((page.parent / "summary.json").read_text())


def test_summary_intervals_equal_scipy_for_the_records_counts(tmp_path):
    _, summary = built(tmp_path)
    n = handmade.N
    expected = {"clean_accuracy": scipy_ci(sum(handmade.CLEAN), n)}
    expected |= {f"corruption_accuracy/{c}/s{s}": scipy_ci(sum(k), n) for (c, s), k in handmade.TABLE.items()}
    expected |= {"fgsm_accuracy@0.0078": scipy_ci(5, n), "fgsm_accuracy@0.0157": scipy_ci(0, n)}
    # no interval on means over severities or corruptions; each under its name and its older name (issue 18)
    expected |= {NAMES.canonical(k): v for k, v in expected.items()}
    assert set(summary["intervals"]) == set(expected)
    assert {"clean/accuracy", "accuracy/fog/s3", "fgsm/accuracy@0.0078"} <= set(expected)
    for key, ci in expected.items():
        assert summary["intervals"][key] == pytest.approx(ci, abs=1e-12), key
    assert summary["intervals"]["fgsm_accuracy@0.0157"][0] == 0.0  # k = 0
    # the metrics themselves are unchanged, at the top level
    assert {k: v for k, v in summary.items() if k not in ("intervals", "probe")} == pytest.approx(
        summary_from_record(handmade.record())
    )


@pytest.mark.parametrize("k, n", [(0, 1), (1, 1), (0, 24), (24, 24), (7, 24), (48, 64), (1, 3), (63, 64), (500, 1000)])
def test_proportion_interval_equals_scipy(k, n):
    assert list(proportion_interval(k, n)) == pytest.approx(scipy_ci(k, n), abs=1e-12)


def test_the_low_count_flag_is_for_classes_under_10_images(tmp_path):
    text, summary = built(tmp_path)
    assert summary["probe"] == {
        "n": 20,
        "class_counts": {"disc": 12, "square": 8},
        "low_count_classes": ["square"],
        "low_count_threshold": 10,
    }
    assert '<p class="note low-count">\u2020 fewer than 10 probe images: square (8);' in text
    assert '"square \\u2020"' in text and '"disc \\u2020"' not in text  # the marker on the figure's axis label

    for counts, low in (([10, 10], []), ([10, 9], ["square"]), ([9, 11], ["disc"])):
        rec = handmade.record(class_counts=counts)
        assert report_summary(rec)["probe"]["low_count_classes"] == low, counts
    text, summary = built(tmp_path / "enough", handmade.record(class_counts=[10, 10]))
    assert summary["probe"]["low_count_classes"] == []
    assert 'class="note low-count"' not in text and "\\u2020" not in text


def test_the_page_shows_the_intervals(tmp_path):
    text, _ = built(tmp_path)
    lo, hi = scipy_ci(15, 20)
    assert f"<th>clean/accuracy</th><td>0.75  95% CI [{lo:.3f}, {hi:.3f}]</td>" in text  # headline (issue 18: one name)
    lo, hi = scipy_ci(8, 20)
    assert f"<td>0.400 <span class=ci>[{lo:.3f}, {hi:.3f}]</span></td>" in text  # table: fog at severity 3
    assert f'"[{lo:.3f}, {hi:.3f}]"' in text  # the heat map's hover text of that cell
    assert "95% CI %{text}" in text
    lo, hi = scipy_ci(6, 8)  # the per-class drops' hover: square's clean accuracy 6 / 8
    assert f"clean accuracy 0.750 [{lo:.3f}, {hi:.3f}], 95% Wilson, on 8 images (fewer than 10)" in text
    assert "on the 20 probe images" in text


def test_an_old_record_without_counts_still_builds_without_intervals(tmp_path):
    text, summary = built(tmp_path, handmade.record(with_counts=False))
    assert "intervals" not in summary and "probe" not in summary
    assert summary == pytest.approx(summary_from_record(handmade.record()))
    assert "95% CI" not in text and "95% Wilson" not in text and "low-count" not in text.split("</style>")[1]
    assert "no probe counts" in text
    assert (
        text.count('class="plot" data-figure=') == 7
    )  # heat map, 3 curves, class drops, calibration bars, FGSM: all drawn


def test_the_torch_twin_agrees(tmp_path):
    torch = pytest.importorskip("torch")
    from trainviz.ops import wilson_interval

    k = np.array([0, 3, 12, 20])
    low, high = wilson_interval(torch.from_numpy(k), 20, z=1.959963984540054)
    for i, ki in enumerate(k):
        assert [float(low[i]), float(high[i])] == pytest.approx(list(proportion_interval(int(ki), 20)), abs=1e-12)
