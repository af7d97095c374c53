"""The one callback registry (trainviz.callbacks.registry) and the declarations each class makes: what
``default_callbacks``, ``BUDGET_SHARES``, the package exports, the demo, the presets and the suite-wide tests read.
Also: the shared options of ``default_callbacks`` are ProbeCallback's, and no process-wide registry is left."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import _support
import yaml

import trainviz
import trainviz.callbacks
from trainviz.callbacks.base import ProbeCallback
from trainviz.callbacks.registry import CALLBACKS, callback_classes
from trainviz.cli import demo_callbacks

ROOT = Path(__file__).resolve().parents[2]


def test_every_registered_class_declares_itself_once():
    classes = callback_classes()
    assert [cls.__name__ for cls in classes] == list(CALLBACKS)
    names = [cls.name for cls in classes]
    assert len(set(names)) == len(names) and names[0] == "manifest"
    probes = [cls for cls in classes if issubclass(cls, ProbeCallback)]
    for cls in probes:
        assert {"name", "budget_share", "needs_pixels"} <= set(vars(cls)), cls  # its own, not the base's
        assert 0 < cls.budget_share <= 1 and (cls.pixel_use != "") == cls.needs_pixels, cls
    assert trainviz.BUDGET_SHARES == {cls.name: cls.budget_share for cls in probes}
    assert {cls.name for cls in probes if cls.opt_in} == {"decoder_maps", "saliency", "maxact"}


def test_the_package_exports_and_default_callbacks_follow_the_registry():
    for name in CALLBACKS:
        assert getattr(trainviz, name) is getattr(trainviz.callbacks, name) and name in trainviz.__all__
    suite = trainviz.default_callbacks()
    assert [type(cb) for cb in suite] == [cls for cls in callback_classes() if not getattr(cls, "opt_in", False)]
    every = trainviz.default_callbacks(**{cls.name: True for cls in callback_classes()})
    assert [type(cb) for cb in every] == callback_classes()


def test_the_demo_and_the_suite_wide_tests_run_every_registered_callback_that_applies():
    registered = {cls.name for cls in callback_classes()}
    assert {cb.name for cb in demo_callbacks("classmap", small=True)} == registered
    assert {cb.name for cb in demo_callbacks("cnn", small=True)} == registered - {"decoder_maps"}
    assert {cb.name for cb in _support.all_callbacks("classmap")} == registered
    assert {cb.name for cb in _support.all_callbacks("cnn")} == registered - {"decoder_maps"}


def test_every_registered_callback_has_its_preset_and_full_names_only_registered_ones():
    for cls in callback_classes():
        config = yaml.safe_load((ROOT / "callbacks" / f"{cls.name}.yaml").read_text())
        assert [c["class_path"] for c in config["trainer"]["callbacks"]] == [f"trainviz.{cls.__name__}"]
    full = yaml.safe_load((ROOT / "callbacks" / "full.yaml").read_text())["trainer"]["callbacks"]
    listed = [c["class_path"].removeprefix("trainviz.") for c in full]
    assert set(listed) <= set(CALLBACKS)
    default = {cls.__name__ for cls in callback_classes() if not getattr(cls, "opt_in", False)}
    assert default <= set(listed)  # the default suite at least


def test_the_shared_options_of_default_callbacks_are_probe_callbacks_own():
    shared = inspect.signature(trainviz.default_callbacks).parameters
    own = inspect.signature(ProbeCallback.__init__).parameters
    for name, parameter in shared.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        assert name in own, name
        if name != "budget":  # the suite's budget has a default (0.1), a lone callback none
            assert parameter.default == own[name].default, name


def test_no_process_wide_registry_is_left():
    src = ROOT / "src" / "trainviz"
    found = [
        f"{path.relative_to(src)}: {match.group(0)}"
        for path in sorted(src.rglob("*.py"))
        for match in re.finditer(r"^_(SHARED|SCHEDULERS)\b.*$", path.read_text(), re.M)
    ]
    assert found == []
