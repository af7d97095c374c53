"""Sanity checks for saliency maps (Adebayo et al. 2018, "Sanity Checks for Saliency Maps") (pure torch).

A saliency method that explains the *model* must change its maps when the model's weights are destroyed. The
checks:

* :func:`cascading_randomization` (the model parameter randomisation test, MPRT): on a deep copy of the model,
  the layers with parameters are re-initialised one after another from the output down, cumulatively, and the
  maps recomputed after each step. Compare each with the original maps by :func:`spearman` rank correlation:
  a method that passes decorrelates quickly (plain gradients, Grad-CAM); one that fails keeps a high
  correlation even with most of the network random. **The finding of Adebayo et al.: guided backpropagation
  (and guided Grad-CAM) fails this check: with the top layers, even the whole classifier re-initialised, its
  maps barely change, because they mostly reconstruct the input (edges) rather than explain the decision**;
  the tests reproduce it on a small CNN. Measured on the demo CNN after 6 epochs (16 shapes images, Spearman
  after re-initialising the classifier, then one more layer): guided backprop 0.84 / 0.74, gradient 0.56 / 0.47.
  Deconvnet, often grouped with guided backprop here (Nie et al. 2018), does *not* keep its maps on these small
  nets: 0.44 / 0.44 on the trained demo CNN, 0.38 on the random CNN of the tests, close to the gradient --
  its ``1{g > 0}`` rule passes the new classifier's signs straight down, while guided backprop's forward masks
  ``1{s > 0}`` keep the image's structure.
* :func:`random_logit` (Adebayo et al. 2018; Sixt et al. 2020): the maps for a random *other* class; a
  class-sensitive method gives maps that differ from those of the explained class (low correlation).

The layer order and re-initialisation match Quantus' ``MPRT`` (``layer_order="top_down"``): modules in reverse
registration order, each re-initialised by its own ``reset_parameters()`` (Quantus: modules that have one;
here: modules with parameters of their own, and those without ``reset_parameters`` redrawn from a normal law
with their current mean and standard deviation). Quantus seeds the global generator (``torch.manual_seed(seed +
1)`` before each layer); here the global random streams are forked (:func:`trainviz.core.guard.preserve_rng`) and
seeded with ``seed`` before each layer, so training's random stream is unchanged: ``seed=s`` here draws the
weights of Quantus' ``seed=s - 1``. Quantus' default similarity is Spearman's rank correlation, as here.

Example:
    >>> import torch, torch.nn as nn
    >>> from trainviz.ops.sanity import cascading_randomization, spearman
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ...                     nn.Linear(4, 2)).eval()
    >>> def explain(model, images, targets):
    ...     x = images.clone().requires_grad_(True)
    ...     score = model(x).gather(1, targets[:, None]).sum()
    ...     return torch.autograd.grad(score, x)[0].abs().sum(1)
    >>> x, y = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    >>> steps = cascading_randomization(net, x, y, explain)
    >>> [name for name, _ in steps], steps[0][1].shape
    (['4', '0'], torch.Size([2, 8, 8]))
    >>> spearman(explain(net, x, y), explain(net, x, y)).tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

from trainviz.core.guard import preserve_rng

__all__ = [
    "Explain",
    "cascade_steps",
    "cascading_randomization",
    "random_classes",
    "random_logit",
    "randomizable_layers",
    "randomization_blocks",
    "spearman",
]

MIN_BLOCKS, MAX_BLOCKS = 3, 8
"""The block cascade's number of steps: split the network until it has at least 3 blocks, never past 8."""

Explain = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""``explain(model, images, targets) -> maps``: the saliency maps ``(N, H, W)`` of ``images`` for ``targets``."""


def _ranks(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Average ranks (1-based, ties get the mean of their positions) of each row of ``x``."""
    x = x.contiguous()
    ordered = x.sort(dim=1).values
    low = torch.searchsorted(ordered, x, side="left")
    high = torch.searchsorted(ordered, x, side="right")
    return (low + high + 1).to(dtype) / 2


def spearman(a: torch.Tensor, b: torch.Tensor, *, absolute: bool = False) -> torch.Tensor:
    """Spearman rank correlation of each pair of maps ``a[i]``, ``b[i]`` over their flattened values (ties take
    their average rank, as ``scipy.stats.spearmanr``); NaN when a map is constant or holds a NaN.

    Args:
        a, b: two stacks of maps of the same shape (any trailing dimensions).
        absolute: correlate ``|a|`` and ``|b|`` (Adebayo et al. report both, for signed attributions).

    Shape:
        ``(N, ...)``, ``(N, ...)`` -> ``(N,)``

    Example:
        >>> import torch
        >>> from trainviz.ops.sanity import spearman
        >>> [round(v, 6) for v in spearman(torch.tensor([[1.0, 2, 3, 4]]), torch.tensor([[10.0, 20, 30, 0]])).tolist()]
        [-0.2]
    """
    if a.shape != b.shape or a.dim() < 2 or a.shape[0] == 0:
        raise ValueError(
            f"Expected two stacks of maps of the same shape (N, ...), got {tuple(a.shape)} and {tuple(b.shape)}."
        )
    x, y = a.flatten(1), b.flatten(1).to(a.device)
    if absolute:
        x, y = x.abs(), y.abs()
    dtype = torch.float32 if x.device.type == "mps" else torch.float64
    rx, ry = _ranks(x, dtype), _ranks(y, dtype)
    rx = rx - rx.mean(1, keepdim=True)
    ry = ry - ry.mean(1, keepdim=True)
    rho = (rx * ry).sum(1) / (rx.norm(dim=1) * ry.norm(dim=1))
    bad = x.isnan().any(1) | y.isnan().any(1)
    rho = torch.where(bad, torch.full_like(rho, float("nan")), rho)
    return rho.to(torch.promote_types(a.dtype, torch.float32)) if a.is_floating_point() else rho.float()


def randomizable_layers(model: nn.Module) -> list[str]:
    """Names of the modules with parameters of their own, in the top-down order of the cascade: reverse
    registration order (``model.named_modules()`` reversed; a module shared under two names counts once).

    Example:
        >>> import torch.nn as nn
        >>> from trainviz.ops.sanity import randomizable_layers
        >>> randomizable_layers(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.BatchNorm2d(2), nn.Linear(2, 2)))
        ['3', '2', '0']
    """
    return [name for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))][::-1]


def _members(name: str, layers: Sequence[str]) -> list[str]:
    """The modules with parameters of their own at or under ``name`` (all of them for the root ``""``)."""
    return [n for n in layers if name == "" or n == name or n.startswith(name + ".")]


def _split(name: str, modules: dict[str, nn.Module], layers: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``name``'s parts in registration order: its own parameters (when it has any) and each child with
    parameters, each as ``(name, its members)``; an own-parameter part is ``(name, [name])``."""
    parts = [(name, [name])] if name in layers else []
    for child, _ in modules[name].named_children():
        full = f"{name}.{child}" if name else child
        if full in modules and (members := _members(full, layers)):
            parts.append((full, members))
    return parts


def randomization_blocks(
    model: nn.Module, *, min_blocks: int = MIN_BLOCKS, max_blocks: int = MAX_BLOCKS
) -> list[tuple[str, list[str]]]:
    """The blocks of the block cascade, top down, each as ``(block name, its modules with parameters of their own,
    top down)``; together they are :func:`randomizable_layers`, in the same order.

    The rule: start from the whole model as one block and go down through the wrappers (a module with no
    parameters of its own and one child with parameters, such as the LightningModule around ``net``).
    While there are fewer than ``min_blocks`` blocks, the block with the most modules that can be split (into its
    own parameters and its children with parameters) without passing ``max_blocks`` is split. So a ResNet inside a
    LightningModule gives its top-level children ``net.fc``, ``net.layer4`` ... ``net.layer1``, ``net.bn1``,
    ``net.conv1`` (7 steps, against 41 modules with parameters for resnet18: Adebayo et al. randomise Inception v3
    block by block the same way), and ``Sequential(features, classifier)`` splits the larger of the two.

    Example:
        >>> import torch.nn as nn
        >>> from trainviz.ops.sanity import randomization_blocks
        >>> stage = lambda: nn.Sequential(nn.Conv2d(2, 2, 3), nn.BatchNorm2d(2))
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), stage(), stage(), nn.Linear(2, 2))
        >>> [(name, members) for name, members in randomization_blocks(net)]
        [('3', ['3']), ('2', ['2.1', '2.0']), ('1', ['1.1', '1.0']), ('0', ['0'])]
    """
    layers = randomizable_layers(model)
    modules = dict(model.named_modules())
    if not layers:
        return []

    def parts_of(block: tuple[str, list[str]]) -> list[tuple[str, list[str]]]:
        name, members = block
        return [] if members == [name] else _split(name, modules, layers)  # a module's own parameters: one block

    def unwrap(block: tuple[str, list[str]]) -> tuple[str, list[str]]:
        while len(parts := parts_of(block)) == 1:
            block = parts[0]
        return block

    blocks = [unwrap(("", list(layers)))]
    while len(blocks) < min_blocks:
        options = []
        for i, (name, members) in enumerate(blocks):
            parts = parts_of((name, members))
            if len(parts) > 1 and len(blocks) - 1 + len(parts) <= max_blocks:
                options.append((len(members), -i, i, parts))
        if not options:
            break
        _, _, i, parts = max(options, key=lambda o: (o[0], o[1]))
        blocks[i : i + 1] = parts
    order = {n: k for k, n in enumerate(layers)}  # top down
    blocks = sorted(blocks, key=lambda b: min(order[m] for m in b[1]))
    return [(name, sorted(members, key=order.__getitem__)) for name, members in blocks]


def cascade_steps(model: nn.Module, groups: Sequence[Sequence[str]]) -> list[tuple[str, list[str]]]:
    """The steps of a cascade over user-given ``groups`` (each a list of module names, top down): step ``k`` is
    named by its group's names joined by ``"+"`` and re-initialises the modules with parameters of their own at or
    under those names that the steps before it have not, top down.

    Raises:
        ValueError: a name that is no module of ``model`` (the message lists the valid names: the blocks of
            :func:`randomization_blocks` and the modules with parameters), or a step that re-initialises nothing.

    Example:
        >>> import torch.nn as nn
        >>> from trainviz.ops.sanity import cascade_steps
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.Conv2d(2, 2, 3), nn.ReLU()), nn.Linear(2, 2))
        >>> cascade_steps(net, [["2"], ["1", "0"]])
        [('2', ['2']), ('1+0', ['1.0', '0'])]
    """
    layers = randomizable_layers(model)
    modules = dict(model.named_modules())
    taken: set[str] = set()
    out = []
    for group in groups:
        for name in group:
            if name not in modules:
                listed = list(dict.fromkeys([b for b, _ in randomization_blocks(model)] + layers))
                more = f" ... ({len(listed)} in all)" if len(listed) > 40 else ""
                raise ValueError(
                    f"Layer {name!r} of the sanity groups is not a module of the model; valid names (the blocks, then "
                    f"every module with parameters, top down): {listed[:40]}{more}."
                )
        members = [m for m in layers if m not in taken and any(m in _members(n, layers) for n in group)]
        if not members:
            raise ValueError(
                f"Expected the sanity group {list(group)!r} to have parameters left to randomise; it has none."
            )
        taken.update(members)
        out.append(("+".join(group), members))
    return out


@torch.no_grad()
def _reinitialize(module: nn.Module, generator: torch.Generator) -> None:
    """``module.reset_parameters()`` (the global streams are forked and seeded by the caller); a module without
    one gets each own parameter redrawn from a normal law with that parameter's mean and standard deviation."""
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        reset()
        return
    for p in module.parameters(recurse=False):
        values = p.detach().float()
        std = values.std() if values.numel() > 1 else values.abs().mean()
        noise = torch.randn(p.shape, generator=generator, device=generator.device, dtype=torch.float32)
        p.copy_((values.mean() + std * noise.to(p.device)).to(p.dtype))


def cascading_randomization(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    explain: Explain,
    *,
    layers: Sequence[str] | None = None,
    steps: Sequence[tuple[str, Sequence[str]]] | None = None,
    seed: int = 0,
) -> list[tuple[str, torch.Tensor]]:
    """Cascading randomisation (Adebayo et al. 2018, section 3.1): the maps after re-initialising the layers
    from the top down, cumulatively, on a deep copy of ``model`` (the model itself is never changed).

    Step ``k`` re-initialises layer ``k`` (its ``reset_parameters()``, or a redraw; see the module docstring) in
    the copy that already has layers ``0..k-1`` re-initialised, then calls ``explain(copy, images, targets)``.
    The global random streams are forked and seeded with ``seed`` before each layer, so the draw is reproducible
    and training's random stream is unchanged. The copy keeps the model's train/eval flags (run it in eval mode,
    as a probe does). Cost: one deep copy, and one ``explain`` per layer.

    Args:
        model: the classifier returning logits (e.g. a :class:`~trainviz.core.outputs.LogitsModel`).
        images: model inputs.
        targets: class explained per image.
        explain: ``explain(model, images, targets) -> maps``; any tensor it returns is kept as is (e.g. the maps of
            several methods stacked, to randomise once for all of them).
        layers: names of the layers to randomise, in this order; ``None``: every module with parameters of its
            own, top down (:func:`randomizable_layers`).
        steps: instead of ``layers``, a cascade by groups: ``[(step name, module names), ...]``
            (:func:`randomization_blocks`, :func:`cascade_steps`); each step re-initialises its modules in order,
            each exactly as the per-layer cascade does (the streams seeded with ``seed`` before each module), then
            calls ``explain`` once. So when the steps' modules, in order, are the per-layer cascade's layers, the
            maps after each step are the per-layer cascade's after that step's last module, bit for bit.
        seed: seed of the re-initialisation.

    Returns:
        ``[(layer name, maps after randomising down to that layer), ...]`` in cascade order.

    Raises:
        ValueError: an unknown layer name, or a layer without parameters.

    Shape:
        images ``(N, C, H, W)``, targets ``(N,)`` -> each maps as ``explain`` returns, e.g. ``(N, H, W)``
    """
    if layers is not None and steps is not None:
        raise ValueError("Expected `layers` (one module a step) or `steps` (groups of modules), not both.")
    if steps is None:
        names = randomizable_layers(model) if layers is None else list(layers)
        plan = [(name, [name]) for name in names]
    else:
        plan = [(str(step), list(members)) for step, members in steps]
        names = [m for _, members in plan for m in members]
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            close = [n for n in modules if n and (name in n or n in name)][:5]
            raise ValueError(f"Layer {name!r} not found in the model; close matches: {close}.")
        if not any(True for _ in modules[name].parameters()):
            raise ValueError(f"Expected layer {name!r} to have parameters to randomise; it has none.")
    randomized = copy.deepcopy(model)
    copies = dict(randomized.named_modules())
    device = next(iter(randomized.parameters()), torch.empty(0)).device
    out = []
    for step, members in plan:
        for name in members:
            with preserve_rng():
                torch.manual_seed(seed)
                generator = torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(seed)
                _reinitialize(copies[name], generator)
        out.append((step, explain(randomized, images, targets)))
    return out


def random_classes(
    targets: torch.Tensor,
    num_classes: int,
    generator: torch.Generator | None = None,
    positions: torch.Tensor | Sequence[int] | None = None,
) -> torch.Tensor:
    """One class per image drawn uniformly among the ``num_classes - 1`` classes other than its target.

    The draw is one vector, image ``i`` taking its element ``i``; with ``positions`` (each image's place in a
    larger set, ``None``: ``0..N-1``) the vector is drawn for ``max(positions) + 1`` images and image ``i``
    takes element ``positions[i]``, so a part of a set gets the classes the whole set gives those images.

    Shape:
        ``(N,)`` -> ``(N,)`` on the targets' device

    Example:
        >>> import torch
        >>> from trainviz.ops.sanity import random_classes
        >>> t = torch.tensor([0, 1, 2, 0])
        >>> bool((random_classes(t, 3, torch.Generator().manual_seed(0)) != t).all())
        True
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"Expected `num_classes` to be an int >= 2, got {num_classes!r}.")
    if targets.dim() != 1 or targets.is_floating_point():
        raise ValueError(f"Expected integer `targets` of shape (N,), got {targets.dtype} {tuple(targets.shape)}.")
    where = generator.device if generator is not None else torch.device("cpu")
    places = None if positions is None else torch.as_tensor(positions, dtype=torch.long).reshape(-1)
    if places is not None and (places.numel() != targets.numel() or (places.numel() and places.min() < 0)):
        raise ValueError(f"Expected `positions` to be {targets.numel()} non-negative ints, got {places.tolist()}.")
    size = targets.shape if places is None else (int(places.max()) + 1 if places.numel() else 0,)
    draw = torch.randint(0, num_classes - 1, size, generator=generator, device=where)
    draw = (draw if places is None else draw[places.to(where)]).to(targets.device)
    return draw + (draw >= targets).long()


def random_logit(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    explain: Explain,
    *,
    num_classes: int,
    generator: torch.Generator | None = None,
    positions: torch.Tensor | Sequence[int] | None = None,
) -> torch.Tensor:
    """The random-logit test's maps: ``explain`` for a random class other than each image's target
    (:func:`random_classes` from ``generator``, for the images at ``positions`` of a larger set when given).
    Their :func:`spearman` correlation with the maps of the targets is the score: near 1, the method does not
    depend on the class it explains.

    Quantus' ``RandomLogit`` draws the other class the same way (uniformly among the others) from numpy's global
    generator and compares by SSIM; here the draw comes from ``generator`` and the comparison is the caller's.

    Shape:
        images ``(N, C, H, W)``, targets ``(N,)`` -> maps as ``explain`` returns, e.g. ``(N, H, W)``
    """
    return explain(model, images, random_classes(targets, num_classes, generator, positions))
