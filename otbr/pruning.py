"""Ranking neurons by score, masks, and zeroing neurons.

The ranking is global across layers. :func:`global_topk` selects
``k = ⌊fraction · N⌋`` neurons (floor; ``N`` = number of scored neurons), the
``k`` largest scores; ties are broken by position (earlier layer, lower index
first) through a stable sort, so masks are deterministic.

Example:
    >>> import torch
    >>> m = global_topk({"a": torch.tensor([0.1, 0.9]), "b": torch.tensor([0.5, 0.2])}, 0.5)
    >>> m["a"].tolist(), m["b"].tolist()
    ([False, True], [True, False])
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch
from torch import nn

from otbr.errors import OtbrError
from otbr.models.normalize import unwrap
from otbr.nwc import NWCScores, as_layer_scores


def num_selected(fraction: float, total: int) -> int:
    """``⌊fraction · total⌋`` — how many neurons a fraction selects, with the product's float rounding forgiven
    (0.7 · 90 is 62.99999999999999 in floating point; it selects 63).

    Example:
        >>> num_selected(0.7, 90), num_selected(0.05, 99)
        (63, 4)
    """
    if not 0.0 <= fraction <= 1.0:
        raise OtbrError(f"fraction must be in [0, 1], got {fraction}")
    return math.floor(fraction * total + 1e-9)


def global_topk(scores: NWCScores | Mapping[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Boolean masks (CPU) of the top ``⌊fraction · N⌋`` neurons over all layers.

    Args:
        scores: per-layer scores (:class:`~otbr.nwc.NWCScores` or a mapping of 1-D tensors).
        fraction: share of all neurons to select, in [0, 1].

    Returns:
        ``{layer: bool tensor}`` with the same keys and lengths as ``scores``.
    """
    layers = as_layer_scores(scores)
    names = list(layers)
    vals = [layers[n].detach().reshape(-1).to("cpu", torch.float64) for n in names]
    total = sum(int(v.numel()) for v in vals)
    k = num_selected(fraction, total)
    flat_mask = torch.zeros(total, dtype=torch.bool)
    if k > 0:
        order = torch.sort(torch.cat(vals), descending=True, stable=True).indices
        flat_mask[order[:k]] = True
    return dict(zip(names, torch.split(flat_mask, [int(v.numel()) for v in vals]), strict=True))


def mask_count(masks: Mapping[str, torch.Tensor]) -> int:
    """Number of selected neurons in ``masks``."""
    return sum(int(m.sum()) for m in masks.values())


def mask_indices(masks: Mapping[str, torch.Tensor]) -> dict[str, list[int]]:
    """``{layer: sorted selected indices}`` for layers with at least one selected neuron (JSON-friendly)."""
    return {n: torch.nonzero(m).flatten().tolist() for n, m in masks.items() if bool(m.any())}


@torch.no_grad()
def prune_neurons(model: nn.Module, masks: Mapping[str, torch.Tensor], *, inplace: bool = False) -> nn.Module:
    """Zero the weights (and bias, if any) of the masked neurons.

    Args:
        model: wrapped or bare network; layer names are those of the bare network.
        masks: ``{layer: bool tensor over output neurons}``.
        inplace: modify ``model`` itself instead of a deep copy.

    Returns:
        The pruned model (a copy unless ``inplace``).

    Example:
        >>> from otbr.models import create_model
        >>> net = create_model("tinycnn", width=2)
        >>> p = prune_neurons(net, {"conv1": torch.tensor([True, False])})
        >>> float(p.conv1.weight[0].detach().abs().sum()), bool(net.conv1.weight[0].detach().abs().sum() > 0)
        (0.0, True)
    """
    out = model if inplace else copy.deepcopy(model)
    modules = dict(unwrap(out).named_modules())
    for name, mask in masks.items():
        if name not in modules or not hasattr(modules[name], "weight"):
            raise OtbrError(f"cannot prune {name!r}: no such layer with weights")
        mod = modules[name]
        m = mask.to(mod.weight.device, torch.bool).reshape(-1)
        if m.numel() != mod.weight.shape[0]:
            raise OtbrError(f"mask for {name!r} has {m.numel()} entries, layer has {mod.weight.shape[0]} neurons")
        mod.weight[m] = 0
        if getattr(mod, "bias", None) is not None:
            mod.bias[m] = 0
    return out
