"""Blended: ``(1 − α)·x + α·P`` with a fixed pattern ``P``.

The built-in ``P`` is seeded uniform noise of the image's shape (the paper
blended a Hello Kitty image); ``pattern`` may name an image file instead,
which is loaded with PIL, converted to the image's channels and resized
(bilinear). The config stores the file's path and sha256, so a rebuilt attack
refuses a changed file.

Example:
    >>> import torch
    >>> a = Blended(alpha=0.2)
    >>> a.apply(torch.zeros(1, 3, 32, 32)).max() <= 0.2
    tensor(True)
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from otbr.attacks.base import Attack, _seeded, register_attack
from otbr.errors import OtbrError
from otbr.pixels import as_float


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@register_attack
class Blended(Attack):
    """Blend a fixed pattern into the whole image.

    Args:
        alpha: blend weight of the pattern (0.2 in the paper).
        pattern: optional path of an image to blend (default: seeded uniform noise).
        pattern_sha256: expected sha256 of ``pattern`` (filled in automatically; checked when given).
        target, poison_rate, seed: see :class:`~otbr.attacks.base.Attack`.
    """

    name = "blended"

    def __init__(self, *, alpha: float = 0.2, pattern: str | None = None, pattern_sha256: str | None = None,
                 target: int = 0, poison_rate: float = 0.1, seed: int = 0) -> None:
        super().__init__(target=target, poison_rate=poison_rate, seed=seed)
        if not 0.0 <= float(alpha) <= 1.0:
            raise OtbrError(f"blended alpha must be in [0, 1], got {alpha!r}")
        self.alpha = float(alpha)
        self.pattern = None if pattern is None else str(pattern)
        self.pattern_sha256 = pattern_sha256
        if self.pattern is not None:
            path = Path(self.pattern)
            if not path.is_file():
                raise OtbrError(f"blend pattern image not found: {path}")
            digest = _sha256(path)
            if pattern_sha256 is not None and digest != pattern_sha256:
                raise OtbrError(f"blend pattern {path} changed since the attack was configured (sha256 differs)")
            self.pattern_sha256 = digest

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "pattern": self.pattern, "pattern_sha256": self.pattern_sha256}

    def _load_image(self, c: int, h: int, w: int) -> torch.Tensor:
        import numpy as np
        from PIL import Image

        try:
            img = Image.open(self.pattern).convert("L" if c == 1 else "RGB")
        except OSError as exc:
            raise OtbrError(f"cannot read blend pattern {self.pattern}: {exc}") from exc
        t = as_float(torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()))
        t = t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)
        t = F.interpolate(t.unsqueeze(0), size=(h, w), mode="bilinear", align_corners=False).squeeze(0)
        if t.shape[0] != c:  # RGB image for an image with other than 1 or 3 channels
            t = t.mean(0, keepdim=True).expand(c, h, w)
        return t.clamp(0, 1).contiguous()

    def pattern_for(self, c: int, h: int, w: int) -> torch.Tensor:
        """The C×H×W pattern ``P`` for images of that shape."""
        if self.pattern is not None:
            return self._cached(("img", c, h, w), lambda: self._load_image(c, h, w))
        return self._cached(("noise", c, h, w), lambda: torch.rand(c, h, w, generator=_seeded(self.seed)))

    def _trigger(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pattern_for(*x.shape[1:]).to(x.device, x.dtype)
        return (1.0 - self.alpha) * x + self.alpha * p
