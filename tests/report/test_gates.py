"""CI gates on summary.json: every metric's direction, --fail-under for higher-is-better metrics and
--fail-over for lower-is-better ones, passing and failing, a bound given the wrong way, unknown metrics and
metrics with no direction, with the exit codes of the real command line (in process and as a process)."""

from __future__ import annotations

import json
import subprocess
import sys

import handmade
import pytest

from trainviz.cli import main
from trainviz.probes.robustness_names import NAMES
from trainviz.report import (
    HIGHER_IS_BETTER,
    BoundDirectionError,
    UnknownMetricError,
    check_bounds,
    higher_is_better,
    summary_from_record,
)

# by hand, from the module's table: what a CI gate may assume about each kind of metric
HIGHER = [
    "clean_accuracy",
    "corruption_accuracy",
    "corruption_accuracy/fog",
    "corruption_accuracy/fog/s3",
    "fgsm_accuracy@0.0157",
    "flip_steps_mean",
    "flip_never_fraction",
    "cam_shift",
    "cam_shift/fog",
]
LOWER = [
    "mce",
    "relative_mce",
    "ce/fog",
    "relative_ce/fog",
    "clean_ece",
    "corruption_ece",
    "corruption_ece/fog",
    "clean_nll",
    "corruption_nll",
    "corruption_flip_rate",
    "corruption_flip_rate/fog",
]
NONE = ["epoch", "clean_confidence", "corruption_confidence"]


@pytest.fixture
def run(tmp_path):
    return handmade.write_run(tmp_path / "run")


def report(run, *args):
    return main(["report", str(run), *args])


def test_every_metric_has_its_direction():
    assert [higher_is_better(m) for m in HIGHER] == [True] * len(HIGHER)
    assert [higher_is_better(m) for m in LOWER] == [False] * len(LOWER)
    assert [higher_is_better(m) for m in NONE] == [None] * len(NONE)
    with pytest.raises(UnknownMetricError, match="'clean_happiness'"):
        higher_is_better("clean_happiness")


def test_every_key_of_a_summary_has_a_direction():
    """A metric added to summary_from_record without a direction fails here (issue 18: the name table, not the
    name's family, gives it)."""
    record = handmade.record()
    record["cam_shift"], record["corruptions"]["fog"]["cam_shift"] = 0.8, 0.7
    keys = summary_from_record(record)
    assert len(keys) > 25 and {"cam_shift", "cam_shift/fog", "fgsm_accuracy@0.0078", "ce/grayscale"} <= set(keys)
    for key in keys:
        assert key in NAMES and NAMES.metric(key).summarized, key
        assert NAMES.metric(key).name in HIGHER_IS_BETTER, key
        higher_is_better(key)


def test_one_name_per_metric_and_the_old_names_as_aliases():
    """Issue 18: the scalars and summary.json use one name per metric; summary.json keeps the older names."""
    from trainviz.probes.robustness_result import RobustnessResult

    result = RobustnessResult.from_record(handmade.record())
    scalars, summary = result.scalars(), summary_from_record(handmade.record())
    old_new = {
        "clean_accuracy": "clean/accuracy",
        "corruption_accuracy": "corrupted/accuracy",
        "corruption_accuracy/fog": "accuracy/fog",
        "corruption_accuracy/fog/s3": "accuracy/fog/s3",
        "corruption_flip_rate/fog": "flip_rate/fog",
        "fgsm_accuracy@0.0078": "fgsm/accuracy@0.0078",
        "flip_steps_mean": "flip/steps_mean",
        "mce": "mce",
    }
    for old, new in old_new.items():
        assert NAMES.canonical(old) == new and NAMES.canonical(new) == new
        assert summary[old] == summary[new], old
        if NAMES.metric(new).logged:
            assert scalars[new] == pytest.approx(summary[new]), new  # the scalar of the same name, same number
    assert set(scalars) <= {k for k in summary if NAMES.canonical(k) == k} | {"adversarial/distance_mean"}
    for metric in NAMES:
        assert metric.description and metric.higher_is_better in (True, False, None)


def test_gates_take_the_old_and_the_new_names_on_old_and_new_summaries(run, capsys):
    new = summary_from_record(handmade.record())
    old = {k: v for k, v in new.items() if NAMES.canonical(k) != k or k in ("mce", "relative_mce", "epoch")}
    assert "clean/accuracy" not in old and "clean_accuracy" in old  # a summary.json written before issue 18
    for summary in (new, old):
        assert check_bounds(summary, fail_over={"mce": 0.3}) == ["mce = 0.35 is above 0.3"]
        assert check_bounds(summary, {"clean_accuracy": 0.8}) == ["clean_accuracy = 0.75 is below 0.8"]
        assert check_bounds(summary, {"clean/accuracy": 0.8}) == ["clean/accuracy = 0.75 is below 0.8"]
        assert check_bounds(summary, {"accuracy/fog/s3": 0.4, "corruption_accuracy/fog/s3": 0.4}) == []
        with pytest.raises(BoundDirectionError, match="flip_rate/fog is lower-is-better"):
            check_bounds(summary, {"flip_rate/fog": 0.5})
    assert report(run, "--fail-over", "mce=0.3") == 1
    assert report(run, "--fail-under", "fgsm/accuracy@0.0078=0.2", "fgsm_accuracy@0.0078=0.2") == 0
    assert report(run, "--fail-under", "corrupted/accuracy=0.6") == 1
    assert "FAIL corrupted/accuracy = 0.55 is below 0.6" in capsys.readouterr().err


def test_check_bounds_each_direction_passes_and_fails():
    summary = {"clean_accuracy": 0.75, "mce": 0.35, "intervals": {"clean_accuracy": [0.5, 0.9]}, "probe": {"n": 20}}
    assert check_bounds(summary, {"clean_accuracy": 0.7}, {"mce": 0.4}) == []
    assert check_bounds(summary, {"clean_accuracy": 0.75}, {"mce": 0.35}) == []  # a bound itself passes
    assert check_bounds(summary, {"clean_accuracy": 0.8}) == ["clean_accuracy = 0.75 is below 0.8"]
    assert check_bounds(summary, fail_over={"mce": 0.3}) == ["mce = 0.35 is above 0.3"]
    with pytest.raises(BoundDirectionError, match="mce is lower-is-better.*use --fail-over mce=0.3"):
        check_bounds(summary, {"mce": 0.3})  # before the fix this passed silently (0.35 is not below 0.3)
    with pytest.raises(UnknownMetricError, match="'intervals'"):
        check_bounds(summary, {"intervals": 0.5})  # summary.json's objects are not metrics


def test_fail_under_passes_and_fails_on_higher_is_better_metrics(run, capsys):
    # clean accuracy 15 / 20, fog at severity 3 8 / 20, FGSM at 2/255 5 / 20 (handmade's counts)
    assert (
        report(run, "--fail-under", "clean_accuracy=0.7", "corruption_accuracy/fog/s3=0.4", "fgsm_accuracy@0.0078=0.2")
        == 0
    )
    assert "3 bound(s) hold" in capsys.readouterr().out
    assert report(run, "--fail-under", "clean_accuracy=0.8") == 1
    assert "FAIL clean_accuracy = 0.75 is below 0.8" in capsys.readouterr().err
    assert report(run, "--fail-under", "clean_accuracy=0.7", "corruption_accuracy/fog/s3=0.41") == 1
    err = capsys.readouterr().err
    assert "corruption_accuracy/fog/s3 = 0.4 is below 0.41" in err and "clean_accuracy" not in err


def test_fail_over_passes_and_fails_on_lower_is_better_metrics(run, capsys):
    # mce 0.35, relative mce 0.2, ce/fog = 1 - mean fog accuracy = 1 - 0.475
    assert report(run, "--fail-over", "mce=0.35", "relative_mce=0.3", "ce/fog=0.6", "clean_ece=0.1") == 0
    capsys.readouterr()
    assert report(run, "--fail-over", "mce=0.3") == 1
    assert "FAIL mce = 0.35 is above 0.3" in capsys.readouterr().err
    assert report(run, "--fail-over", "ce/fog=0.5", "--fail-under", "clean_accuracy=0.5") == 1
    err = capsys.readouterr().err
    assert "ce/fog = 0.525 is above 0.5" in err and "clean_accuracy" not in err


def test_a_bound_given_the_wrong_way_is_a_usage_error(run, capsys):
    assert report(run, "--fail-under", "mce=0.3") == 2  # the old gate: it passed here, mCE 0.35 being above 0.3
    err = capsys.readouterr().err
    assert "mce is lower-is-better" in err and "use --fail-over mce=0.3" in err and "FAIL" not in err
    assert report(run, "--fail-over", "clean_accuracy=0.8") == 2
    err = capsys.readouterr().err
    assert "clean_accuracy is higher-is-better" in err and "use --fail-under clean_accuracy=0.8" in err
    assert report(run, "--fail-over", "corruption_accuracy/fog/s1=0.9", "--fail-under", "ce/fog=0.1") == 2
    err = capsys.readouterr().err  # both named, each with its direction and flag
    assert "corruption_accuracy/fog/s1 is higher-is-better" in err and "ce/fog is lower-is-better" in err
    for flag in ("--fail-under", "--fail-over"):
        assert report(run, flag, "clean_confidence=0.5") == 2
        assert "clean_confidence cannot be gated" in capsys.readouterr().err


def test_unknown_metrics_list_close_matches(run, capsys):
    assert report(run, "--fail-under", "clean_acuracy=0.5") == 2
    assert "Metric 'clean_acuracy' is unknown; close matches: clean_accuracy" in capsys.readouterr().err
    assert report(run, "--fail-over", "mcee=0.3", "--fail-under", "mce=0.3") == 2  # all bad bounds at once
    err = capsys.readouterr().err
    assert "'mcee' is unknown; close matches: mce" in err and "use --fail-over mce=0.3" in err
    assert report(run, "--fail-under", "cam_shift=0.5") == 2  # a real metric this run did not measure
    assert "'cam_shift' is not in this run's summary" in capsys.readouterr().err
    assert report(run, "--fail-under", "clean_accuracy") == 2
    assert "Expected METRIC=VALUE" in capsys.readouterr().err


def test_exit_codes_of_the_command_as_a_process(run):
    def exit_code(*args):
        done = subprocess.run(
            [sys.executable, "-m", "trainviz.cli", "report", str(run), *args],
            capture_output=True,
            text=True,
            timeout=300,
        )
        return done.returncode, done.stderr

    code, err = exit_code("--fail-under", "clean_accuracy=0.7", "--fail-over", "mce=0.4")
    assert code == 0 and "FAIL" not in err and "error" not in err
    code, err = exit_code("--fail-over", "mce=0.3")
    assert code == 1 and "mce = 0.35 is above 0.3" in err
    code, err = exit_code("--fail-under", "mce=0.3")
    assert code == 2 and "use --fail-over mce=0.3" in err
    summary = json.loads((run / "trainviz" / "report" / "summary.json").read_text())
    assert summary["mce"] == handmade.MCE
