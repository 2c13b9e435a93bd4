"""Activeness-aware fine-tuning (TSBD stage 2), reusable by any defense.

A backdoored model is *active*: its gradient norm is large while it learns, and
plain fine-tuning on clean data can walk it back to the backdoor. TSBD therefore
fine-tunes with a gradient-norm penalty written as a finite difference (SAM-like):

* ``g1 = ∇L(θ)``;
* ``θ' = θ + r · g1 / ‖g1‖`` with the norm taken **per parameter tensor**;
* ``g2 = ∇L(θ')``;
* step with ``g = (1 − α) · g1 + α · g2``.

:class:`ActivenessStep` computes ``g`` into ``p.grad`` of every trainable
parameter and leaves the weights **bit-identical** to what they were: the
parameter data is copied into buffers allocated once (one ``torch._foreach_copy_``
per step, never a model copy) and copied back after the second pass. The
optimiser (any ``torch.optim`` optimiser; weight decay and momentum are its
business) then steps as usual.

BatchNorm: both passes run in train mode (batch statistics), as in the published
code. The second pass at ``θ'`` would update the running statistics a second
time; :class:`ActivenessStep` saves every BatchNorm buffer (``running_mean``,
``running_var``, ``num_batches_tracked``) before it and copies them back after,
so a step changes the running statistics exactly as one plain forward pass would.
(The published code deep-copies the model per batch, so its copy's statistics are
discarded the same way.)

:func:`finetune` is the loop: SGD (momentum 0.9, weight decay 5e-4) with a cosine
learning-rate schedule stepped per batch, random-crop augmentation with 2 px zero
padding (the zoo's training augmentation, :func:`otbr.training.random_crop`;
off with ``augment=False``), ``mode="activeness"`` or ``"vanilla"`` (plain SGD,
same schedule and batches, for the ablation and for timing ratios).

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    >>> x, y = torch.rand(8, 1, 2, 2), torch.randint(0, 3, (8,))
    >>> step = ActivenessStep(net, r=0.05, alpha=0.7)
    >>> before = [p.detach().clone() for p in net.parameters()]
    >>> loss, logits = step(x, y)
    >>> all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # weights restored exactly
    True
    >>> rep = finetune(net, x, y, epochs=1, batch_size=4, augment=False, progress=False)
    >>> len(rep.epoch_seconds)
    1
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from otbr.device import model_device
from otbr.errors import OtbrError
from otbr.seeding import seeded_global_rng
from otbr.training import iterate_batches, random_crop, sgd_cosine, show_progress, steps_per_epoch

log = logging.getLogger(__name__)

FinetuneMode = Literal["activeness", "vanilla"]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _bn_buffers(model: nn.Module) -> list[torch.Tensor]:
    """The running-statistics buffers of every BatchNorm module (empty list if none)."""
    out: list[torch.Tensor] = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            out += [b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
    return out


class ActivenessStep:
    """Compute the activeness-aware gradient ``(1 − α)·∇L(θ) + α·∇L(θ + r·g1/‖g1‖)`` into ``p.grad``.

    The perturbation is applied in place and undone by copying the saved parameter
    data back (bit-exact; buffers are allocated once per instance). BatchNorm running
    statistics are restored after the second pass (see the module docstring).

    Args:
        model: the model being fine-tuned (its trainable parameters get ``.grad``).
        r: perturbation radius (per parameter tensor), ≥ 0.
        alpha: weight of the gradient at the perturbed point, in [0, 1].
        loss_fn: ``loss_fn(logits, labels)``; default cross-entropy.
        eps: added to each tensor's gradient norm (a zero gradient gives no perturbation).

    Example:
        >>> net = nn.Linear(3, 2)
        >>> loss, _ = ActivenessStep(net)(torch.rand(4, 3), torch.tensor([0, 1, 0, 1]))
        >>> net.weight.grad.shape
        torch.Size([2, 3])
    """

    def __init__(self, model: nn.Module, *, r: float = 0.05, alpha: float = 0.7, loss_fn: LossFn | None = None,
                 eps: float = 1e-12) -> None:
        if not (r >= 0 and math.isfinite(r)):
            raise OtbrError(f"r must be a finite number ≥ 0, got {r}")
        if not 0.0 <= alpha <= 1.0:
            raise OtbrError(f"alpha must be in [0, 1], got {alpha}")
        self.model = model
        self.r, self.alpha, self.eps = float(r), float(alpha), float(eps)
        self.loss_fn = loss_fn or F.cross_entropy
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise OtbrError("the model has no trainable parameters")
        self._saved = [torch.empty_like(p, memory_format=torch.preserve_format) for p in self.params]
        self._bn = _bn_buffers(model)
        self._bn_saved = [torch.empty_like(b) for b in self._bn]

    def _grads(self, loss: torch.Tensor) -> list[torch.Tensor]:
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads, strict=True)]

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One activeness-aware gradient on the batch ``(x, y)``.

        Returns:
            ``(loss, logits)`` at the unperturbed weights θ (detached), for logging.
        """
        logits = self.model(x)
        loss = self.loss_fn(logits, y)
        if not torch.isfinite(loss):
            raise OtbrError(f"fine-tuning diverged (loss {float(loss)}); lower the learning rate")
        g1 = self._grads(loss)
        with torch.no_grad():
            if self.alpha > 0.0:
                # θ' = θ + r · g1 / ‖g1‖ per tensor; save θ and the BatchNorm statistics for an exact restore.
                scale = torch._foreach_norm(g1)
                torch._foreach_add_(scale, self.eps)
                torch._foreach_reciprocal_(scale)
                torch._foreach_mul_(scale, self.r)
                torch._foreach_copy_(self._saved, self.params)
                if self._bn:
                    torch._foreach_copy_(self._bn_saved, self._bn)
                torch._foreach_addcmul_(self.params, g1, scale)
        if self.alpha > 0.0:
            try:
                g2 = self._grads(self.loss_fn(self.model(x), y))
            finally:
                with torch.no_grad():
                    torch._foreach_copy_(self.params, self._saved)
                    if self._bn:
                        torch._foreach_copy_(self._bn, self._bn_saved)
            with torch.no_grad():
                torch._foreach_mul_(g1, 1.0 - self.alpha)
                torch._foreach_add_(g1, g2, alpha=self.alpha)
        for p, g in zip(self.params, g1, strict=True):
            p.grad = g
        return loss.detach(), logits.detach()


class _CopyPerBatchStep(ActivenessStep):
    """The published procedure's way of forming θ': a deep copy of the whole model per batch.

    Only for the benchmark's faithful re-enactment (timing); gives the same gradient.
    """

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        loss = self.loss_fn(logits, y)
        g1 = self._grads(loss)
        twin = copy.deepcopy(self.model)  # the anti-pattern being measured
        twin_params = [p for p in twin.parameters() if p.requires_grad]
        with torch.no_grad():
            for p, g in zip(twin_params, g1, strict=True):
                p.add_(g * (self.r / (g.norm() + self.eps)))
        out = self.loss_fn(twin(x), y)
        g2 = torch.autograd.grad(out, twin_params, allow_unused=True)
        for p, a, b in zip(self.params, g1, g2, strict=True):
            p.grad = (1.0 - self.alpha) * a + self.alpha * (torch.zeros_like(a) if b is None else b)
        return loss.detach(), logits.detach()


@dataclasses.dataclass
class FinetuneReport:
    """What :func:`finetune` did.

    Attributes:
        mode: ``"activeness"`` or ``"vanilla"``.
        epochs: epochs run.
        loss: mean training loss per epoch (at θ, on the augmented subset).
        acc: running training accuracy per epoch.
        epoch_seconds: wall seconds per epoch.
        seconds: total wall seconds.
    """

    mode: str
    epochs: int
    loss: list[float]
    acc: list[float]
    epoch_seconds: list[float]
    seconds: float


@seeded_global_rng  # dropout in training mode draws from the global RNG
def finetune(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    mode: FinetuneMode = "activeness",
    epochs: int = 20,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 128,
    r: float = 0.05,
    alpha: float = 0.7,
    augment: bool = True,
    crop_padding: int = 2,
    seed: int = 0,
    progress: bool = True,
    desc: str = "fine-tune",
    _copy_per_batch: bool = False,
) -> FinetuneReport:
    """Fine-tune ``model`` **in place** on ``(x, y)``; activeness-aware or plain SGD.

    SGD (``momentum``, ``weight_decay``) with a cosine schedule from ``lr`` to 0 stepped
    per batch; batches shuffled by a private generator seeded with ``seed``, and the global RNG that dropout
    draws from forked and seeded with it for the run. The model's train/eval mode is restored afterwards.

    Args:
        model: takes images in [0, 1]; trained on its own device.
        x: images (uint8 0..255 or float in [0, 1], NCHW), on any device.
        y: labels.
        mode: ``"activeness"`` (TSBD stage 2) or ``"vanilla"`` (plain SGD).
        epochs: number of epochs (≥ 1).
        r, alpha: activeness settings (ignored in vanilla mode).
        augment: random crop with ``crop_padding`` px zero padding, the same crop for both passes.
        progress: a tqdm bar per epoch with loss and accuracy (only on a terminal).

    Returns:
        A :class:`FinetuneReport`.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> rep = finetune(net, torch.rand(6, 1, 2, 2), torch.tensor([0, 1] * 3), epochs=2, progress=False)
        >>> rep.epochs, rep.mode
        (2, 'activeness')
    """
    if mode not in ("activeness", "vanilla"):
        raise OtbrError(f"fine-tuning mode must be activeness or vanilla, got {mode!r}")
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise OtbrError(f"fine-tuning needs epochs ≥ 1, batch_size ≥ 1 and lr > 0 (got {epochs}, {batch_size}, {lr})")
    n = len(y)
    if n < 2 or len(x) != n:
        raise OtbrError(f"fine-tuning needs at least 2 images with one label each, got {len(x)} images, {n} labels")
    device = model_device(model)
    gen = torch.Generator().manual_seed(int(seed))
    aug_gen = torch.Generator().manual_seed(int(seed) + 1)
    per_epoch = steps_per_epoch(n, batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    opt, sched = sgd_cosine(params, lr=lr, momentum=momentum, weight_decay=weight_decay, total_steps=epochs * per_epoch)
    step: ActivenessStep | None = None
    if mode == "activeness":
        step = (_CopyPerBatchStep if _copy_per_batch else ActivenessStep)(model, r=r, alpha=alpha)
    report = FinetuneReport(mode=mode, epochs=0, loss=[], acc=[], epoch_seconds=[], seconds=0.0)
    was_training = model.training
    model.train()
    start = time.perf_counter()
    try:
        for epoch in range(epochs):
            t0 = time.perf_counter()
            seen, correct, loss_sum = 0, 0, 0.0
            bar = tqdm(iterate_batches(x, y, batch_size, shuffle=True, generator=gen), total=per_epoch,
                       desc=f"{desc} {epoch + 1}/{epochs}", leave=False, unit="batch",
                       disable=not show_progress(progress))
            for xb, yb in bar:
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
                if augment:
                    xb = random_crop(xb, crop_padding, aug_gen)
                opt.zero_grad(set_to_none=True)
                if step is not None:
                    loss, logits = step(xb, yb)
                else:
                    logits = model(xb)
                    loss = F.cross_entropy(logits, yb)
                    if not torch.isfinite(loss):
                        raise OtbrError(f"fine-tuning diverged (loss {float(loss)}); lower the learning rate")
                    loss.backward()
                opt.step()
                sched.step()
                seen += len(yb)
                loss_sum += float(loss.detach()) * len(yb)
                correct += int((logits.detach().argmax(1) == yb).sum())
                if not bar.disable:
                    bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
            bar.close()
            report.epochs += 1
            report.loss.append(loss_sum / max(seen, 1))
            report.acc.append(correct / max(seen, 1))
            report.epoch_seconds.append(time.perf_counter() - t0)
            log.debug("%s epoch %d/%d: loss %.4f acc %.4f (%.2f s)", desc, epoch + 1, epochs, report.loss[-1],
                      report.acc[-1], report.epoch_seconds[-1])
    finally:
        model.train(was_training)
    report.seconds = time.perf_counter() - start
    return report
