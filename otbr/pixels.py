"""Pixel conversions between stored images (uint8, 0..255) and model inputs (float32 in [0, 1]).

Example:
    >>> import torch
    >>> x = torch.tensor([0, 128, 255], dtype=torch.uint8)
    >>> [round(v, 3) for v in as_float(x).tolist()], bool(torch.equal(quantize(as_float(x)), x))
    ([0.0, 0.502, 1.0], True)
"""

from __future__ import annotations

import torch

__all__ = ["as_float", "quantize"]


def as_float(x: torch.Tensor) -> torch.Tensor:
    """Images as float32 in [0, 1]: uint8 images are scaled by 1/255 (a new tensor); float images are cast to
    float32 (no copy when they already are).

    Example:
        >>> as_float(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)).max().item()
        1.0
    """
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] → uint8 (clamped, rounded to the nearest level), as a stored image would be.

    Example:
        >>> quantize(torch.tensor([-0.1, 0.5, 1.2])).tolist()
        [0, 128, 255]
    """
    return x.clamp(0, 1).mul(255).round_().to(torch.uint8)
