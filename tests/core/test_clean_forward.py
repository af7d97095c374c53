"""The shared clean forward (trainviz.core.clean_forward): one forward of a probe set per model state, read by every
callback that probes the same images, bitwise what each one's own forward gives, never stale."""

from __future__ import annotations

import pytest
import torch
from _support import tiny_cnn
from torch import nn

from trainviz.core.clean_forward import CleanForward
from trainviz.core.contract import Share
from trainviz.core.hooks import count_hooks
from trainviz.core.outputs import LogitsModel
from trainviz.core.probeset import ProbeSet
from trainviz.ops.predict import predict_logits
from trainviz.probes.embedding import EmbeddingOptions, capture, pooler


def _probe(n: int = 10) -> ProbeSet:
    g = torch.Generator().manual_seed(1)
    return ProbeSet(images=torch.randn(n, 3, 8, 8, generator=g), labels=torch.arange(n) % 3, ids=torch.arange(n))


class _Counted(nn.Module):
    """The tiny CNN with a count of its forwards, and BatchNorm (a training forward moves its buffers)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_cnn()
        self.norm = nn.BatchNorm2d(3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(self.norm(x))


def _want_both(shared: CleanForward, key: str, model: LogitsModel, options: EmbeddingOptions) -> dict:
    layers = {"net.2": model.model.net[2], "net.3": model.model.net[3]}
    shared.want(key, "dynamics")
    shared.want(key, "embedding", layers, pooler(options, seed=3))
    return layers


def test_one_forward_serves_both_callbacks_bitwise_as_their_own():
    probe, model = _probe(), LogitsModel(_Counted().eval())
    options = EmbeddingOptions(batch_size=4, max_dim=5)  # 8 channels pooled to 5 dims: the seeded projection
    shared, key = CleanForward(), probe.fingerprint()
    layers = _want_both(shared, key, model, options)
    own_logits = predict_logits(model, probe.images, 4)
    own_features, own_embedding_logits = capture(model, layers, probe.images, options, seed=3)
    model.model.calls = 0

    logits, nothing = shared.run(model, Share.of(probe), key, 4, "dynamics")
    again, features = shared.run(model, Share.of(probe), key, 4, "embedding")
    assert model.model.calls == 3 and shared.forwards == 1 and shared.hits == 1  # 10 images in batches of 4, once
    assert nothing == {} and torch.equal(logits, own_logits) and torch.equal(again, own_embedding_logits)
    assert set(features) == {"net.2", "net.3"} and features["net.2"].shape == (10, 5)
    assert all(torch.equal(features[name], own_features[name]) for name in layers)
    assert count_hooks(model.model) == 0  # the hooks went with the forward


def test_a_changed_model_or_another_share_runs_a_new_forward():
    probe, model = _probe(), LogitsModel(_Counted().eval())
    shared, key = CleanForward(), probe.fingerprint()
    _want_both(shared, key, model, EmbeddingOptions(batch_size=4, max_dim=5))
    before, _ = shared.run(model, Share.of(probe), key, 4, "dynamics")
    with torch.no_grad():
        model.model.net[0].weight.mul_(2.0)  # an optimizer step: in place, the version counter moves
    after, _ = shared.run(model, Share.of(probe), key, 4, "embedding")
    assert shared.forwards == 2 and shared.hits == 0 and not torch.equal(before, after)
    assert torch.equal(after, predict_logits(model, probe.images, 4))

    model.model.train()
    model.model(probe.images)  # a training forward: BatchNorm's running statistics move
    model.model.eval()
    moved, _ = shared.run(model, Share.of(probe), key, 4, "dynamics")
    assert shared.forwards == 3 and torch.equal(moved, predict_logits(model, probe.images, 4))
    # another process's share, another batch size: each its own forward
    shared.run(model, Share.of(probe, world=2, rank=1), key, 4, "dynamics")
    shared.run(model, Share.of(probe), key, 2, "dynamics")
    assert shared.forwards == 5 and shared.hits == 0


def test_a_probe_sets_forward_is_priced_by_the_median_of_its_last_five_and_a_read_keeps_the_price():
    import time

    from trainviz.core.clean_forward import CleanView

    class Slow(_Counted):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            time.sleep(0.05)
            return super().forward(x)

    probe, model = _probe(), LogitsModel(Slow().eval())
    shared, key = CleanForward(), probe.fingerprint()
    view = CleanView(shared, key, "dynamics")
    assert view.seconds is None  # before the first forward
    shared.want(key, "dynamics")
    shared.run(model, Share.of(probe), key, 4, "dynamics")
    first = shared.seconds[key]
    assert view.seconds == first and 3 * 0.05 <= first < 3 * 0.05 + 1.0  # three batches of a 0.05 s forward
    shared.run(model, Share.of(probe), key, 4, "dynamics")  # a read: no forward, the time stays
    assert shared.hits == 1 and shared.seconds[key] == first
    shared.run(model, Share.of(probe), key, 2, "dynamics")  # batches of 2: five forwards, timed anew
    times = list(shared._times[key])
    assert len(times) == 2 and times[0] == first and times[1] >= 5 * 0.05
    assert shared.seconds[key] == pytest.approx((first + times[1]) / 2)  # the median of two
    for _ in range(5):
        with torch.no_grad():
            model.model.net[0].weight.mul_(1.0)  # a step: each run a new forward
        shared.run(model, Share.of(probe), key, 2, "dynamics")
    times = list(shared._times[key])
    assert len(times) == 5 and first not in times  # the last five
    assert shared.seconds[key] == sorted(times)[2] >= 5 * 0.05
    assert shared.image_seconds() == shared.seconds[key] / 10  # one image's forward: the last timed set's over 10
    small = ProbeSet(images=probe.images[:4], labels=probe.labels[:4], ids=probe.ids[:4])
    shared.run(model, Share.of(small), small.fingerprint(), 4, "dynamics")
    assert shared.image_seconds() == shared.seconds[small.fingerprint()] / 4 and 0.05 / 4 <= shared.image_seconds()
    assert CleanForward().image_seconds() is None


def test_a_layer_that_gives_nothing_fails_its_owner_alone():
    probe, model = _probe(), LogitsModel(_Counted().eval())
    shared, key = CleanForward(), probe.fingerprint()
    shared.want(key, "dynamics")
    unused = nn.Linear(2, 2)  # never called in the forward
    shared.want(key, "embedding", {"nowhere": unused}, pooler(EmbeddingOptions()))
    logits, _ = shared.run(model, Share.of(probe), key, 4, "dynamics")
    assert torch.equal(logits, predict_logits(model, probe.images, 4))
    with pytest.raises(ValueError, match="'nowhere' returned no tensor"):
        shared.run(model, Share.of(probe), key, 4, "embedding")
    with pytest.raises(ValueError, match="Expected a `reduce`"):
        shared.want(key, "embedding", {"net.2": model.model.net[2]})
