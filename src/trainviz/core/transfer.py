"""Device -> host in one transfer (house rule 5: tensors move to the CPU once, at the sink)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

__all__ = ["to_cpu"]


def to_cpu(tensors: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Move several device tensors to the CPU in one transfer, as float64 arrays with their shapes kept.

    Example:
        >>> out = to_cpu({"acc": torch.tensor(0.5), "per_class": torch.tensor([1.0, 0.0])})
        >>> float(out["acc"]), out["per_class"].tolist()
        (0.5, [1.0, 0.0])
    """
    if not tensors:
        return {}
    flat = torch.cat([t.detach().reshape(-1).double() for t in tensors.values()]).cpu().numpy()
    out, start = {}, 0
    for name, t in tensors.items():
        out[name] = flat[start : start + t.numel()].reshape(tuple(t.shape))
        start += t.numel()
    return out
