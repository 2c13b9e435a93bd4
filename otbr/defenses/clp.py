"""CLP — channel Lipschitzness-based pruning (Zheng et al., ECCV 2022), data-free.

For every output channel k of a ``Conv2d`` the upper bound of its channel
Lipschitz constant is ``UCLC_k = σ_max(W[k] as C_in × (kh·kw)) · |γ_k / sqrt(var_k + eps)|``
where the BatchNorm is the one applied to *that conv's output* in the computation.
Channels with ``UCLC > mean + u · std`` within their layer (population std,
u = 3) are pruned: the conv's weights (and bias) of the channel are zeroed and,
when a BatchNorm directly follows, its γ and β too, so the channel outputs 0.

Which BatchNorm follows is read from a ``torch.fx`` trace of the network: a
conv whose only consumer is a ``BatchNorm2d`` module is paired with it (VGG,
TinyCNN, torchvision-style ResNets; in a pre-activation ResNet ``conv1`` of a
block pairs with that block's ``bn2``). A conv whose output enters a residual
sum (``conv2`` of a pre-activation block, the stem, shortcut convs) has no BN
of its own — the next BN sees the sum of several writers — so it gets the
weight-only bound; these layers are listed in ``info["weight_only_layers"]``.
When the network cannot be traced, a module-order rule (a ``Conv2d`` directly
followed by a ``BatchNorm2d`` of matching width inside the same ``nn.Sequential``)
is used instead, and ``info["pairing"]`` says so.

Example:
    >>> from otbr.models import create_model
    >>> res = CLP(u=3.0).run(create_model("tinycnn", num_classes=4))
    >>> res.info["pairs"]
    {'conv1': 'bn1', 'conv2': 'bn2'}
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any

import torch
from torch import nn

from otbr.defenses.base import Defense, DefenseResult, check_range, register_defense
from otbr.models.normalize import unwrap

log = logging.getLogger(__name__)


def conv_bn_pairs(net: nn.Module) -> tuple[dict[str, str | None], str]:
    """``{conv name: name of the BatchNorm2d applied to its output, or None}`` and the rule used (fx / modules)."""
    mods = dict(net.named_modules())
    convs = [n for n, m in mods.items() if isinstance(m, nn.Conv2d)]
    pairs: dict[str, str | None] = dict.fromkeys(convs)
    try:
        import torch.fx

        graph = torch.fx.symbolic_trace(net).graph
    except Exception as exc:
        log.info("CLP: fx tracing failed (%s); pairing conv and BN by module order", exc)
        for seq in (m for m in mods.values() if isinstance(m, nn.Sequential)):
            prefix = next(n for n, m in mods.items() if m is seq)
            children = list(seq.named_children())
            for (a, ma), (b, mb) in itertools.pairwise(children):
                if isinstance(ma, nn.Conv2d) and isinstance(mb, nn.BatchNorm2d) and mb.num_features == ma.out_channels:
                    pairs[f"{prefix}.{a}" if prefix else a] = f"{prefix}.{b}" if prefix else b
        return pairs, "modules"
    for node in graph.nodes:
        if node.op == "call_module" and node.target in pairs:
            users = list(node.users)
            if len(users) == 1 and users[0].op == "call_module" and isinstance(mods.get(users[0].target),
                                                                               nn.BatchNorm2d):
                pairs[node.target] = str(users[0].target)
    return pairs, "fx"


@torch.no_grad()
def channel_lipschitz(conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None) -> torch.Tensor:
    """UCLC of every output channel of ``conv`` (times ``|γ/σ|`` of ``bn`` when given), float64 on CPU.

    Example:
        >>> conv = nn.Conv2d(2, 3, 3)
        >>> channel_lipschitz(conv).shape
        torch.Size([3])
    """
    w = conv.weight.detach().double().cpu()
    sv = torch.linalg.matrix_norm(w.reshape(w.shape[0], w.shape[1], -1), ord=2)
    if bn is not None:
        gamma = bn.weight.detach().double().cpu() if bn.weight is not None else torch.ones_like(sv)
        sigma = torch.sqrt(bn.running_var.detach().double().cpu() + bn.eps)
        sv = sv * (gamma / sigma).abs()
    return sv


@register_defense
class CLP(Defense):
    """Data-free channel Lipschitzness pruning.

    Args:
        u: threshold in within-layer standard deviations above the mean.
        include_shortcut: also score 1×1 shortcut convolutions.
        device: run on this device (``None``: where the model is).
        progress: accepted for a uniform interface (CLP is a single pass).
    """

    name = "clp"
    needs = "none"

    def __init__(self, *, u: float = 3.0, include_shortcut: bool = True, device: str | None = None,
                 progress: bool = True) -> None:
        self.u = check_range("u", float(u), 0.0, 100.0)
        self.include_shortcut = bool(include_shortcut)
        self._set_run_options(device=device, progress=progress)

    def scores(self, model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str | None], str]:
        """UCLC per conv layer, the conv→BN pairing and the pairing rule."""
        from otbr.layers import is_shortcut

        net = unwrap(model)
        mods = dict(net.named_modules())
        pairs, rule = conv_bn_pairs(net)
        if not self.include_shortcut:
            pairs = {n: b for n, b in pairs.items() if not is_shortcut(n)}
        return ({n: channel_lipschitz(mods[n], mods[b] if b else None) for n, b in pairs.items()}, pairs, rule)

    def run(self, model: nn.Module, data: Any | None = None) -> DefenseResult:
        """Prune the channels of a copy of ``model`` whose UCLC is an outlier in their layer (no data read)."""
        if data is not None:
            log.warning("CLP is data-free: the data passed to run() is ignored")
        start = time.perf_counter()
        work = self._work_copy(model)
        scores, pairs, rule = self.scores(work)
        t1 = time.perf_counter()
        mods = dict(unwrap(work).named_modules())
        pruned: dict[str, list[int]] = {}
        with torch.no_grad():
            for name, s in scores.items():
                if s.numel() < 2:
                    continue
                mask = s > s.mean() + self.u * s.std(unbiased=False)
                if not bool(mask.any()):
                    continue
                pruned[name] = torch.nonzero(mask).flatten().tolist()
                targets = [mods[name]] + ([mods[pairs[name]]] if pairs[name] else [])
                for mod in targets:
                    for p in (mod.weight, getattr(mod, "bias", None)):
                        if p is not None:
                            p[mask.to(p.device)] = 0
        weight_only = [n for n, b in pairs.items() if b is None]
        notes = ["data-free: no data was read"]
        if weight_only:
            notes.append(f"{len(weight_only)} conv layer(s) feed no BatchNorm of their own (residual sums, "
                         "shortcuts): weight-only bound used")
        info = {
            "u": self.u,
            "pairing": rule,
            "pairs": {n: b for n, b in pairs.items() if b},
            "weight_only_layers": weight_only,
            "num_pruned": sum(len(v) for v in pruned.values()),
            "num_neurons": sum(int(s.numel()) for s in scores.values()),
            "pruned": pruned,
            "notes": notes,
        }
        timings = {"score": t1 - start, "prune": time.perf_counter() - t1, "total": time.perf_counter() - start}
        return DefenseResult(model=work, method=self.name, config=self.config(), timings=timings, scores=scores,
                             info=info, data_used="none")
