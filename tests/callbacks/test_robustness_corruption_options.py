"""RobustnessCallback's `corruption_params`: checked at init and resolved from the probe images' size."""

from __future__ import annotations

import pytest
import torch

from trainviz.callbacks.robustness import RobustnessCallback
from trainviz.core.probeset import ProbeSet
from trainviz.data import Normalization
from trainviz.models import DemoClassifier


def _probe(size: int = 32, n: int = 10) -> ProbeSet:
    torch.manual_seed(0)
    return ProbeSet(images=torch.rand(n, 3, size, size), labels=torch.arange(n) % 3, ids=torch.arange(n))


def test_corruption_params_is_checked_at_init_and_resolved_from_the_probe_size():
    with pytest.raises(ValueError, match="`corruption_params` to be 'auto' or one of cifar10-c, tinyimagenet-c"):
        RobustnessCallback(corruption_params="ImageNet-C")
    for size, forced, expected in ((32, "auto", "cifar10-c"), (64, "auto", "tinyimagenet-c"), (32, "imagenet-c", None)):
        cb = RobustnessCallback(corruptions=["contrast"], severities=[1], corruption_params=forced)
        cb.probe, cb.norm = _probe(size), Normalization.identity(3)
        cb._setup(None, DemoClassifier(num_classes=3))
        assert cb.prober.config.param_set == (expected or forced)
    assert RobustnessCallback()._state_args() == RobustnessCallback(corruption_params="auto")._state_args()
    assert RobustnessCallback()._state_args() != RobustnessCallback(corruption_params="imagenet-c")._state_args()
