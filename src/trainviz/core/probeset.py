"""ProbeSet: a fixed, class-stratified sample of a dataset that every probe looks at, epoch after epoch.

Example:
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> from trainviz.core.probeset import ProbeSet
    >>> ds = TensorDataset(torch.rand(100, 3, 8, 8), torch.arange(100) % 4)
    >>> probe = ProbeSet.from_dataset(ds, size=20, seed=0)
    >>> probe.images.shape, probe.labels.bincount().tolist()
    (torch.Size([20, 3, 8, 8]), [5, 5, 5, 5])
"""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from trainviz.core.checks import check_positive_int

__all__ = ["ProbeSet", "split_item", "stratified_indices"]


def split_item(item: Any) -> tuple[torch.Tensor, int, torch.Tensor | None]:
    """Split a dataset item into ``(image, label, mask_or_None)``.

    Accepts ``(image, label)``, ``(image, label, mask)`` and dicts with keys ``image``, ``label``
    and optionally ``mask``.
    """
    if isinstance(item, dict):
        try:
            return torch.as_tensor(item["image"]), int(item["label"]), item.get("mask")
        except KeyError as err:
            raise ValueError(f"Dict dataset items need 'image' and 'label' keys, got {sorted(item)}.") from err
    if isinstance(item, (tuple, list)) and len(item) in (2, 3):
        image, label = item[0], item[1]
        if not isinstance(image, torch.Tensor):
            raise ValueError(
                f"Expected the first element of a dataset item to be an image tensor, got {type(image).__name__}."
            )
        label_t = torch.as_tensor(label)
        if label_t.numel() != 1 or label_t.is_floating_point():
            raise ValueError(f"Expected an integer class label as the second element of a dataset item, got {label!r}.")
        mask = item[2] if len(item) == 3 else None
        return image, int(label_t), mask
    raise ValueError(
        "Expected dataset items of the form (image, label), (image, label, mask) or "
        f"{{'image', 'label'[, 'mask']}}, got {type(item).__name__}."
    )


def _dataset_labels(dataset: Dataset) -> np.ndarray:
    for attr in ("targets", "labels"):
        values = getattr(dataset, attr, None)
        if values is not None and len(values) == len(dataset):  # type: ignore[arg-type]
            return np.asarray(values, dtype=np.int64)
    tensors = getattr(dataset, "tensors", None)  # TensorDataset
    if tensors is not None and len(tensors) >= 2:
        return tensors[1].cpu().numpy().astype(np.int64)
    return np.asarray([split_item(dataset[i])[1] for i in range(len(dataset))], dtype=np.int64)  # type: ignore[arg-type]


def stratified_indices(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` indices drawn without replacement, each class represented in proportion (at least once
    while ``size`` allows), from a private generator seeded with ``seed``. Returned sorted by class then index.
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.minimum(counts, np.maximum(1, np.floor(counts / counts.sum() * size)).astype(int))
    while quota.sum() > size:  # more classes than slots: drop from the largest quotas
        quota[np.argmax(quota)] -= 1
    while quota.sum() < size:  # hand out the remainder to classes with room, largest share first
        room = counts - quota
        share = np.where(room > 0, counts / counts.sum() * size - quota, -np.inf)
        quota[np.argmax(share)] += 1
    picked = []
    for cls, q in zip(classes, quota):
        members = np.flatnonzero(labels == cls)
        picked.append(np.sort(rng.choice(members, size=q, replace=False)))
    return np.concatenate(picked)


@dataclass
class ProbeSet:
    """A fixed sample of labelled images.

    Attributes:
        images: model-input images (normalised as the model sees them).
        labels: class indices.
        ids: stable ids (indices into the source dataset).
        masks: optional ground-truth object masks (for localisation metrics).
        class_names: optional names, one per class.

    Shape:
        images ``(N, C, H, W)``, labels ``(N,)``, ids ``(N,)``, masks ``(N, H, W)`` bool.
    """

    images: torch.Tensor
    labels: torch.Tensor
    ids: torch.Tensor
    _: KW_ONLY
    masks: torch.Tensor | None = None
    class_names: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise ValueError(
                f"Expected probe images of shape (N, C, H, W), got {tuple(self.images.shape)}: "
                "trainviz probes need image inputs."
            )
        n = self.images.shape[0]
        if self.labels.shape != (n,) or self.ids.shape != (n,):
            raise ValueError(
                f"Expected {n} labels and ids, got {tuple(self.labels.shape)} and {tuple(self.ids.shape)}."
            )
        if self.masks is not None and tuple(self.masks.shape) != (n, *self.images.shape[-2:]):
            raise ValueError(f"Expected masks of shape {(n, *self.images.shape[-2:])}, got {tuple(self.masks.shape)}.")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        if self.class_names is not None:
            return len(self.class_names)
        return int(self.labels.max()) + 1 if len(self) else 0

    @classmethod
    def from_dataset(
        cls, dataset: Dataset, size: int = 64, seed: int = 0, class_names: list[str] | None = None
    ) -> ProbeSet:
        """Draw ``size`` examples, stratified by class, with a private generator seeded by ``seed``."""
        check_positive_int("probe_size", size)
        n = len(dataset)  # type: ignore[arg-type]
        if size > n:
            raise ValueError(f"Expected `probe_size` <= the {n} examples of the probe split, got {size}.")
        labels = _dataset_labels(dataset)
        idx = stratified_indices(labels, size, seed)
        items = [split_item(dataset[int(i)]) for i in idx]
        images = torch.stack([torch.as_tensor(im, dtype=torch.float32) for im, _, _ in items])
        if images.dim() != 4:
            raise ValueError(
                f"Expected image inputs of shape (C, H, W) per example, got {tuple(images.shape[1:])}: "
                "trainviz probes need image data."
            )
        masks = None
        if all(m is not None for _, _, m in items):
            masks = torch.stack([torch.as_tensor(m).reshape(images.shape[-2:]).bool() for _, _, m in items])
        names = class_names if class_names is not None else getattr(dataset, "class_names", None)
        return cls(
            images=images,
            labels=torch.tensor([lab for _, lab, _ in items], dtype=torch.long),
            ids=torch.as_tensor(idx, dtype=torch.long),
            masks=masks,
            class_names=list(names) if names is not None else None,
        )

    def fingerprint(self) -> str:
        """Short SHA-256 of ids, labels and image bytes: equal fingerprints mean the same probe set.

        Hashed once and kept while the same tensors are unchanged (their identity and in-place version counters:
        the callbacks that share a probe set each ask for it at setup, and hashing 256 images at 224 px takes
        about 0.3 s on a CPU)."""
        tensors = (self.ids, self.labels, self.images)
        cached = self.__dict__.get("_fingerprint")
        if cached is not None and all(r() is t and v == t._version for (r, v), t in zip(cached[0], tensors)):
            return str(cached[1])
        h = hashlib.sha256()
        for t in tensors:
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        digest = h.hexdigest()[:16]
        self.__dict__["_fingerprint"] = ([(weakref.ref(t), t._version) for t in tensors], digest)
        return digest

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the fingerprint's cache (it refers to these tensors weakly)."""
        return {k: v for k, v in self.__dict__.items() if k != "_fingerprint"}

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> ProbeSet:
        """A copy with images (and masks, labels, ids) on ``device``; images cast to ``dtype`` if given."""
        return ProbeSet(
            images=self.images.to(device=device, dtype=dtype or self.images.dtype),
            labels=self.labels.to(device),
            ids=self.ids.to(device),
            masks=None if self.masks is None else self.masks.to(device),
            class_names=self.class_names,
        )

    def subset(self, start: int, stop: int) -> ProbeSet:
        """Items ``start`` to ``stop`` (a view; a process's share, :class:`trainviz.core.contract.Share`)."""
        return ProbeSet(
            images=self.images[start:stop],
            labels=self.labels[start:stop],
            ids=self.ids[start:stop],
            masks=None if self.masks is None else self.masks[start:stop],
            class_names=self.class_names,
        )

    def batches(self, batch_size: int):
        """Yield ``(start, stop)`` slices covering the probe set in order."""
        for start in range(0, len(self), batch_size):
            yield start, min(start + batch_size, len(self))

    def state_dict(self) -> dict[str, Any]:
        return {
            "images": self.images.detach().cpu(),
            "labels": self.labels.cpu(),
            "ids": self.ids.cpu(),
            "masks": None if self.masks is None else self.masks.cpu(),
            "class_names": self.class_names,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ProbeSet:
        return cls(**state)
