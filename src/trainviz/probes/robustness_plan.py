"""What a robustness run does: the options (:class:`RobustnessOptions`, declared once, checked on construction),
the suite's rows (:func:`suite`), the plan of one run (:class:`RobustnessPlan`, plain data: what fits a time
budget, :func:`plan_parts`) and what the probe keeps across runs (:class:`RobustnessHistory`: the rotation among
corruptions, the runs since PGD and the measured cost of each part).

Example:
    >>> options = RobustnessOptions(corruptions=["grayscale", "fog"], severities=[1, 3], epsilons=[])
    >>> options.rows, options.trajectory_steps
    ([('grayscale', 1), ('fog', 1), ('fog', 3)], 20)
    >>> RobustnessOptions(corruption_params="ImageNet-C")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Expected `corruption_params` to be 'auto' or one of cifar10-c, tinyimagenet-c, ...; got 'ImageNet-C'.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from torch import Tensor

from trainviz.core.checks import check_bool, check_float, check_int, check_positive_int
from trainviz.core.options import Options
from trainviz.ops.corruptions import IMAGENET_C, SEED_PROBES, check_param_set, corruption_spec, list_corruptions
from trainviz.probes.robustness_result import eps_label

__all__ = [
    "RobustnessHistory",
    "RobustnessOptions",
    "RobustnessPlan",
    "Rows",
    "check_epsilons",
    "core_seconds",
    "parts_seconds",
    "pgd_rows",
    "plan_parts",
    "suite",
    "trajectory_rows",
]

CAM_COST = 1.3  # a Grad-CAM pass costs about 1.2-1.4x a plain forward pass
PGD_DEFAULTS = (10, 4)  # pgd_steps, pgd_every: left out of the state key (older checkpoints keep theirs)
DEFAULT_EPSILONS = (1 / 255, 2 / 255, 4 / 255, 8 / 255)

Rows = list[tuple[str, int]]


# the suite -----------------------------------------------------------------------------------------


def suite(corruptions: Sequence[str], severities: Sequence[int]) -> tuple[list[str], list[int], Rows]:
    """The corruption names, the sorted severities and the table's rows ``(name, severity)``: single-level
    corruptions (Zhang's probes) at their one level, the others at each of ``severities`` they have.

    Raises:
        ValueError: unknown or repeated names, severities that are not distinct ints in 1..5, or a corruption
            with none of the severities.
    """
    names, valid = list(corruptions), list_corruptions()
    unknown = [n for n in names if n not in valid]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(
            f"Expected `corruptions` to be distinct names from {', '.join(valid)}; got {names!r}"
            + (f" (unknown: {', '.join(map(repr, unknown))})." if unknown else ".")
        )
    sevs = list(severities)
    if not sevs or len(set(sevs)) != len(sevs) or any(isinstance(s, bool) or s not in range(1, 6) for s in sevs):
        raise ValueError(f"Expected `severities` to be distinct ints in 1..5, got {severities!r}.")
    rows: Rows = []
    for name in names:
        levels = corruption_spec(name).severities
        picked = [1] if levels == 1 else [s for s in sorted(sevs) if s <= levels]
        if not picked:
            raise ValueError(f"Corruption {name!r} has {levels} severities; none of `severities` {sorted(sevs)}.")
        rows += [(name, s) for s in picked]
    return names, sorted(sevs), rows


def check_epsilons(epsilons: Sequence[float]) -> list[float]:
    """FGSM step sizes as floats.

    Raises:
        ValueError: a value is not a finite number >= 0, or two agree in their first 4 decimals (their metric
            names, ``fgsm_accuracy@<eps>``, would collide).
    """
    eps = list(epsilons)
    if any(isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 <= e < math.inf for e in eps):
        raise ValueError(f"Expected `epsilons` to be finite numbers >= 0, got {epsilons!r}.")
    if len({eps_label(e) for e in eps}) != len(eps):
        raise ValueError(f"Expected `epsilons` to differ in their first 4 decimals, got {eps!r}.")
    return [float(e) for e in eps]


# the options ---------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RobustnessOptions(Options):
    """The user options of the robustness probe, with their defaults (those of
    :class:`~trainviz.callbacks.robustness.RobustnessCallback`, which documents each), checked and normalised on
    construction: ``corruptions`` (``None``: Zhang's probes and the 15 ImageNet-C corruptions), ``severities``
    (sorted; ``None``: 1..5) and ``epsilons`` (``None``: 1, 2, 4, 8 / 255) become lists, ``trajectory_steps``
    (``None``: ``flip_max_steps``) an int.

    Raises:
        ValueError: naming the option, with the valid choices where there are some.
    """

    corruptions: Sequence[str] | None = None
    severities: Sequence[int] | None = None
    epsilons: Sequence[float] | None = None
    flip_step_size: float = 0.5
    flip_max_steps: int = 20
    trajectory_images: int = 8
    trajectory_steps: int | None = None
    random_directions: int = 60
    random_radius_factor: float = 2.0
    reference: str | None = None
    corruption_params: str = "auto"
    cam_shift: bool = False
    cam_layer: str = "auto"
    cam_reshape: Callable[[Tensor], Tensor] | None = None
    n_examples: int = 6
    batch_size: int = 64
    pgd_steps: int = 10
    pgd_every: int = 4

    def check(self) -> None:
        names, severities, _ = suite(
            SEED_PROBES + IMAGENET_C if self.corruptions is None else self.corruptions,
            [1, 2, 3, 4, 5] if self.severities is None else self.severities,
        )
        flip_max_steps = check_int("flip_max_steps", self.flip_max_steps, minimum=0)
        steps = flip_max_steps if self.trajectory_steps is None else self.trajectory_steps
        reference = self.reference
        if reference is not None and not isinstance(reference, (str, os.PathLike)):
            raise ValueError(f"Expected `reference` to be a path to a summary.json or None, got {reference!r}.")
        if not isinstance(self.cam_layer, str) or not self.cam_layer:
            raise ValueError(f"Expected `cam_layer` to be a layer name or 'auto', got {self.cam_layer!r}.")
        if self.cam_reshape is not None and not callable(self.cam_reshape):
            what = "a callable (N, T, C) -> (N, C, h, w) or None"
            raise ValueError(f"Expected `cam_reshape` to be {what}, got {self.cam_reshape!r}.")
        self.set(
            corruptions=names,
            severities=severities,
            epsilons=check_epsilons(DEFAULT_EPSILONS if self.epsilons is None else self.epsilons),
            flip_step_size=check_float("flip_step_size", self.flip_step_size, 0, strict_minimum=True),
            flip_max_steps=flip_max_steps,
            pgd_steps=check_int("pgd_steps", self.pgd_steps, minimum=0),
            pgd_every=check_int("pgd_every", self.pgd_every, minimum=1),
            trajectory_images=check_int("trajectory_images", self.trajectory_images, minimum=0),
            trajectory_steps=check_int("trajectory_steps", steps, minimum=0),
            random_directions=check_int("random_directions", self.random_directions, minimum=0),
            random_radius_factor=check_float("random_radius_factor", self.random_radius_factor, 0, strict_minimum=True),
            reference=None if reference is None else os.fspath(reference),
            corruption_params=check_param_set(self.corruption_params, "corruption_params"),
            cam_shift=check_bool("cam_shift", self.cam_shift),
            n_examples=check_positive_int("n_examples", self.n_examples),
            batch_size=check_positive_int("batch_size", self.batch_size),
        )

    @property
    def rows(self) -> Rows:
        """The table's rows ``(corruption, severity)`` (:func:`suite`)."""
        return suite(self.corruptions or [], self.severities or [])[2]

    @property
    def trajectories(self) -> bool:
        """Whether the trajectories run (images and steps)."""
        return self.trajectory_images > 0 and (self.trajectory_steps or 0) > 0

    @property
    def pgd(self) -> bool:
        """Whether PGD runs at all (steps and radii)."""
        return self.pgd_steps > 0 and bool(self.epsilons)

    def key(self) -> str:
        """The short hash of the options that change what a run measures (the callback's state key). Settings
        added later enter it only when they differ from what runs did before them, so older checkpoints still
        restore: trajectories when on, the default 60 random directions as the old default 1,000 (two callbacks
        differing only by 60 and 1,000 share a key), ``corruption_params`` when not ``"auto"``, PGD when not at
        its defaults (10 steps, every 4th run)."""
        pgd_keyed = self.pgd and (self.pgd_steps, self.pgd_every) != PGD_DEFAULTS
        trajectory = []
        if self.trajectories:
            points = 1000 if self.random_directions == 60 else self.random_directions
            trajectory = [[self.trajectory_images, self.trajectory_steps, points, self.random_radius_factor]]
        config = [
            self.rows,
            self.epsilons,
            self.flip_step_size,
            self.flip_max_steps,
            self.reference,
            self.cam_shift,
            self.cam_layer,
            *trajectory,
            *([self.corruption_params] if self.corruption_params != "auto" else []),
            *([["pgd", self.pgd_steps, self.pgd_every]] if pgd_keyed else []),
        ]
        return hashlib.sha1(json.dumps(config).encode()).hexdigest()[:8]


# across runs ---------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class RobustnessHistory:
    """What the probe keeps across runs (rank 0): the corruption whose turn it is next under a budget
    (``rotation``), the runs since PGD last ran (``since_pgd``, ``None``: never, PGD is due) and the seconds of
    each part as last measured (``costs``: ``"row"``, ``"fgsm"``, ``"pgd"``, ``"flip"``, ``"trajectory"``).
    :meth:`state` is what a checkpoint saves."""

    pgd_every: int = 1
    pgd_on: bool = False
    rotation: int = 0
    since_pgd: int | None = None
    costs: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, options: RobustnessOptions) -> RobustnessHistory:
        return cls(pgd_every=options.pgd_every, pgd_on=options.pgd)

    def pgd_due(self, essential: bool) -> bool:
        """PGD runs at the first run, then after ``pgd_every - 1`` runs without it, and at essential runs (the
        last epoch's)."""
        if not self.pgd_on:
            return False
        return self.since_pgd is None or self.since_pgd >= self.pgd_every - 1 or essential

    def count_pgd(self, ran: bool) -> None:
        """After a run: PGD ran (the count restarts) or not (one more run without it; a due PGD stays due)."""
        if self.pgd_on:
            self.since_pgd = 0 if ran else None if self.since_pgd is None else self.since_pgd + 1

    def state(self) -> dict[str, Any]:
        return {"rotation": self.rotation, "since_pgd": self.since_pgd}

    def load(self, state: dict[str, Any]) -> None:
        self.rotation = int(state.get("rotation", 0))
        since = state.get("since_pgd")
        self.since_pgd = int(since) if isinstance(since, int) else None


# the budget ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RobustnessPlan:
    """What one run contains (plain data, decided on rank 0 and broadcast): the rows of the table, whether FGSM,
    the gradient ascent (steps-to-flip and the trajectories, one part) and PGD run, and the epoch. ``rotation``
    (whose turn it is next among the rotating corruptions) and ``skipped`` (what the budget left out, for its
    log) are the planner's."""

    rows: Rows
    fgsm: bool = True
    flip: bool = True
    _: KW_ONLY
    rotation: int = 0
    skipped: list[str] = field(default_factory=list)
    pgd: bool = False
    epoch: int = 0

    @property
    def whole(self) -> bool:
        """Everything due runs: the budget left nothing out (:func:`trainviz.core.contract.is_whole`)."""
        return not self.skipped


Plan = RobustnessPlan  # the name before the compute contract


def core_seconds(active: Rows, costs: dict[str, float], clean: bool = True) -> float:
    """Seconds of the part that always runs: the clean probe set (unless ``clean`` is false: the forward shared
    with the other callbacks serves it) and Zhang's probes (0 before the first run), and what every run costs
    besides its parts (``costs["overhead"]``: merging, the example tiles, the hand-over to the sink).

    Example:
        >>> active = [("grayscale", 1), ("channels_bgr", 1), ("fog", 1)]
        >>> core_seconds(active, {"row": 0.5}), core_seconds(active, {"row": 0.5}, clean=False)
        (1.5, 1.0)
        >>> core_seconds(active, {"row": 0.5, "overhead": 0.25})
        1.75
    """
    rows = int(clean) + sum(1 for name, _ in active if name in SEED_PROBES)
    return costs.get("overhead", 0.0) + costs.get("row", 0.0) * rows


def trajectory_rows(images: int, probe_size: int, steps: int, samples: int) -> float:
    """The cost of the trajectories in row forwards (one row: a forward pass of the ``probe_size`` probe images):
    ``images`` images, ``steps`` gradient steps (a forward and a backward, about 3 forwards) and a last forward
    each, and ``samples`` random-direction forwards for each (at most all of them flip).

    Example:
        >>> trajectory_rows(8, 256, 20, 1000)
        33.15625
    """
    if images <= 0 or steps <= 0:
        return 0.0
    return images / max(1, probe_size) * (3 * steps + 1 + samples)


def pgd_rows(epsilons: int, steps: int) -> float:
    """The cost of PGD in row forwards: at each of ``epsilons`` radii, ``steps`` forward and backward passes
    (about 3 forwards each) and a last forward, over the whole probe set.

    Example:
        >>> pgd_rows(4, 10)
        124.0
    """
    return float(max(0, epsilons) * (3 * max(0, steps) + 1)) if steps > 0 else 0.0


def parts_seconds(
    plan: RobustnessPlan, costs: dict[str, float], *, clean: bool = True, cam_shift: bool = False
) -> float:
    """The seconds of ``plan``'s parts at ``costs``: its rows' forwards (the clean row's unless ``clean`` is false)
    and, where planned, FGSM, PGD, steps-to-flip and the trajectories (what :func:`plan_parts` priced, measured).

    Example:
        >>> plan = RobustnessPlan([("grayscale", 1), ("fog", 1)], fgsm=True, flip=False)
        >>> parts_seconds(plan, {"row": 0.5, "fgsm": 1.0, "flip": 9.0}), parts_seconds(plan, {"row": 0.5}, clean=False)
        (2.5, 1.0)
    """
    seconds = costs.get("row", 0.0) * (CAM_COST if cam_shift else 1.0) * (int(clean) + len(plan.rows))
    seconds += costs.get("fgsm", 0.0) if plan.fgsm else 0.0
    seconds += costs.get("pgd", 0.0) if plan.pgd else 0.0
    return seconds + (costs.get("flip", 0.0) + costs.get("trajectory", 0.0) if plan.flip else 0.0)


def plan_parts(
    active: Rows,
    costs: dict[str, float],
    seconds: float,
    rotation: int,
    *,
    epsilons: int,
    flip_max_steps: int,
    cam_shift: bool,
    trajectory_rows: float = 0.0,
    pgd_rows: float = 0.0,
    clean: bool = True,
) -> RobustnessPlan:
    """Which parts fit ``seconds``: the clean row and Zhang's probes (as many as fit, in order: an essential run
    with a short credit is scaled down to them, the clean row at least), then FGSM (``epsilons`` step sizes), PGD
    when it is due (``pgd_rows`` > 0: its cost in rows, :func:`pgd_rows`, until measured as ``"pgd"``), the other
    corruptions in turn (whole corruptions, all their severities, resuming at ``rotation``) and the gradient
    ascent (steps-to-flip and the trajectories with their random directions, one part: the trajectories extend
    steps-to-flip), as far as the time goes. ``costs`` holds the seconds of one row's forward (``"row"``, needed),
    of FGSM, of steps-to-flip and of the trajectories (``"fgsm"``, ``"flip"``, ``"trajectory"``; estimated from a
    row until measured: ``trajectory_rows`` rows, see :func:`trajectory_rows`, for the trajectories) and what
    every run costs besides its parts (``"overhead"``, 0 until measured), taken first. ``clean``:
    whether the clean row is priced (false where the forward shared with the other callbacks serves it, as at the
    last run; it runs all the same).

    Example:
        >>> active = [("grayscale", 1), ("fog", 1), ("fog", 2), ("contrast", 1)]
        >>> plan = plan_parts(active, {"row": 1.0}, 4.5, 0, epsilons=0, flip_max_steps=0, cam_shift=False)
        >>> plan.rows, plan.rotation, plan.skipped
        ([('grayscale', 1), ('fog', 1), ('fog', 2)], 1, ['1 of 2 corruptions (contrast)'])
        >>> seeds = [("grayscale", 1), ("gaussian_blur_3x3", 1), ("channels_bgr", 1)]
        >>> short = plan_parts(seeds, {"row": 1.0}, 2.5, 0, epsilons=0, flip_max_steps=0, cam_shift=False)
        >>> short.rows, short.skipped  # a credit of 2.5 rows: the clean row and one of Zhang's probes
        ([('grayscale', 1)], ["2 of 3 of Zhang's probes (gaussian_blur_3x3, channels_bgr)"])
        >>> kw = dict(epsilons=0, flip_max_steps=0, cam_shift=False, clean=False)  # the shared forward serves it
        >>> plan_parts(seeds, {"row": 1.0}, 2.5, 0, **kw).rows
        [('grayscale', 1), ('gaussian_blur_3x3', 1)]
    """
    fgsm, flip = epsilons > 0, flip_max_steps > 0 or trajectory_rows > 0
    seconds -= costs.get("overhead", 0.0)  # every run's cost besides its parts
    row = costs["row"] * (CAM_COST if cam_shift else 1.0)
    seeds = [r for r in active if r[0] in SEED_PROBES]
    # the clean row always runs; Zhang's probes as far as they fit (all of them, unless an essential run's credit is
    # short: the first and last runs are scaled down, never a reason to exceed the budget)
    base = row * int(clean)
    fitting = len(seeds) if row <= 0 else max(0, min(len(seeds), math.floor((seconds - base) / row + 1e-9)))
    rows = seeds[:fitting]
    left = seconds - base - row * len(rows)
    skipped = [f"{len(seeds) - fitting} of {len(seeds)} of Zhang's probes ({', '.join(n for n, _ in seeds[fitting:])})"]
    skipped = skipped if fitting < len(seeds) else []
    if fgsm:
        cost = costs.get("fgsm", row * (3 + epsilons))
        fgsm = cost <= left
        left -= cost if fgsm else 0.0
        skipped += [] if fgsm else [f"fgsm ({cost:.2f} s)"]
    pgd = pgd_rows > 0
    if pgd:
        cost = costs.get("pgd", row * pgd_rows)
        pgd = cost <= left
        left -= cost if pgd else 0.0
        skipped += [] if pgd else [f"pgd ({cost:.2f} s)"]
    others = list(dict.fromkeys(name for name, _ in active if name not in SEED_PROBES))
    turn = [others[(rotation + i) % len(others)] for i in range(len(others))]
    taken = 0
    for name in turn:
        cost = row * sum(1 for n, _ in active if n == name)
        if cost > left:
            break
        left -= cost
        taken += 1
    rows += [r for r in active if r[0] in set(turn[:taken])]
    if taken < len(turn):
        more = ", ..." if len(turn) - taken > 3 else ""
        skipped.append(f"{len(turn) - taken} of {len(turn)} corruptions ({', '.join(turn[taken:][:3])}{more})")
    if flip:
        cost = costs.get("flip", row * 3 * flip_max_steps) if flip_max_steps > 0 else 0.0
        cost += costs.get("trajectory", row * trajectory_rows) if trajectory_rows > 0 else 0.0
        flip = cost <= left
        what = "steps-to-flip and trajectories" if trajectory_rows > 0 else "steps-to-flip"
        skipped += [] if flip else [f"{what} ({cost:.2f} s)"]
    order = {r: i for i, r in enumerate(active)}
    turned = (rotation + taken) % max(1, len(others))
    rows = sorted(rows, key=order.__getitem__)
    return RobustnessPlan(rows, fgsm, flip, rotation=turned, skipped=skipped, pgd=pgd)
