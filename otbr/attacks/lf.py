"""LF: an additive low-frequency universal perturbation.

A seeded Gaussian noise image (per channel) is low-pass filtered in the
Fourier domain with a Gaussian of standard deviation ``cutoff`` cycles per
image (so the pattern looks the same at any resolution), then scaled to the
L∞ norm ``eps``: ``x + eps·P / max|P|``. The default eps = 0.1 (≈ 25 grey
levels) with cutoff 3 is smooth enough to survive the random-crop
augmentation and reaches a high ASR on Fashion-MNIST within a few epochs.
The LF paper optimised the perturbation as a universal adversarial one; a
random smooth pattern is a simpler stand-in with the same frequency content.

Example:
    >>> import torch
    >>> p = LF(eps=0.1).perturbation(1, 28, 28)
    >>> round(float(p.abs().max()), 6)
    0.1
"""

from __future__ import annotations

from typing import Any

import torch

from otbr.attacks.base import Attack, _seeded, register_attack
from otbr.errors import OtbrError


@register_attack
class LF(Attack):
    """Low-frequency additive trigger.

    Args:
        eps: L∞ norm of the perturbation (0.1).
        cutoff: standard deviation of the Gaussian low-pass filter, in cycles per image (3).
        target, poison_rate, seed: see :class:`~otbr.attacks.base.Attack`.
    """

    name = "lf"

    def __init__(self, *, eps: float = 0.1, cutoff: float = 3.0, target: int = 0, poison_rate: float = 0.1,
                 seed: int = 0) -> None:
        super().__init__(target=target, poison_rate=poison_rate, seed=seed)
        if not 0.0 < float(eps) <= 1.0:
            raise OtbrError(f"lf eps must be in (0, 1], got {eps!r}")
        if float(cutoff) <= 0:
            raise OtbrError(f"lf cutoff must be positive, got {cutoff!r}")
        self.eps = float(eps)
        self.cutoff = float(cutoff)

    def params(self) -> dict[str, Any]:
        return {"eps": self.eps, "cutoff": self.cutoff}

    def perturbation(self, c: int, h: int, w: int) -> torch.Tensor:
        """The C×H×W perturbation for images of that shape (L∞ norm ``eps``)."""

        def build() -> torch.Tensor:
            noise = torch.randn(c, h, w, generator=_seeded(self.seed), dtype=torch.float64)
            fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None] * h  # cycles per image
            fx = torch.fft.fftfreq(w, dtype=torch.float64)[None, :] * w
            lowpass = torch.exp(-(fx ** 2 + fy ** 2) / (2 * self.cutoff ** 2))
            smooth = torch.fft.ifft2(torch.fft.fft2(noise) * lowpass).real
            smooth = smooth - smooth.mean(dim=(-2, -1), keepdim=True)
            return (self.eps * smooth / smooth.abs().max()).float()

        return self._cached(("lf", c, h, w), build)

    def _trigger(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.perturbation(*x.shape[1:]).to(x.device, x.dtype)
