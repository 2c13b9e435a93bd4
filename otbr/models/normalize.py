"""Input normalisation as part of the model.

Every model the toolkit hands around takes images in [0, 1]; the
:class:`Normalized` wrapper applies the per-channel mean/std the network was
trained with. Its mean/std are non-persistent buffers, so the wrapper adds no
keys: saving writes the inner network's state dict.

Example:
    >>> import torch
    >>> from otbr.models.tiny import TinyCNN
    >>> m = Normalized(TinyCNN(), mean=(0.5,), std=(0.25,))
    >>> m(torch.rand(2, 1, 8, 8)).shape
    torch.Size([2, 4])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalized(nn.Module):
    """``net((x − mean) / std)`` for images ``x`` in [0, 1]."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        if (self.std <= 0).any():
            raise ValueError("std must be positive")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare network inside a :class:`Normalized` wrapper (or the model itself)."""
    return model.net if isinstance(model, Normalized) else model
