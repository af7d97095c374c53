import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from trainviz.core.probeset import ProbeSet, stratified_indices
from trainviz.data import DigitsDataModule, ShapesDataModule, make_shapes


def test_stratified_and_deterministic():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    idx = stratified_indices(labels, 10, seed=3)
    assert np.bincount(labels[idx]).tolist() == [5, 3, 2]
    assert len(set(idx.tolist())) == 10
    assert np.array_equal(idx, stratified_indices(labels, 10, seed=3))
    assert not np.array_equal(idx, stratified_indices(labels, 10, seed=4))
    # more classes than slots: still exactly `size`, no class twice over quota
    many = np.repeat(np.arange(12), 3)
    assert len(stratified_indices(many, 5, seed=0)) == 5


def test_probeset_from_dataset_with_masks_and_state_roundtrip():
    dm = ShapesDataModule(n_train=30, n_val=60)
    dm.setup()
    probe = ProbeSet.from_dataset(dm.val_set, size=12, seed=0)
    assert probe.images.shape == (12, 3, 32, 32) and probe.masks.shape == (12, 32, 32)
    assert probe.labels.bincount().tolist() == [2] * 6
    assert probe.class_names == dm.class_names
    # ids point at the dataset items
    for i in range(12):
        assert torch.equal(dm.val_set[int(probe.ids[i])][0], probe.images[i])
    again = ProbeSet.from_state_dict(probe.state_dict())
    assert again.fingerprint() == probe.fingerprint()
    other = ProbeSet.from_dataset(dm.val_set, size=12, seed=1)
    assert other.fingerprint() != probe.fingerprint()


def test_the_fingerprint_is_hashed_once_while_the_tensors_are_unchanged(monkeypatch):
    import hashlib
    import pickle

    probe = ProbeSet(torch.rand(6, 3, 8, 8), torch.arange(6) % 2, torch.arange(6))
    calls = []
    sha256 = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda: calls.append(1) or sha256())
    first = probe.fingerprint()
    assert probe.fingerprint() == first and len(calls) == 1  # kept
    probe.images[0, 0, 0, 0] += 1.0  # changed in place: hashed again, to another print
    changed = probe.fingerprint()
    assert changed != first and len(calls) == 2
    probe.labels = torch.arange(6) % 3  # replaced: hashed again
    assert probe.fingerprint() != changed and len(calls) == 3
    again = pickle.loads(pickle.dumps(probe))  # the cache does not travel (it refers to these tensors)
    assert "_fingerprint" not in again.__dict__ and again.fingerprint() == probe.fingerprint()


def test_probeset_errors():
    ds = TensorDataset(torch.rand(10, 3, 8, 8), torch.arange(10) % 2)
    with pytest.raises(ValueError, match="probe_size.*10 examples"):
        ProbeSet.from_dataset(ds, size=11)
    with pytest.raises(ValueError, match="positive int"):
        ProbeSet.from_dataset(ds, size=0)
    flat = TensorDataset(torch.rand(10, 5), torch.arange(10) % 2)
    with pytest.raises(ValueError, match="image"):
        ProbeSet.from_dataset(flat, size=4)


def test_shapes_deterministic_masks_match_pixels():
    a = make_shapes(12, seed=1)
    b = make_shapes(12, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    images, labels, masks = a
    assert images.min() >= 0 and images.max() <= 1
    assert masks.float().mean(dim=(1, 2)).min() > 0.03  # every image has a visible shape
    assert labels.bincount(minlength=6).tolist() == [2] * 6


def test_shapes_colour_is_a_class_shortcut_only_with_bias():
    import colorsys

    def hue_error(bias):
        images, labels, masks = make_shapes(60, seed=2, colour_bias=bias)
        errors = []
        for img, lab, m in zip(images, labels, masks):
            rgb = img[:, m].mean(1).tolist()
            hue = colorsys.rgb_to_hsv(*rgb)[0]
            d = abs(hue - int(lab) / 6)
            errors.append(min(d, 1 - d))
        return np.array(errors)

    assert (hue_error(1.0) < 0.03).all()  # every shape has its class hue
    assert (hue_error(0.0) > 0.1).mean() > 0.5  # random hues otherwise


def test_digits_module_and_denormalize():
    dm = DigitsDataModule()
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 1797
    x, y = dm.val_set[0]
    assert x.shape == (1, 32, 32)
    pixels = dm.denormalize(dm.val_set.images)
    assert pixels.min() >= 0 and pixels.max() <= 1
    assert torch.allclose(dm.normalization.normalize(pixels), dm.val_set.images, atol=1e-5)
    counts = torch.bincount(dm.val_set.labels)
    assert counts.min() >= 34  # stratified split keeps every digit
