"""``ProbeSource``: where a callback's probe set comes from, and how its images map to pixels, pictures and logits.

It holds the options of a probe callback about its data (``probe_size``, ``probe_seed``, ``split``, ``probe_data``,
``normalization``, ``output``, ``pixels``, ``display_channels``), checks them once, and at setup finds the data (a
``probe_data=`` dataset or :class:`~trainviz.core.probeset.ProbeSet`, else the trainer's ``split`` dataloader through
:func:`trainviz.core.lightning_private.data_source_dataset`), draws the fixed probe set, resolves the normalisation
(:mod:`trainviz.core.pixels`) and the display (:mod:`trainviz.core.display`), and gives the probe on the model's
device, the model as logits (:mod:`trainviz.core.outputs`) and the layers a probe asks for. A
:class:`~trainviz.callbacks.base.ProbeCallback` holds one and exposes it under the names its subclasses use
(``probe``, ``norm``, ``device_probe()``, ``logits_model()``, ...).

Example:
    >>> import torch
    >>> from trainviz.core.source import ProbeSource
    >>> data = [(torch.rand(3, 8, 8), i % 2) for i in range(10)]
    >>> source = ProbeSource("Demo", probe_size=4, probe_data=data)
    >>> source.draw(None, source.find(None))
    >>> source.probe.images.shape, source.probe.labels.tolist()
    (torch.Size([4, 3, 8, 8]), [0, 0, 1, 1])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from trainviz.core.checks import check_choice, check_int, check_positive_int
from trainviz.core.common import example_indices
from trainviz.core.display import DISPLAY_PERCENTILES, Display, check_display_channels, display_channels_for
from trainviz.core.guard import model_device, model_dtype, preserve_rng, probe_guard
from trainviz.core.layers import resolve_layers
from trainviz.core.lightning_private import data_source_dataset
from trainviz.core.normalization import Normalization
from trainviz.core.outputs import LogitsModel, OutputSpec, check_output_spec
from trainviz.core.pixels import NormalizationSpec, as_normalization, check_pixel_range, resolve_normalization
from trainviz.core.probeset import ProbeSet

__all__ = ["ProbeSource", "check_pixels"]


def check_pixels(pixels: Any, normalization: Normalization | None) -> bool:
    """``pixels`` as a bool, refused together with a normalisation (photos have one, other inputs none)."""
    if not isinstance(pixels, bool):
        raise ValueError(
            f"Expected `pixels` to be True (photos) or False (inputs that are not photos), got {pixels!r}."
        )
    if not pixels and normalization is not None:
        raise ValueError(
            "Expected either `pixels=False` (the inputs are not photos: there is no mapping to pixels) or "
            f"`normalization=` (the mapping of photos), not both; got normalization={normalization}."
        )
    return pixels


class ProbeSource:
    """The probe set of one callback (``owner`` names it in messages): its data, draw, pixels, display and output.

    The arguments are :class:`~trainviz.callbacks.base.ProbeCallback`'s of the same names (``default_probe_size``
    and ``needs_pixels`` are its class declarations); each is checked here, so a wrong one raises ``ValueError``
    when the callback is built.
    """

    def __init__(
        self,
        owner: str,
        probe_size: int | None = None,
        probe_seed: int = 0,
        *,
        split: str = "val",
        probe_data: Any = None,
        normalization: NormalizationSpec = None,
        output: OutputSpec = None,
        pixels: bool = True,
        display_channels: int | list[int] | None = None,
        default_probe_size: int = 64,
        needs_pixels: bool = True,
    ) -> None:
        self.owner = owner
        self.default_size = probe_size is None
        self.probe_size = default_probe_size if probe_size is None else check_positive_int("probe_size", probe_size)
        self.probe_seed = check_int("probe_seed", probe_seed)
        self.split = check_choice("split", split, ("val", "train"))
        self.probe_data = probe_data
        self.normalization = as_normalization(normalization)
        if pixels is False and needs_pixels:
            raise ValueError(
                f"{owner} acts on pixels in [0, 1] (it corrupts, attacks or optimises them) and cannot "
                "run on inputs declared not to be photos (`pixels=False`). Leave it out, or, if the inputs are "
                "photos, drop `pixels=False` and give the mapping to pixels with `normalization=(mean, std)`. "
                "`trainviz.default_callbacks(pixels=False)` leaves such callbacks out by itself."
            )
        self.pixels = check_pixels(pixels, self.normalization)
        self.needs_pixels = needs_pixels
        self.display_channels = check_display_channels(display_channels)
        self.output = check_output_spec(output)
        self.shared_normalization: Normalization | None = None  # set by default_callbacks(normalization=)
        self.probe: ProbeSet | None = None
        self.data: Any = None  # where the probe set is drawn from (a dataset, a ProbeSet or None), set at setup
        self.norm: Normalization | None = None
        self.norm_source: str | None = None
        self.display: Display | None = None  # how pictures show the probe images, set at fit start
        self.on_device: ProbeSet | None = None  # the probe on the model's device and dtype (cached)

    # the data and the draw -------------------------------------------------------------------------
    def find(self, trainer: Any) -> Any:
        """``probe_data``, else the dataset of the trainer's ``split`` dataloader (datamodule, model hook or ``fit``
        argument), else ``None``."""
        if self.probe_data is not None:
            return self.probe_data
        return None if trainer is None else data_source_dataset(trainer, self.split)

    def missing(self) -> ValueError:
        """The error for a fit with no data to draw from."""
        what = "validation" if self.split == "val" else "training"
        return ValueError(
            f"{self.owner} needs {what} data to draw its probe set from: pass `{self.split}_dataloaders` to `fit`, "
            f"use a datamodule with `{self.split}_dataloader`, or give `probe_data=`."
        )

    def size_for(self, source: Any) -> int:
        """The probe size to draw from ``source``: ``probe_size``, or the class default capped by the split."""
        return min(self.probe_size, len(source)) if self.default_size else self.probe_size

    def draw(self, trainer: Any, source: Any) -> None:
        """Draw :attr:`probe` from ``source``, class-stratified and seeded, without touching the training RNG."""
        class_names = getattr(getattr(trainer, "datamodule", None), "class_names", None)
        with preserve_rng():  # reading items may run random augmentations: keep the training stream
            torch.manual_seed(self.probe_seed)
            self.probe = ProbeSet.from_dataset(source, self.size_for(source), self.probe_seed, class_names=class_names)

    def replace(self, probe: ProbeSet) -> None:
        """A probe set from a checkpoint replaces the drawn one (the device copy goes with it)."""
        self.probe, self.on_device = probe, None

    # pixels and pictures ---------------------------------------------------------------------------
    def resolve_normalization(self, trainer: Any, source: Any) -> None:
        """:attr:`norm` and :attr:`norm_source` (see :func:`trainviz.core.pixels.resolve_normalization`), checked on
        the probe images (photos: ``pixels=True``)."""
        dataset = None if isinstance(source, ProbeSet) else source
        self.norm, self.norm_source = resolve_normalization(
            self.normalization, self.shared_normalization, getattr(trainer, "datamodule", None), dataset,
            self.probe.images.shape[1],
        )  # fmt: skip
        check_pixel_range(self.probe.images, self.norm, self.norm_source, self.owner, self.needs_pixels)

    def resolve_display(self, say: Callable[[str], None]) -> None:
        """:attr:`display`: the pixels (photos) or robust percentile scaling (``pixels=False``, which ``say``
        announces), and the channels."""
        shown = display_channels_for(self.probe.images.shape[1], self.display_channels, self.owner)
        self.display = Display(self.norm if self.pixels else None, shown)
        if not self.pixels:
            low, high = DISPLAY_PERCENTILES
            say(
                "trainviz: the inputs are declared not to be photos (pixels=False): probes compute on the model's own "
                f"inputs, and pictures of them are scaled per image and channel to their {low:g}th-{high:g}th "
                "percentiles, for display only."
            )

    # what probes are given -------------------------------------------------------------------------
    def device_probe(self, pl_module: Any) -> ProbeSet:
        """The probe set on the model's device and dtype (moved once, cached)."""
        device, dtype = model_device(pl_module), model_dtype(pl_module)
        cached = self.on_device
        if cached is None or cached.images.device != device or cached.images.dtype != dtype:
            self.on_device = self.probe.to(device, dtype)
        return self.on_device

    def logits_model(self, pl_module: Any) -> LogitsModel:
        """``pl_module`` as a model returning logits ``(N, K)`` (``output=`` applied)."""
        return LogitsModel(pl_module, self.output)

    def example_indices(self, n: int) -> list[int]:
        """``n`` probe indices to show (:func:`trainviz.core.common.example_indices`)."""
        return example_indices(self.probe.labels, n)

    def example_batch(self, pl_module: Any, n: int = 2) -> torch.Tensor:
        """The first ``n`` probe images on the model's device and dtype (setup checks)."""
        return self.probe.images[:n].to(model_device(pl_module), model_dtype(pl_module))

    def setup_layers(
        self, pl_module: Any, specs: Any, example: torch.Tensor, reshape: Any = None, check: Any = None
    ) -> tuple[dict[str, torch.nn.Module], bool]:
        """Resolve layer ``specs`` on the logits model under the guard (:func:`resolve_layers`), then run
        ``check(model, example, layers)``; returns the layers and whether ``"auto"`` was among the specs."""
        with probe_guard(pl_module):
            model = self.logits_model(pl_module)
            layers = resolve_layers(model, specs, example[:1], reshape)
            if check is not None:
                check(model, example, layers)
        return layers, "auto" in ([specs] if isinstance(specs, str) else list(specs))
