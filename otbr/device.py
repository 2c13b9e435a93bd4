"""Device handling: the device follows the model; CUDA is used when present.

Example:
    >>> resolve_device("cpu")
    device(type='cpu')
"""

from __future__ import annotations

import torch
from torch import nn

from otbr.errors import OtbrError


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/"auto" → CUDA when available, else CPU; anything else is validated."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise OtbrError(f"unknown device {device!r}") from exc
    if dev.type not in ("cpu", "cuda"):
        raise OtbrError(f"device {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OtbrError("CUDA device requested but no CUDA GPU is available")
    return dev


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless model)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
