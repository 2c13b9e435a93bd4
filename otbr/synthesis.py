"""Data-free synthetic inputs inverted from a model's BatchNorm statistics.

A trained network's BatchNorm layers remember the mean and variance of the
features its training data produced. Optimising a batch of images so that the
features they produce match those statistics (and so that the network assigns
them chosen classes, under smoothness priors) yields inputs that look, to the
network, like its training data — without reading any data (DeepInversion,
Yin et al., CVPR 2020). The toolkit uses them to estimate, with no data, how
much clean behaviour a pruned or repaired model keeps (:mod:`otbr.selection`)
and as the transfer set of the data-free repair (:mod:`otbr.repair`).

Images are parametrised through a sigmoid so they always lie in [0, 1] (the
range every toolkit model takes). Classes are assigned round-robin, so every
class gets the same number of images.

Beware: inverting a backdoored model toward its target class can reproduce the
trigger; callers that care (the repair) measure and guard against it.

Example:
    >>> import torch
    >>> from otbr.models import create_model, Normalized
    >>> net = Normalized(create_model("tinycnn", num_classes=4, in_channels=1), (0.5,), (0.25,)).eval()
    >>> syn = synthesize(net, 8, (1, 8, 8), steps=3, progress=False)
    >>> syn.x.shape, syn.y.tolist()
    (torch.Size([8, 1, 8, 8]), [0, 1, 2, 3, 0, 1, 2, 3])
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from otbr.device import model_device
from otbr.errors import OtbrError
from otbr.models.registry import output_classes

log = logging.getLogger(__name__)


@dataclass
class Synthetic:
    """Synthetic images ``x`` in [0, 1] with the classes ``y`` they were optimised toward."""

    x: torch.Tensor
    y: torch.Tensor
    info: dict = field(default_factory=dict)


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients inside the block; mode and ``requires_grad`` flags restored after.

    Example:
        >>> net = nn.Linear(2, 2)
        >>> with frozen(net):
        ...     net.weight.requires_grad
        False
        >>> net.weight.requires_grad, net.training
        (True, True)
    """
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        yield model
    finally:
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)
        model.train(was_training)


@contextlib.contextmanager
def _removing(handles: list) -> Iterator[None]:
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that track running statistics."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]


def synthesize(
    model: nn.Module,
    n: int,
    input_shape: Sequence[int],
    *,
    num_classes: int | None = None,
    classes: Sequence[int] | None = None,
    steps: int = 200,
    lr: float = 0.1,
    bn_weight: float = 1.0,
    tv_weight: float = 1e-3,
    l2_weight: float = 1e-5,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> Synthetic:
    """Invert ``n`` images of shape ``input_shape`` from ``model``'s BatchNorm statistics.

    Loss per batch: Σ_BN (‖μ_batch − μ_running‖₂ + ‖σ²_batch − σ²_running‖₂) · ``bn_weight``
    + cross-entropy to the assigned classes + total-variation and L2 image priors.
    The model is only read (eval mode, parameters untouched).

    Args:
        model: the network (takes images in [0, 1]); it must hold BatchNorm layers.
        n: number of images.
        input_shape: ``(C, H, W)``.
        num_classes: classes to assign round-robin (inferred when ``None``).
        classes: assign these classes round-robin instead of all ``num_classes`` (e.g. one class).
        steps: Adam steps per batch.
        lr: Adam learning rate on the image logits.
        batch_size: images optimised together (BN statistics are matched per batch).
        seed: seed of the initial images.
        progress: tqdm bar.
    """
    if n < 1 or steps < 0 or batch_size < 2:
        raise OtbrError(f"synthesize: need n ≥ 1, steps ≥ 0, batch_size ≥ 2 (got {n}, {steps}, {batch_size})")
    bns = bn_layers(model)
    if not bns:
        raise OtbrError("BatchNorm inversion needs a model with BatchNorm layers (running statistics)")
    shape = tuple(int(s) for s in input_shape)
    device = model_device(model)
    k = num_classes or output_classes(model, shape)
    cycle = torch.arange(k) if classes is None else torch.as_tensor(list(classes), dtype=torch.long)
    if len(cycle) == 0 or int(cycle.min()) < 0 or int(cycle.max()) >= k:
        raise OtbrError(f"synthesize: classes must be non-empty and in [0, {k}), got {cycle.tolist()}")
    stats: list[torch.Tensor] = []

    def hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        h = inputs[0]
        dims = [0, *range(2, h.dim())]
        mean = h.mean(dims)
        var = h.var(dims, unbiased=False)
        stats.append(torch.linalg.vector_norm(mean - mod.running_mean)
                     + torch.linalg.vector_norm(var - mod.running_var))

    gen = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    t0 = time.perf_counter()
    last = {}
    handles = [b.register_forward_hook(hook) for b in bns]
    with frozen(model), _removing(handles):
        starts = range(0, n, batch_size)
        bar = tqdm(total=len(starts) * steps, desc="BN inversion", disable=not progress, leave=False)
        for s in starts:
            m = min(batch_size, n - s)
            m_eff = max(m, 2)
            y = cycle[torch.arange(s, s + m_eff) % len(cycle)].to(device)
            z = (torch.randn((m_eff, *shape), generator=gen) * 0.5).to(device).requires_grad_(True)
            opt = torch.optim.Adam([z], lr=lr)
            for _ in range(steps):
                stats.clear()
                x = torch.sigmoid(z)
                logits = model(x)
                ce = F.cross_entropy(logits, y)
                bn = torch.stack(stats).sum()
                tv = (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
                loss = bn_weight * bn + ce + tv_weight * tv * x[0].numel() + l2_weight * (x ** 2).sum() / m_eff
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                last = {"bn": float(bn.detach()), "ce": float(ce.detach())}
                bar.update(1)
                bar.set_postfix(bn=f"{last['bn']:.3f}", ce=f"{last['ce']:.3f}")
            with torch.no_grad():
                xs.append(torch.sigmoid(z[:m]).detach().cpu())
                ys.append(y[:m].cpu())
        bar.close()
    x, y = torch.cat(xs), torch.cat(ys)
    info = {"n": n, "steps": steps, "lr": lr, "bn_weight": bn_weight, "tv_weight": tv_weight,
            "l2_weight": l2_weight, "batch_size": batch_size, "seed": seed, "final_loss": last,
            **({} if classes is None else {"classes": cycle.tolist()}),
            "seconds": round(time.perf_counter() - t0, 3)}
    log.info("BN inversion: %d images in %.1f s (final BN loss %.3f, CE %.3f)", n, info["seconds"],
             last.get("bn", float("nan")), last.get("ce", float("nan")))
    return Synthetic(x, y, info)
