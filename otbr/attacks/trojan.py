"""Trojan: a patch trigger optimised to excite chosen neurons of a clean model.

After Liu et al. (NDSS 2018): the neurons of the last linear layer's input
(the penultimate features) with the largest weights to the target class are
chosen, and the pixels of a bottom-right square patch (5 px on 28 px images,
scaled with the side) are optimised with Adam so that, pasted on clean images,
the patch drives those neurons high. The fitted patch is stored as uint8
levels in the config, so the attack rebuilds without the model. Training on
data poisoned with that patch then implants the backdoor.

Example:
    >>> import torch
    >>> from otbr.models import create_model, Normalized
    >>> net = Normalized(create_model("tinycnn", num_classes=4), (0.5,), (0.5,))
    >>> a = Trojan(steps=5).fit(net, torch.rand(16, 1, 12, 12))
    >>> a.apply(torch.zeros(1, 1, 12, 12)).shape
    torch.Size([1, 1, 12, 12])
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from otbr.attacks.badnets import scaled_size
from otbr.attacks.base import Attack, _seeded, register_attack
from otbr.device import model_device
from otbr.errors import OtbrError
from otbr.pixels import as_float, quantize

log = logging.getLogger(__name__)


def _last_linear(model: nn.Module) -> nn.Linear:
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    if last is None:
        raise OtbrError("trojan: the clean model has no nn.Linear layer to choose neurons from")
    return last


@register_attack
class Trojan(Attack):
    """Neuron-targeted optimised patch.

    Args:
        size: side of the patch in pixels (``None``: 5 px at 28 px, scaled).
        num_neurons: how many penultimate neurons to excite.
        steps: Adam steps of the patch optimisation.
        lr: Adam learning rate (on the patch logits).
        patch: fitted patch as nested lists of uint8 levels (C×s×s), from :meth:`fit` or a config.
        neurons: the neurons the patch was fitted to (informational).
        clean_model: if given (with ``data``), fit the patch right away.
        data: clean images (uint8 or float N×C×H×W, or a dataset with ``x``) for fitting.
        target, poison_rate, seed: see :class:`~otbr.attacks.base.Attack`.
    """

    name = "trojan"

    def __init__(self, *, size: int | None = None, num_neurons: int = 2, steps: int = 200, lr: float = 0.1,
                 patch: list | None = None, neurons: list[int] | None = None, clean_model: nn.Module | None = None,
                 data: Any = None, target: int = 0, poison_rate: float = 0.1, seed: int = 0) -> None:
        super().__init__(target=target, poison_rate=poison_rate, seed=seed)
        if size is not None and (not isinstance(size, int) or size < 1):
            raise OtbrError(f"trojan size must be a positive int, got {size!r}")
        if num_neurons < 1 or steps < 0 or lr <= 0:
            raise OtbrError("trojan num_neurons must be ≥ 1, steps ≥ 0, lr > 0")
        self.size = size
        self.num_neurons = int(num_neurons)
        self.steps = int(steps)
        self.lr = float(lr)
        self.patch = None if patch is None else torch.tensor(patch, dtype=torch.uint8)
        if self.patch is not None and self.patch.dim() != 3:
            raise OtbrError("trojan patch must be C×s×s")
        self.neurons = None if neurons is None else [int(n) for n in neurons]
        if clean_model is not None:
            if data is None:
                raise OtbrError("trojan: fitting to clean_model needs data")
            self.fit(clean_model, data)

    def params(self) -> dict[str, Any]:
        return {"size": self.size, "num_neurons": self.num_neurons, "steps": self.steps, "lr": self.lr,
                "patch": None if self.patch is None else self.patch.tolist(), "neurons": self.neurons}

    def patch_size(self, h: int, w: int) -> int:
        """Side of the patch for an H×W image."""
        s = self.size if self.size is not None else scaled_size(min(h, w), 5, 28)
        return min(s, h, w)

    @staticmethod
    def _paste(x: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
        s = patch.shape[-1]
        out = x.clone()
        out[..., -s:, -s:] = patch
        return out

    def fit(self, clean_model: nn.Module, data: Any, batch_size: int = 64) -> Trojan:
        """Optimise the patch on a clean model (images in [0, 1]) and return ``self``.

        Args:
            clean_model: a model taking [0, 1] images (e.g. a :class:`otbr.models.Normalized`).
            data: clean images (N×C×H×W uint8 or float), or a dataset with an ``x`` tensor.
            batch_size: images per optimisation step (drawn with the attack's seed).
        """
        x_all = data.x if hasattr(data, "x") else data
        if not torch.is_tensor(x_all) or x_all.dim() != 4:
            raise OtbrError("trojan.fit needs N×C×H×W images or a dataset")
        c, h, w = x_all.shape[1:]
        s = self.patch_size(h, w)
        fc = _last_linear(clean_model)
        if self.target >= fc.out_features:
            raise OtbrError(f"trojan target {self.target} is not a class of the clean model")
        neurons = fc.weight.detach()[self.target].topk(min(self.num_neurons, fc.in_features)).indices
        device = model_device(clean_model)
        gen = _seeded(self.seed, 3)
        logits = (torch.rand(c, s, s, generator=gen) * 2 - 1).to(device).requires_grad_(True)
        opt = torch.optim.Adam([logits], lr=self.lr)
        feats: dict[str, torch.Tensor] = {}
        handle = fc.register_forward_hook(lambda _m, inp, _out: feats.__setitem__("z", inp[0]))
        was_training = clean_model.training
        params = list(clean_model.parameters())
        grads = [p.requires_grad for p in params]
        clean_model.eval()
        for p in params:
            p.requires_grad_(False)
        try:
            for _ in range(self.steps):
                pick = torch.randint(len(x_all), (min(batch_size, len(x_all)),), generator=gen)
                xb = as_float(x_all[pick]).to(device)
                clean_model(self._paste(xb, torch.sigmoid(logits)))
                z = feats["z"].flatten(1)[:, neurons.to(device)]
                loss = F.relu(10.0 - z).mean() - 0.1 * z.mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        finally:
            handle.remove()
            clean_model.train(was_training)
            for p, g in zip(params, grads):
                p.requires_grad_(g)
        self.patch = quantize(torch.sigmoid(logits.detach()).cpu())
        self.neurons = neurons.tolist()
        self._cache.clear()
        log.info("trojan: fitted a %d×%d patch to neurons %s of the clean model", s, s, self.neurons)
        return self

    def _patch_for(self, c: int, h: int, w: int) -> torch.Tensor:
        if self.patch is None:
            raise OtbrError("trojan: the patch is not fitted yet; call fit(clean_model, data) first")

        def build() -> torch.Tensor:
            p = as_float(self.patch)
            s = self.patch_size(h, w)
            if p.shape[-1] != s:
                p = F.interpolate(p[None], size=(s, s), mode="bilinear", align_corners=False)[0]
            if p.shape[0] != c:
                p = p.mean(0, keepdim=True).expand(c, s, s)
            return p.contiguous()

        return self._cached(("patch", c, h, w), build)

    def _trigger(self, x: torch.Tensor) -> torch.Tensor:
        return self._paste(x, self._patch_for(*x.shape[1:]).to(x.device, x.dtype))
