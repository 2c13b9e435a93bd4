"""SIG (clean-label): a horizontal sinusoid ``x + Δ·sin(2π·j·f/W)`` along the columns.

Δ = 40/255 and f = 6 as in the paper. Only target-class training images are
poisoned and their labels are kept; the poison rate is a fraction of the
whole training set, capped by the number of target-class images.

Example:
    >>> import torch
    >>> x = SIG().apply(torch.full((1, 1, 32, 32), 0.5))
    >>> round(float(x.max() - 0.5) * 255)
    40
"""

from __future__ import annotations

import math
from typing import Any

import torch

from otbr.attacks.base import Attack, register_attack
from otbr.errors import OtbrError


@register_attack
class SIG(Attack):
    """Sinusoidal signal trigger, clean-label.

    Args:
        delta: amplitude of the signal (40/255 in the paper).
        frequency: number of periods across the image width (6 in the paper).
        target, poison_rate, seed: see :class:`~otbr.attacks.base.Attack`.
    """

    name = "sig"
    clean_label = True

    def __init__(self, *, delta: float = 40 / 255, frequency: float = 6, target: int = 0, poison_rate: float = 0.1,
                 seed: int = 0) -> None:
        super().__init__(target=target, poison_rate=poison_rate, seed=seed)
        if not 0.0 < float(delta) <= 1.0:
            raise OtbrError(f"sig delta must be in (0, 1], got {delta!r}")
        if float(frequency) <= 0:
            raise OtbrError(f"sig frequency must be positive, got {frequency!r}")
        self.delta = float(delta)
        self.frequency = float(frequency)

    def params(self) -> dict[str, Any]:
        return {"delta": self.delta, "frequency": self.frequency}

    def signal(self, w: int) -> torch.Tensor:
        """The 1-D signal along a row of width ``w`` (needs more than 2 samples per period)."""
        if w <= 2 * self.frequency:
            raise OtbrError(f"sig: images {w} px wide cannot carry {self.frequency:g} periods "
                            f"(needs > {2 * self.frequency:g} px)")
        j = torch.arange(w, dtype=torch.float64)
        return (self.delta * torch.sin(2 * math.pi * j * self.frequency / w)).float()

    def _trigger(self, x: torch.Tensor) -> torch.Tensor:
        s = self._cached(("sig", x.shape[-1]), lambda: self.signal(x.shape[-1]))
        return x + s.to(x.device, x.dtype)
