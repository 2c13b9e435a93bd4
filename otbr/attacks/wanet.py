"""WaNet: an imperceptible smooth warp, plus "noise mode" samples.

The warp field comes from a k×k (k = 4) uniform grid in [−1, 1] normalised by
its mean absolute value and bicubic-upsampled to H×W; the sampling grid is
``identity + s·field/size`` (s = 0.5), clamped to [−1, 1], and applied with
``grid_sample(align_corners=True)``. The random k×k grid does not depend on the
image size, so the warp scales to any image. Poisoned samples get the warp and
the target label; twice as many other samples (cross ratio 2) get the warp plus
a per-pixel random jitter in [−1, 1]/size and keep their labels, which forces
the network to learn the exact warp.

Example:
    >>> import torch
    >>> x = torch.rand(2, 1, 28, 28)
    >>> bool(torch.allclose(WaNet(strength=0.0).apply(x), x, atol=1e-6))
    True
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from otbr.attacks.base import Attack, _seeded, register_attack
from otbr.errors import OtbrError
from otbr.pixels import as_float, quantize


@register_attack
class WaNet(Attack):
    """Warping-based trigger.

    Args:
        k: side of the random control grid (4).
        strength: warp strength ``s`` (0.5).
        grid_rescale: scale of the final grid (1).
        cross_ratio: noise-mode samples per poisoned sample (2).
        target, poison_rate, seed: see :class:`~otbr.attacks.base.Attack`.
    """

    name = "wanet"

    def __init__(self, *, k: int = 4, strength: float = 0.5, grid_rescale: float = 1.0, cross_ratio: float = 2.0,
                 target: int = 0, poison_rate: float = 0.1, seed: int = 0) -> None:
        super().__init__(target=target, poison_rate=poison_rate, seed=seed)
        if not isinstance(k, int) or k < 2:
            raise OtbrError(f"wanet k must be an int ≥ 2, got {k!r}")
        if float(strength) < 0 or float(grid_rescale) <= 0 or float(cross_ratio) < 0:
            raise OtbrError("wanet strength and cross_ratio must be ≥ 0 and grid_rescale > 0")
        self.k = k
        self.strength = float(strength)
        self.grid_rescale = float(grid_rescale)
        self.cross_ratio = float(cross_ratio)
        self.noise_indices = torch.empty(0, dtype=torch.long)  # set by poison_train

    def params(self) -> dict[str, Any]:
        return {"k": self.k, "strength": self.strength, "grid_rescale": self.grid_rescale,
                "cross_ratio": self.cross_ratio}

    def control_grid(self) -> torch.Tensor:
        """The seeded 1×2×k×k control grid, normalised by its mean absolute value."""
        ins = torch.rand(1, 2, self.k, self.k, generator=_seeded(self.seed)) * 2 - 1
        return ins / ins.abs().mean()

    def field(self, h: int, w: int) -> torch.Tensor:
        """The upsampled 1×H×W×2 displacement field (before strength and scaling)."""
        return F.interpolate(self.control_grid(), size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)

    def _grid(self, h: int, w: int) -> torch.Tensor:
        def build() -> torch.Tensor:
            ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
            identity = torch.stack((xs, ys), dim=-1)[None]
            scale = torch.tensor([w, h], dtype=torch.float32)
            grid = (identity + self.strength * self.field(h, w) / scale) * self.grid_rescale
            return grid.clamp(-1, 1)

        return self._cached(("grid", h, w), build)

    def _warp(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(x, grid.to(x.device, x.dtype), mode="bilinear", padding_mode="zeros",
                             align_corners=True)

    def _trigger(self, x: torch.Tensor) -> torch.Tensor:
        if self.strength == 0 and self.grid_rescale == 1.0:
            return x.clone()
        grid = self._grid(*x.shape[-2:]).expand(len(x), -1, -1, -1)
        return self._warp(x, grid)

    def apply_noise(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Noise mode: the warp plus a random per-pixel jitter in [−1, 1]/size (labels are kept)."""
        x = as_float(x)
        n, _, h, w = x.shape
        jitter = (torch.rand(n, h, w, 2, generator=generator) * 2 - 1) / torch.tensor([w, h], dtype=torch.float32)
        grid = (self._grid(h, w) + jitter).clamp(-1, 1)
        return self._warp(x, grid).clamp(0, 1)

    def _extra_poison(self, ds: Any, x: torch.Tensor, y: torch.Tensor,
                      idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n_noise = round(self.cross_ratio * len(idx))
        if n_noise == 0:
            return x, y
        free = torch.ones(len(y), dtype=torch.bool)
        free[idx] = False
        candidates = torch.nonzero(free).flatten()
        gen = _seeded(self.seed, 2)
        pick = candidates[torch.randperm(len(candidates), generator=gen)[:n_noise]].sort().values
        for i in range(0, len(pick), 4096):
            part = pick[i:i + 4096]
            noisy = self.apply_noise(x[part], gen)
            x[part] = quantize(noisy) if x.dtype == torch.uint8 else noisy
        self.noise_indices = pick
        return x, y
