"""Clean accuracy, attack success rate, robust accuracy and the defense effectiveness rating.

Conventions follow BackdoorBench:

* ACC — accuracy on the full clean test set;
* ASR — on the *non-target-class* test images with the trigger applied, the
  fraction predicted as the target class;
* RA — on those same triggered images, the fraction predicted as their true label;
* DER = [max(0, ASR_before − ASR_after) − max(0, ACC_before − ACC_after) + 1] / 2.

All rates are fractions in [0, 1]; reports print percentages.

Example:
    >>> der(acc_before=0.93, asr_before=1.0, acc_after=0.91, asr_after=0.02)
    0.98
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch
from torch import nn

from otbr.device import model_device
from otbr.pixels import as_float


@dataclasses.dataclass(frozen=True)
class Metrics:
    """ACC, ASR and RA of one model (ASR/RA are ``None`` without a poisoned set)."""

    acc: float
    asr: float | None = None
    ra: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return dataclasses.asdict(self)


def der(acc_before: float, asr_before: float, acc_after: float, asr_after: float) -> float:
    """Defense effectiveness rating in [0, 1] (fractions in, fraction out)."""
    value = (max(0.0, asr_before - asr_after) - max(0.0, acc_before - acc_after) + 1.0) / 2.0
    return round(value, 12)


def _batches(x: torch.Tensor, batch_size: int) -> Iterable[torch.Tensor]:
    for i in range(0, len(x), batch_size):
        yield x[i:i + batch_size]


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Predicted labels for images ``x`` in [0, 1] (uint8 images are scaled), on the model's device.

    The model is put in eval mode for the call and its mode restored afterwards.
    """
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        preds = []
        for xb in _batches(x, batch_size):
            xb = xb.to(device, non_blocking=True)
            xb = as_float(xb)
            preds.append(model(xb).argmax(1).cpu())
        return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)
    finally:
        model.train(was_training)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Fraction of ``x`` classified as ``y``."""
    if len(x) == 0:
        raise ValueError("empty evaluation set")
    if len(x) != len(y):
        raise ValueError(f"accuracy: {len(x)} images but {len(y)} labels")
    return float((predict(model, x, batch_size) == y.cpu()).float().mean())


def attack_rates(
    model: nn.Module, x_poisoned: torch.Tensor, y_true: torch.Tensor, target: int | torch.Tensor, batch_size: int = 512
) -> tuple[float, float]:
    """(ASR, RA) on triggered images; samples whose true label is the target are excluded.

    Args:
        x_poisoned: triggered images.
        y_true: their true labels.
        target: the attack's target label (an int for all-to-one, or a per-sample tensor).
    """
    target_t = torch.as_tensor(target).cpu()
    if target_t.numel() == 1:  # one target for all (an int, a 0-d or a 1-element tensor)
        target_t = target_t.reshape(()).expand_as(y_true.cpu())
    if len(x_poisoned) != len(y_true) or target_t.shape != y_true.shape:
        raise ValueError(f"attack_rates: {len(x_poisoned)} images, {len(y_true)} labels and {target_t.numel()} "
                         "targets do not match")
    keep = y_true.cpu() != target_t
    if not bool(keep.any()):
        raise ValueError("poisoned set has no non-target samples")
    pred = predict(model, x_poisoned[keep], batch_size)
    asr = float((pred == target_t[keep]).float().mean())
    ra = float((pred == y_true.cpu()[keep]).float().mean())
    return asr, ra


def evaluate(
    model: nn.Module,
    clean: tuple[torch.Tensor, torch.Tensor],
    poisoned: tuple[torch.Tensor, torch.Tensor, int | torch.Tensor] | None = None,
    batch_size: int = 512,
) -> Metrics:
    """ACC on ``clean = (x, y)`` and, when given, ASR/RA on ``poisoned = (x, y_true, target)``."""
    acc = accuracy(model, clean[0], clean[1], batch_size)
    if poisoned is None:
        return Metrics(acc=acc)
    asr, ra = attack_rates(model, *poisoned, batch_size=batch_size)
    return Metrics(acc=acc, asr=asr, ra=ra)
