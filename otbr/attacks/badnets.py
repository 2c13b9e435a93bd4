"""BadNets: a small white square in the bottom-right corner (pixels replaced).

The square is 3 px on 28–32 px images and scales with the image side
(``round(3 · min(H, W) / 30)``, at least 1 px) unless ``size`` is given.

Example:
    >>> import torch
    >>> x = BadNets().apply(torch.zeros(1, 1, 28, 28))
    >>> int(x.sum())
    9
"""

from __future__ import annotations

from typing import Any

import torch

from otbr.attacks.base import Attack, register_attack
from otbr.errors import OtbrError


def scaled_size(side: int, base: int, base_side: int = 30) -> int:
    """A trigger side of ``base`` px at ``base_side``-px images, scaled to ``side`` (≥ 1)."""
    return max(1, round(base * side / base_side))


@register_attack
class BadNets(Attack):
    """BadNets patch trigger.

    Args:
        size: side of the square in pixels (``None``: scaled from 3 px at 28–32 px).
        value: the patch intensity in [0, 1] (1 = white).
        target, poison_rate, seed: see :class:`~otbr.attacks.base.Attack`.
    """

    name = "badnets"

    def __init__(self, *, size: int | None = None, value: float = 1.0, target: int = 0, poison_rate: float = 0.1,
                 seed: int = 0) -> None:
        super().__init__(target=target, poison_rate=poison_rate, seed=seed)
        if size is not None and (not isinstance(size, int) or size < 1):
            raise OtbrError(f"badnets size must be a positive int, got {size!r}")
        if not 0.0 <= float(value) <= 1.0:
            raise OtbrError(f"badnets value must be in [0, 1], got {value!r}")
        self.size = size
        self.value = float(value)

    def params(self) -> dict[str, Any]:
        return {"size": self.size, "value": self.value}

    def patch_size(self, h: int, w: int) -> int:
        """Side of the square for an H×W image."""
        s = self.size if self.size is not None else scaled_size(min(h, w), 3)
        return min(s, h, w)

    def _trigger(self, x: torch.Tensor) -> torch.Tensor:
        s = self.patch_size(x.shape[-2], x.shape[-1])
        out = x.clone()
        out[..., -s:, -s:] = self.value
        return out
