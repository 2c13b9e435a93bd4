"""Data-free trigger scans: which class a small trigger reaches, and the signals the suspect rules build on them.

A backdoor's target class is reached from other classes by a small trigger of the backdoor's form; a natural
neighbour (shirt beside T-shirt) is reached from a few classes only. The scans here optimise (or, for the sinusoid,
simply add) small universal triggers on synthetic inputs inverted from a model's BatchNorm statistics and measure
how often they reach each class: a pooled patch scan (:func:`target_scan`), a per-source scan of patches, blends or
warps (:func:`stratified_scan`), a fixed sinusoidal stripe against a shuffled control (:func:`sine_scan`, a
development probe), and, for a user with labelled clean images, the original's recall per class
(:func:`recall_override`). :func:`reverse_trigger` and :func:`trigger_rate` fit one trigger toward a class and
measure it on any model (the probe of :mod:`otbr.selection`, the checks of :mod:`otbr.repair`).

:mod:`otbr.selection` combines these into the suspect rules (``SUSPECT_RULES`` there) and the choice of γ or n.
Nothing here reads poisoned data or a trigger: the inputs are a model, synthetic inputs and the classes the model
gives them (and, for the recall, labelled clean images).

Example:
    >>> from otbr.models import create_model
    >>> net = create_model("tinycnn", num_classes=3, in_channels=1).eval()
    >>> x = torch.rand(12, 1, 8, 8)
    >>> target_scan(net, x, net(x).argmax(1), 3, steps=1, per_class=4).shape
    torch.Size([3])
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from otbr.device import model_device
from otbr.metrics import predict
from otbr.synthesis import frozen

log = logging.getLogger(__name__)

#: The warp override (suspect rule ``"warp"``, :func:`warp_override`): the largest displacement of the warp scan,
#: in pixels, and the median over source classes at or above which one class alone overrides the patch suspect.
#: Set after a pilot on four zoo models and before the 65-model probe (``benchmarks/warp_scan_explore.py``).
WARP_PIXELS = 1.0
WARP_DECISIVE = 0.9
#: The sinusoid scan (:func:`sine_scan`, a DEVELOPMENT probe, not in any suspect rule): SIG's published amplitude
#: (40/255), and the contrast that names a class (:func:`sine_class`), both fixed before its first committed run. Not
#: adopted: as a suspect override it fixed 3 SIG suspects and broke 4 others over 70 zoo models
#: (``benchmarks/results/sine-scan-explore-fmnist.md``).
SINE_AMPLITUDE = 40 / 255
SINE_DECISIVE = 0.5
#: The repair's stripe pass (:func:`stripe_scan`): synthetic inputs it reads and sinusoid phases per frequency (half
#: of :func:`sine_scan`'s defaults each, for time: ≈ 1 min per PreAct-18 model on one CPU thread).
STRIPE_INPUTS, STRIPE_PHASES = 256, 4
#: The recall signal (suspect rule ``"recall"``, :func:`recall_override`; it needs labelled clean images, so it is
#: TSBD's only, and its default, ``otbr.defenses.tsbd.SUSPECT_RULE``): a class whose clean recall on the original is
#: below this share of the other classes' median recall. A clean-label backdoor (SIG) poisons the target class's own
#: images, and a model that learns the trigger as that class's feature misses its clean images. Fixed before its
#: first run (``benchmarks/recall_suspect_explore.py``); on the 74 zoo models the SIG targets sat at 0.00–0.05 and
#: every other model's lowest class at 0.48 or more of the others' median.
RECALL_FLOOR = 0.4
#: A class needs at least this many labelled images for its recall to count (fewer: its recall is left out of the
#: rule, as a class with none). Not from any result: 0 of 3 is no evidence; the benchmark's 5 % subset has ~300.
RECALL_MIN_IMAGES = 10


def patch_masks(logits: torch.Tensor, budget: float) -> torch.Tensor:
    """Soft masks from ``logits`` (one per leading index), each scaled down so its mean area is at most ``budget``.

    Example:
        >>> patch_masks(torch.zeros(2, 1, 4, 4), 0.25).flatten(1).mean(1).tolist()
        [0.25, 0.25]
    """
    m = torch.sigmoid(logits)
    area = m.flatten(1).mean(1).clamp_min(1e-12).view(-1, *([1] * (m.dim() - 1)))
    return m * torch.clamp(budget / area, max=1.0)


def augment(x: torch.Tensor, gen: torch.Generator, *, shift: int = 2, noise: float = 0.1) -> torch.Tensor:
    """A random shift (±``shift`` pixels, wrapping) of the whole batch plus Gaussian pixel noise, clamped to [0, 1].

    Used while reverse-engineering a trigger and when measuring it: a real backdoor trigger survives such
    perturbations, an adversarial pattern fitted to a few synthetic inputs mostly does not, and noisy inputs
    are less over-confident than raw BatchNorm inversions.

    Example:
        >>> augment(torch.zeros(2, 1, 4, 4), torch.Generator().manual_seed(0)).shape
        torch.Size([2, 1, 4, 4])
    """
    if shift > 0:
        dx, dy = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=gen))
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    if noise > 0:
        x = x + noise * torch.randn(x.shape, generator=gen).to(x.device)
    return x.clamp(0.0, 1.0)


def reverse_trigger(
    model: torch.nn.Module,
    images: torch.Tensor,
    target: int,
    *,
    kind: str = "patch",
    budget: float = 0.05,
    alpha: float = 0.1,
    steps: int = 100,
    lr: float = 0.1,
    batch_size: int = 256,
    robust: bool = True,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A universal trigger ``(mask, pattern)`` that sends ``images`` to ``target`` on ``model``.

    ``x' = (1 − m)·x + m·p`` with one pattern ``p`` (C×H×W in [0, 1]) and one mask ``m``: for ``kind="patch"``
    a free H×W mask whose mean is at most ``budget`` (Neural-Cleanse-style, with a hard area budget instead of
    a tuned L1 weight); for ``kind="blend"`` the constant ``alpha`` over the whole image (a blended trigger).
    Optimised with Adam on the cross-entropy to ``target``; with ``robust`` each step sees the images through
    :func:`augment`, which favours triggers that, like a real backdoor's, survive small shifts and noise.
    A backdoored model has such a trigger within a small budget; the rate at which a *defended* candidate
    still follows it (:func:`trigger_rate`) estimates the backdoor left. The model is only read.

    Example:
        >>> from otbr.models import create_model
        >>> net = create_model("tinycnn", num_classes=4, in_channels=1).eval()
        >>> m, p = reverse_trigger(net, torch.rand(8, 1, 8, 8), 0, steps=2)
        >>> m.shape, p.shape
        (torch.Size([1, 1, 8, 8]), torch.Size([1, 1, 8, 8]))
    """

    if kind not in ("patch", "blend"):
        raise ValueError(f"kind must be patch or blend, got {kind!r}")
    device = model_device(model)
    shape = tuple(images.shape[1:])
    a = torch.full((1, 1, *shape[1:]), -2.0, device=device, requires_grad=kind == "patch")
    pz = torch.zeros((1, *shape), device=device, requires_grad=True)
    opt = torch.optim.Adam([a, pz] if kind == "patch" else [pz], lr=lr)
    gen = torch.Generator().manual_seed(seed)

    def mask() -> torch.Tensor:
        return patch_masks(a, budget) if kind == "patch" else torch.full_like(a, alpha)

    with frozen(model):
        for _ in range(steps):
            idx = torch.randperm(len(images), generator=gen)[:batch_size]
            xb = images[idx].to(device)
            if robust:
                xb = augment(xb, gen)
            m = mask()
            out = model((1 - m) * xb + m * torch.sigmoid(pz))
            loss = torch.nn.functional.cross_entropy(out, torch.full((len(xb),), target, device=device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        return mask().detach().cpu(), torch.sigmoid(pz).detach().cpu()


def _fit_triggers(model: torch.nn.Module, apply: Callable[[], torch.Tensor], labels: torch.Tensor,
                  params: list[torch.Tensor], *, steps: int, lr: float) -> torch.Tensor:
    """Adam on ``params`` (trigger logits) for ``steps`` steps so that ``model(apply())`` gives ``labels``, the
    model frozen; then, per input, whether the final triggers reach its label (float64, on the CPU)."""
    opt = torch.optim.Adam(params, lr=lr)
    with frozen(model):
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(model(apply()), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            return (model(apply()).argmax(1) == labels).double().cpu()


def target_scan(
    model: torch.nn.Module,
    synthetic: torch.Tensor,
    reference: torch.Tensor,
    num_classes: int,
    *,
    budget: float = 0.05,
    steps: int = 50,
    per_class: int = 32,
    lr: float = 0.1,
    seed: int = 0,
) -> torch.Tensor:
    """Per class c: how well a trigger within ``budget`` sends other-class synthetic inputs to c.

    One universal trigger per class is optimised, all classes together in one batch of
    ``num_classes · per_class`` inputs (each class's sources are synthetic inputs the model assigns to
    other classes). A backdoor target needs only a small trigger, so its rate stands out (the idea of Neural
    Cleanse, with a fixed area budget and no per-class loop). ``seed`` draws the sources. Returns the success
    rate per class.

    Example:
        >>> from otbr.models import create_model
        >>> net = create_model("tinycnn", num_classes=3, in_channels=1).eval()
        >>> target_scan(net, torch.rand(12, 1, 8, 8), torch.arange(12) % 3, 3, steps=1, per_class=4).shape
        torch.Size([3])
    """

    device = model_device(model)
    gen = torch.Generator().manual_seed(seed)
    src, tgt = [], []
    for c in range(num_classes):
        pool = synthetic[reference != c]
        if len(pool) == 0:
            pool = synthetic
        idx = torch.randint(0, len(pool), (per_class,), generator=gen)
        src.append(pool[idx])
        tgt.append(torch.full((per_class,), c))
    x, y = torch.cat(src).to(device), torch.cat(tgt).to(device)
    shape = tuple(synthetic.shape[1:])
    a = torch.full((num_classes, 1, *shape[1:]), -2.0, device=device, requires_grad=True)
    pz = torch.zeros((num_classes, *shape), device=device, requires_grad=True)

    def apply() -> torch.Tensor:
        m = patch_masks(a, budget).repeat_interleave(per_class, 0)
        return (1 - m) * x + m * torch.sigmoid(pz).repeat_interleave(per_class, 0)

    hit = _fit_triggers(model, apply, y, [a, pz], steps=steps, lr=lr)
    return hit.view(num_classes, per_class).mean(1)


def stratified_scan(model: torch.nn.Module, synthetic: torch.Tensor, reference: torch.Tensor, num_classes: int, *,
                    kind: str = "patch", budget: float = 0.05, per_source: int = 8, steps: int = 50, lr: float = 0.1,
                    seed: int = 0, grid: int = 4) -> torch.Tensor:
    """Rates ``R[c, s]``: how often the universal trigger toward c sends class-s synthetic inputs to c.

    One trigger per target class (a patch of area ``budget``; with ``kind="blend"`` a whole-image blend of weight
    ``budget``; with ``kind="warp"`` a smooth displacement field of at most ``budget`` pixels, bicubic-upsampled
    from a ``grid``×``grid`` control grid, the form of a warping trigger such as WaNet's), each optimised on
    ``per_source`` inputs of *every* other class (the classes ``reference`` gives them), all targets in one batch.
    Where :func:`target_scan` pools the sources, this keeps them apart: a backdoor trigger works from every source
    class, while a natural neighbour (shirt next to T-shirt, pullover and coat) is reached from a few. ``R[c, c]``
    and sources with no synthetic input are NaN.

    Example:
        >>> from otbr.models import create_model
        >>> net = create_model("tinycnn", num_classes=3, in_channels=1).eval()
        >>> stratified_scan(net, torch.rand(12, 1, 8, 8), torch.arange(12) % 3, 3, steps=1, per_source=2).shape
        torch.Size([3, 3])
    """

    if kind not in ("patch", "blend", "warp"):
        raise ValueError(f"stratified_scan: kind must be patch, blend or warp, got {kind!r}")
    device = model_device(model)
    gen = torch.Generator().manual_seed(seed)
    src, tgt, cell = [], [], []
    for c in range(num_classes):
        for s in range(num_classes):
            pool = synthetic[reference == s]
            if s == c or len(pool) == 0:
                continue
            src.append(pool[torch.randint(0, len(pool), (per_source,), generator=gen)])
            tgt.append(torch.full((per_source,), c))
            cell.append(torch.full((per_source,), c * num_classes + s))
    if not src:
        return torch.full((num_classes, num_classes), float("nan"), dtype=torch.float64)
    x, y, where = torch.cat(src).to(device), torch.cat(tgt).to(device), torch.cat(cell)
    shape = tuple(synthetic.shape[1:])
    if kind == "warp":
        apply, params = _warp_triggers(x, y, num_classes, budget, grid)
    else:
        a = torch.full((num_classes, 1, *shape[1:]), -2.0, device=device, requires_grad=True)
        pz = torch.zeros((num_classes, *shape), device=device, requires_grad=True)
        params = [a, pz] if kind == "patch" else [pz]

        def apply() -> torch.Tensor:
            if kind == "patch":
                m = patch_masks(a, budget)
            else:
                m = torch.full((num_classes, 1, *shape[1:]), budget, device=device)
            return (1 - m[y]) * x + m[y] * torch.sigmoid(pz)[y]

    hit = _fit_triggers(model, apply, y, params, steps=steps, lr=lr)
    sums = torch.zeros(num_classes * num_classes, dtype=torch.float64).index_add_(0, where, hit)
    counts = torch.zeros(num_classes * num_classes, dtype=torch.float64).index_add_(0, where, torch.ones_like(hit))
    return (sums / counts).view(num_classes, num_classes)  # 0/0 → NaN on the diagonal and for missing sources


def _warp_triggers(x: torch.Tensor, y: torch.Tensor, num_classes: int, pixels: float,
                   grid: int) -> tuple[Callable[[], torch.Tensor], list[torch.Tensor]]:
    """One learnable warp per class for :func:`stratified_scan`: a ``grid``×``grid`` control grid, bicubic-upsampled
    to the image and bounded by ``pixels`` through a tanh (after the upsampling, which can overshoot), applied with
    ``grid_sample`` (border padding); input i is warped by its label's field. Returns the function that warps ``x``
    and its parameters."""
    h, w = x.shape[-2:]
    ctrl = torch.zeros((num_classes, 2, grid, grid), device=x.device, requires_grad=True)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=x.device), torch.linspace(-1, 1, w, device=x.device),
                            indexing="ij")
    identity = torch.stack((xs, ys), dim=-1)[None]
    unit = torch.tensor([2 / max(w - 1, 1), 2 / max(h - 1, 1)], device=x.device)  # one pixel, normalised

    def apply() -> torch.Tensor:
        field = pixels * torch.tanh(torch.nn.functional.interpolate(ctrl, size=(h, w), mode="bicubic",
                                                                    align_corners=True)).permute(0, 2, 3, 1)
        return torch.nn.functional.grid_sample(x, (identity + field * unit)[y].clamp(-1, 1), mode="bilinear",
                                               padding_mode="border", align_corners=True)

    return apply, [ctrl]


def class_scores(rates: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per target class: the mean and the median of its :func:`stratified_scan` rates over the source classes
    (NaN cells ignored).

    Example:
        >>> r = torch.tensor([[float("nan"), 1.0, 0.0, 0.2], [0.0, float("nan"), 0.0, 0.0],
        ...                   [0.0, 0.0, float("nan"), 0.0], [0.0, 0.0, 0.0, float("nan")]])
        >>> {k: round(float(v[0]), 2) for k, v in class_scores(r).items()}
        {'mean': 0.4, 'median': 0.2}
    """
    return {"mean": torch.nanmean(rates, 1), "median": torch.nanmedian(rates, 1).values}


def argmax_tiebreak(primary: torch.Tensor, secondary: torch.Tensor) -> int:
    """Arg-max of ``primary``; among tied classes, the one with the larger ``secondary`` (NaN counts as 0).

    Example:
        >>> argmax_tiebreak(torch.tensor([0.5, 0.5, 0.1]), torch.tensor([0.2, 0.3, 0.9]))
        1
    """
    primary, secondary = torch.nan_to_num(primary.double()), torch.nan_to_num(secondary.double())
    tied = (primary >= primary.max() - 1e-9).nonzero().flatten()
    return int(tied[secondary[tied].argmax()])


def stratified_suspects(original: torch.nn.Module, pools: Sequence[torch.Tensor], refs: Sequence[torch.Tensor],
                        num_classes: int, *, budget: float) -> tuple[list[int], int, list[dict[str, list[float]]],
                                                                      dict[str, list[float]]]:
    """The ``"stratified"`` suspect rule: per pool (seed = its index), the patch :func:`stratified_scan`'s median
    over source classes, ties broken by its mean; over several pools, the same rule on the averaged scores.

    Returns each pool's own suspect, the joint suspect, each pool's scores and the averaged scores (rounded, for
    the report; a class with no source at all is ``None``).

    Example:
        >>> from otbr.models import create_model
        >>> net = create_model("tinycnn", num_classes=3, in_channels=1).eval()
        >>> x = [torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)]
        >>> own, joint, per_pool, avg = stratified_suspects(net, x, [net(v).argmax(1) for v in x], 3, budget=0.05)
        >>> len(own), joint in range(3), sorted(avg)
        (2, True, ['mean', 'median'])
    """
    scores = [class_scores(stratified_scan(original, x, r, num_classes, kind="patch", budget=budget, seed=i))
              for i, (x, r) in enumerate(zip(pools, refs, strict=True))]
    own = [argmax_tiebreak(s["median"], s["mean"]) for s in scores]
    joint, avg = averaged_suspect(scores)

    def rounded(d: Mapping[str, torch.Tensor]) -> dict[str, list[float]]:
        return {k: [None if v != v else round(float(v), 4) for v in t] for k, t in d.items()}

    return own, joint, [rounded(s) for s in scores], rounded(avg)


def decisive_class(median: Sequence[float | None] | torch.Tensor, decisive: float = WARP_DECISIVE) -> int | None:
    """The warp override's decision on per-class medians: the one class at or above ``decisive``, else ``None``
    (none, or several; a missing or NaN median counts as below). Pure, so stored medians can be re-scored
    (``benchmarks/warp_scan_explore.py``).

    Example:
        >>> decisive_class([1.0, 0.0, 0.2]), decisive_class([1.0, 0.95, 0.0]), decisive_class([0.5, None])
        (0, None, None)
    """
    top = [c for c, v in enumerate(median) if v is not None and float(v) >= decisive]  # NaN >= x is False
    return top[0] if len(top) == 1 else None


def warp_override(original: torch.nn.Module, synthetic: torch.Tensor, reference: torch.Tensor, num_classes: int, *,
                  patch_suspect: int, pixels: float = WARP_PIXELS, decisive: float = WARP_DECISIVE,
                  seed: int = 0) -> dict[str, Any]:
    """The warp scan of the ``"warp"`` suspect rule: :func:`stratified_scan` with a warp of at most ``pixels``
    pixels; if exactly one class's median over source classes reaches ``decisive``, it is ``"override"`` (else
    ``None``). A warp keeps an image's content, so it reaches a natural neighbour (shirt from T-shirt) only as far as
    a one-pixel shift can, while a model trained on a warping trigger (WaNet) answers it from every source — where
    a patch scan names the neighbour. Returns the per-class median (rounded), the settings, the override
    (:func:`decisive_class`) and ``patch_suspect``, the suspect it would replace (for the report).

    Example:
        >>> from otbr.models import create_model
        >>> net = create_model("tinycnn", num_classes=3, in_channels=1).eval()
        >>> x = torch.rand(12, 1, 8, 8)
        >>> sorted(warp_override(net, x, net(x).argmax(1), 3, patch_suspect=0))
        ['decisive', 'median', 'override', 'patch_suspect', 'pixels']
    """
    median = class_scores(stratified_scan(original, synthetic, reference, num_classes, kind="warp", budget=pixels,
                                          seed=seed))["median"]
    return {"median": [None if v != v else round(float(v), 4) for v in median], "pixels": pixels,
            "decisive": decisive, "override": decisive_class(median, decisive), "patch_suspect": patch_suspect}


def source_rates(pred: torch.Tensor, reference: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``R[c, s]``: the share of the inputs of class s (by ``reference``) that ``pred`` sends to class c; the
    diagonal and classes with no input are NaN (the layout :func:`stratified_scan` returns).

    Example:
        >>> source_rates(torch.tensor([1, 1, 0, 1]), torch.tensor([0, 0, 1, 1]), 2).tolist()
        [[nan, 0.5], [1.0, nan]]
    """
    counts = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    counts.index_put_((pred.cpu(), reference.cpu()), torch.ones(len(pred), dtype=torch.float64), accumulate=True)
    rates = counts / torch.bincount(reference.cpu(), minlength=num_classes).double()  # 0/0 → NaN for empty sources
    return rates.fill_diagonal_(float("nan"))


def sine_scan(model: torch.nn.Module, synthetic: torch.Tensor, reference: torch.Tensor, num_classes: int, *,
              amplitude: float = SINE_AMPLITUDE, phases: int = 8, seed: int = 0) -> dict[str, Any]:
    """How a sinusoidal stripe (SIG's trigger form) moves synthetic inputs, per class, against the same values in
    shuffled order. No optimisation: every stripe ``amplitude·sin(2π·f·j/n + 2π·p/phases)`` along the columns and
    along the rows, for each frequency f = 1 … n/2 − 2 and phase p, is added to all of ``synthetic`` (clamped to
    [0, 1]); per class, the median over source classes of the share sent there (as :func:`class_scores`). The
    control adds the same stripe values in a random order (``seed``), which keeps their size and loses their
    frequency: a class every perturbation reaches (shirt) is reached by both, a class that answers the sinusoid
    itself (a SIG target) by the stripe alone.

    Returns, per class (rounded lists): ``"contrast"``, the largest (stripe − control) median over all stripes;
    ``"rate"``, the largest stripe median; ``"at"``, the stripe of the largest contrast (axis, frequency, phase);
    ``"profile"``, per axis, the contrast per class and frequency (the best phase; ``profile[axis][c][i]`` is at
    ``frequencies[axis][i]``), from which how narrowly a class's answer is tuned can be read; and the settings.

    Example:
        >>> from otbr.models import create_model
        >>> net = create_model("tinycnn", num_classes=3, in_channels=1).eval()
        >>> x = torch.rand(12, 1, 8, 8)
        >>> r = sine_scan(net, x, net(x).argmax(1), 3)
        >>> sorted(r), len(r["contrast"])
        (['amplitude', 'at', 'contrast', 'frequencies', 'phases', 'profile', 'rate'], 3)
    """

    device = model_device(model)
    synthetic = synthetic.to(device)
    gen = torch.Generator().manual_seed(seed)
    h, w = synthetic.shape[-2:]
    contrast = torch.full((num_classes,), -1.0, dtype=torch.float64)
    rate = torch.zeros(num_classes, dtype=torch.float64)
    at: list[Any] = [None] * num_classes
    freqs: dict[str, list[int]] = {}
    profile: dict[str, list[list[float]]] = {}

    def medians(pattern: torch.Tensor) -> torch.Tensor:
        pred = predict(model, (synthetic + pattern.to(device)).clamp(0, 1))
        return torch.nan_to_num(class_scores(source_rates(pred, reference, num_classes))["median"], nan=0.0)

    for axis, n, shape in (("columns", w, (1, 1, 1, w)), ("rows", h, (1, 1, h, 1))):
        j = torch.arange(n, dtype=torch.float64)
        freqs[axis] = list(range(1, max(n // 2 - 1, 1)))
        per_f = torch.full((num_classes, len(freqs[axis])), -1.0, dtype=torch.float64)
        for i, f in enumerate(freqs[axis]):
            for p in range(phases):
                stripe = (amplitude * torch.sin(2 * math.pi * (j * f / n + p / phases))).float()
                shuffled = stripe[torch.randperm(n, generator=gen)]
                on, off = medians(stripe.view(shape)), medians(shuffled.view(shape))
                better = on - off > contrast
                contrast = torch.where(better, on - off, contrast)
                at = [[axis, f, p] if b else a for a, b in zip(at, better.tolist(), strict=True)]
                rate = torch.maximum(rate, on)
                per_f[:, i] = torch.maximum(per_f[:, i], on - off)
        profile[axis] = [[round(float(v), 4) for v in row] for row in per_f.clamp(min=0)]
    return {"contrast": [round(float(v), 4) for v in contrast.clamp(min=0)], "rate": [round(float(v), 4) for v in rate],
            "at": at, "profile": profile, "amplitude": amplitude, "phases": phases, "frequencies": freqs}



def unguarded_class(contrast: Sequence[float], guarded: Sequence[int], decisive: float) -> int | None:
    """The class with the largest ``contrast`` among those not in ``guarded`` (the lowest on a tie), when it is at
    least ``decisive``; else ``None``. Pure, so stored scans can be re-scored.

    Example:
        >>> unguarded_class([0.1, 0.9, 0.5], [1], 0.2), unguarded_class([0.1, 0.9, 0.15], [1], 0.2)
        (2, None)
    """
    held = set(guarded)
    free = [c for c in range(len(contrast)) if c not in held]
    if not free:
        return None
    top = max(free, key=lambda c: (contrast[c], -c))
    return top if contrast[top] >= decisive else None


def stripe_scan(model: torch.nn.Module, synthetic: torch.Tensor, guarded: Sequence[int], num_classes: int, *,
                decisive: float, inputs: int = STRIPE_INPUTS, phases: int = STRIPE_PHASES,
                seed: int = 0) -> dict[str, Any]:
    """:func:`sine_scan` of ``model`` on ``inputs`` of ``synthetic`` (a seeded draw; the model's own classes as the
    sources), and the unguarded class it names (:func:`unguarded_class`). Meant for a model that holds the
    ``guarded`` classes down (the repair's distilled model): a catch-all class that answers any stripe (shirt) can
    then no longer hide the class a sinusoidal trigger (SIG) feeds.

    Returns the per-class ``"contrast"``, the stripe of each (``"at"``), the named ``"class"`` (or ``None``) and the
    settings.

    Example:
        >>> from otbr.models import create_model
        >>> net = create_model("tinycnn", num_classes=3, in_channels=1).eval()
        >>> r = stripe_scan(net, torch.rand(12, 1, 8, 8), [0], 3, decisive=0.2)
        >>> sorted(r), r["class"] in (None, 1, 2)
        (['at', 'class', 'contrast', 'decisive', 'guarded', 'inputs', 'phases'], True)
    """
    xs = synthetic[torch.randperm(len(synthetic), generator=torch.Generator().manual_seed(seed))[:inputs]]
    scan = sine_scan(model, xs, predict(model, xs), num_classes, phases=phases, seed=seed)
    return {"contrast": scan["contrast"], "at": scan["at"],
            "class": unguarded_class(scan["contrast"], guarded, decisive), "decisive": decisive, "inputs": len(xs),
            "phases": phases, "guarded": [int(c) for c in guarded]}


def class_recall(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per class, the share of the images labelled with it that ``pred`` gives it (NaN for a class with none).

    Example:
        >>> class_recall(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 1]), 3).tolist()
        [0.5, 1.0, nan]
    """
    labels = labels.cpu()
    hits = torch.bincount(labels[pred.cpu() == labels], minlength=num_classes).double()
    return hits / torch.bincount(labels, minlength=num_classes).double()  # 0/0 → NaN


def others_median(values: torch.Tensor) -> torch.Tensor:
    """Per entry, the median of the *other* entries (NaN ignored; the lower middle value for an even count).

    Example:
        >>> others_median(torch.tensor([0.75, 0.25, 0.5, float("nan")])).tolist()
        [0.25, 0.5, 0.25, 0.5]
    """
    n = len(values)
    return values.double().expand(n, n).clone().fill_diagonal_(float("nan")).nanmedian(dim=1).values


def recall_class(recall: torch.Tensor, floor: float = RECALL_FLOOR) -> int | None:
    """The class a :func:`class_recall` names: the lowest-recall class among those below ``floor`` × the median
    recall of the *other* classes, else ``None``. Pure, so stored recalls can be re-scored.

    Example:
        >>> recall_class(torch.tensor([0.9, 0.05, 0.6, 0.92, 0.88]))
        1
        >>> recall_class(torch.tensor([0.9, 0.5, 0.6, 0.92, 0.88])) is None
        True
    """
    below = recall.double() < floor * others_median(recall)
    if not bool(below.any()):
        return None
    return int(torch.where(below, recall.double(), torch.full_like(recall.double(), float("inf"))).argmin())


def recall_override(original: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
                    scan_suspect: int, floor: float = RECALL_FLOOR,
                    min_images: int = RECALL_MIN_IMAGES) -> dict[str, Any]:
    """The suspect rule ``"recall"``: ``scan_suspect`` unless the original's recall on the labelled clean ``images``
    names a class (:func:`recall_class`), which then replaces it (logged). Classes with fewer than ``min_images``
    images are left out of the rule. Returns the per-class recall, the named class (or ``None``), the floor, the
    classes left out (``"few_images"``), the scan's suspect and the resulting ``"suspect"``."""

    recall = class_recall(predict(original, images), labels, num_classes)
    few = torch.bincount(labels.cpu(), minlength=num_classes) < min_images
    named = recall_class(recall.masked_fill(few, float("nan")), floor)
    if named is not None and named != scan_suspect:
        log.info("recall override: the original gets %.0f %% of class %d's clean images right (the other classes' "
                 "median %.0f %%); suspect %d → %d", 100 * float(recall[named]), named,
                 100 * float(others_median(recall)[named]), scan_suspect, named)
    return {"recall": [round(float(v), 4) for v in recall], "named": named, "floor": floor,
            "few_images": torch.nonzero(few).flatten().tolist(), "scan_suspect": scan_suspect,
            "suspect": scan_suspect if named is None else named}


def sine_class(contrast: Sequence[float], decisive: float = SINE_DECISIVE) -> int | None:
    """The class a :func:`sine_scan` names: the arg-max of its contrast when that is unique and at least
    ``decisive``, else ``None``. Pure, so stored scans can be re-scored.

    Example:
        >>> sine_class([0.6, 0.2, 0.04]), sine_class([0.6, 0.6, 0.0]), sine_class([0.3, 0.1])
        (0, None, None)
    """
    top = max(contrast)
    tied = [c for c, v in enumerate(contrast) if v >= top - 1e-9]
    return tied[0] if len(tied) == 1 and top >= decisive else None


def averaged_suspect(scores: Sequence[Mapping[str, torch.Tensor]]) -> tuple[int, dict[str, torch.Tensor]]:
    """The stratified rule over several sets' :func:`class_scores`: their median and mean averaged (NaN ignored),
    then the median's arg-max, ties broken by the mean. Returns the suspect and the averaged scores.

    Example:
        >>> averaged_suspect([{"median": torch.tensor([0.5, 0.0]), "mean": torch.tensor([0.5, 0.9])},
        ...                   {"median": torch.tensor([0.0, 0.5]), "mean": torch.tensor([0.1, 0.5])}])[0]
        1
    """
    avg = {k: torch.nanmean(torch.stack([s[k].double() for s in scores]), 0) for k in ("median", "mean")}
    return argmax_tiebreak(avg["median"], avg["mean"]), avg


def trigger_rate(model: torch.nn.Module, images: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor,
                 target: int, *, robust: bool = True, top: int = 1, batch_size: int = 512,
                 seed: int = 12345) -> float:
    """Fraction of ``images`` that ``model`` sends to ``target`` once the trigger ``(mask, pattern)`` is applied.

    With ``top`` > 1, the fraction on which ``target`` is among the model's ``top`` highest logits (a softer
    reading: a weakened backdoor still lifts the target near the top). With ``robust`` the images first go
    through one fixed :func:`augment` (seeded by ``seed``), the same for every model.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, m, p = torch.rand(6, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
        >>> trigger_rate(net, x, m, p, 0, top=3)
        1.0
    """

    if top < 1:
        raise ValueError(f"trigger_rate: top must be ≥ 1, got {top}")
    if robust:
        images = augment(images, torch.Generator().manual_seed(seed))
    device = model_device(model)
    hits = 0
    with frozen(model), torch.no_grad():
        for xb in images.split(batch_size):
            xb = xb.to(device)
            out = model((1 - mask.to(device)) * xb + mask.to(device) * pattern.to(device))
            above = (out > out[:, target:target + 1]).sum(1)  # classes ranked above the target
            hits += int((above < top).sum())
    return hits / max(len(images), 1)
