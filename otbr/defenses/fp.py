"""FP — fine-pruning (Liu, Dolan-Gavitt, Garg, 2018): prune dormant feature channels, then fine-tune.

1. The *feature channels* are the output channels of the last convolutional
   stage, read where the head reads them: the input of the first ``Linear``
   layer (flattened ``C × g`` features, ``g`` = pooled positions per channel).
   For VGG and TinyCNN that is the last conv's BN-ReLU output after pooling; for
   pre-activation ResNets it is the residual stream after the last block, where
   zeroing the last conv's own weights would not silence a channel (the shortcut
   still carries it).
2. Channels are ranked by mean activation on the clean subset (forward
   pre-hook, removed in ``finally``), least active first.
3. Channels are pruned progressively, ``step`` of them at a time (5 % of the
   channels), while clean-subset accuracy stays within ``max_acc_drop`` (default
   0.10 absolute) of the unpruned model and at most ``max_ratio`` (0.9) of the
   channels are pruned; the last count within the budget is kept.
4. Pruning is persistent: the columns of the first ``Linear`` that read the
   pruned channels are zeroed (equivalent to masking the channel), and held at
   zero while fine-tuning (gradient mask): SGD 0.01, momentum 0.9, cosine,
   10 epochs by default.

Example:
    >>> import torch
    >>> from otbr.models import Normalized, create_model
    >>> net = Normalized(create_model("tinycnn", num_classes=4), (0.5,), (0.5,))
    >>> data = (torch.rand(32, 1, 8, 8), torch.randint(0, 4, (32,)))
    >>> FP(epochs=1, batch_size=16, progress=False).run(net, data).info["feature_layer"]
    'fc'
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

import torch
from torch import nn

from otbr.defenses.base import Defense, DefenseResult, check_range, register_defense
from otbr.errors import OtbrError
from otbr.finetune import finetune
from otbr.metrics import accuracy, predict
from otbr.models.normalize import unwrap

log = logging.getLogger(__name__)


def feature_head(net: nn.Module) -> tuple[str, nn.Linear, int]:
    """``(name, first Linear after the last Conv2d, channels)`` — where the last conv stage's channels are read."""
    mods = list(net.named_modules())
    convs = [i for i, (_, m) in enumerate(mods) if isinstance(m, nn.Conv2d)]
    if not convs:
        raise OtbrError("fine-pruning needs a Conv2d layer")
    last = mods[convs[-1]][1]
    for name, m in mods[convs[-1]:]:
        if isinstance(m, nn.Linear):
            channels = int(last.out_channels)
            if m.in_features % channels:
                raise OtbrError(f"{name} reads {m.in_features} features, not a multiple of {channels} channels")
            return name, m, channels
    raise OtbrError("fine-pruning needs a Linear layer after the last Conv2d")


@register_defense
class FP(Defense):
    """Fine-pruning: prune the least active feature channels, then fine-tune.

    Args:
        max_acc_drop: stop pruning before clean-subset accuracy falls more than this below the original.
        max_ratio: prune at most this fraction of the channels.
        step: fraction of the channels added per pruning step.
        epochs: fine-tuning epochs after pruning (0: pruning only).
        lr, momentum, weight_decay, batch_size: SGD settings (cosine schedule).
        seed: seeds the batch order.
        device: run on this device (``None``: where the model is).
        progress: tqdm bars.
    """

    name = "fp"
    needs = "clean"
    default_clean_ratio: ClassVar[float] = 0.05

    def __init__(self, *, max_acc_drop: float = 0.10, max_ratio: float = 0.9, step: float = 0.05, epochs: int = 10,
                 lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4, batch_size: int = 128,
                 seed: int = 0, device: str | None = None, progress: bool = True) -> None:
        self.max_acc_drop = check_range("max_acc_drop", float(max_acc_drop), 0.0, 1.0)
        self.max_ratio = check_range("max_ratio", float(max_ratio), 0.0, 1.0, low_open=True)
        self.step = check_range("step", float(step), 0.0, 1.0, low_open=True)
        self.epochs = int(check_range("epochs", int(epochs), 0, 10_000))
        self.lr = check_range("lr", float(lr), 0.0, 10.0, low_open=True)
        self._set_sgd_options(momentum, weight_decay, batch_size)
        self._set_run_options(seed=seed, device=device, progress=progress)

    @staticmethod
    @torch.no_grad()
    def activations(model: nn.Module, head: nn.Linear, channels: int, x: torch.Tensor) -> torch.Tensor:
        """Mean activation per feature channel on images ``x`` (one eval pass, CPU float64)."""
        total = torch.zeros(channels, dtype=torch.float64)
        count = [0]

        def grab(_: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            f = inputs[0].detach().reshape(len(inputs[0]), channels, -1).double()
            total.add_(f.mean(2).sum(0).cpu())
            count[0] += len(inputs[0])

        handle = head.register_forward_pre_hook(grab)
        try:
            predict(model, x)  # one forward pass in eval mode
        finally:
            handle.remove()
        return total / max(count[0], 1)

    @staticmethod
    def _accuracy_masked(model: nn.Module, head: nn.Linear, keep: torch.Tensor, x: torch.Tensor,
                         y: torch.Tensor) -> float:
        def mask(_: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
            f = inputs[0]
            return ((f.reshape(len(f), len(keep), -1) * keep.to(f.device, f.dtype)[None, :, None]).reshape(f.shape),)

        handle = head.register_forward_pre_hook(mask)
        try:
            return accuracy(model, x, y)
        finally:
            handle.remove()

    def run(self, model: nn.Module, data: Any | None = None) -> DefenseResult:
        """Prune and fine-tune a copy of ``model`` with the clean subset ``data``."""
        start = time.perf_counter()
        x, y = self._clean_data(model, data)
        work = self._work_copy(model)
        net = unwrap(work)
        head_name, head, channels = feature_head(net)
        t0 = time.perf_counter()
        act = self.activations(work, head, channels, x)
        order = torch.argsort(act, stable=True)  # least active first
        base = accuracy(work, x, y)
        step = max(1, round(self.step * channels))
        limit = int(self.max_ratio * channels)
        chosen, acc_chosen, trace = 0, base, []
        for k in range(step, limit + 1, step):
            keep = torch.ones(channels)
            keep[order[:k]] = 0
            acc = self._accuracy_masked(work, head, keep, x, y)
            trace.append({"pruned": k, "acc": acc})
            if base - acc > self.max_acc_drop:
                break
            chosen, acc_chosen = k, acc
        t1 = time.perf_counter()
        pruned = order[:chosen]
        col_keep = torch.ones(channels, head.in_features // channels)
        col_keep[pruned] = 0
        col_keep = col_keep.reshape(1, -1).expand_as(head.weight).contiguous()
        with torch.no_grad():
            head.weight.mul_(col_keep.to(head.weight.device, head.weight.dtype))
        prefix = "net." if work is not net else ""
        rep = finetune(work, (x, y), epochs=self.epochs, lr=self.lr, momentum=self.momentum,
                       weight_decay=self.weight_decay, batch_size=self.batch_size, seed=self.seed, inplace=True,
                       grad_hooks={f"{prefix}{head_name}.weight": col_keep}, desc="FP fine-tune",
                       progress=self.progress)
        work.train(model.training)
        notes = [] if chosen else ["no channel could be pruned within the accuracy budget: FP = fine-tuning"]
        info = {
            "feature_layer": head_name,
            "channels": channels,
            "num_pruned": int(chosen),
            "pruned_ratio": chosen / channels,
            "pruned": {f"{head_name}:input_channels": sorted(pruned.tolist())},
            "acc_subset_before": base,
            "acc_subset_pruned": acc_chosen,
            "prune_trace": trace,
            "notes": notes,
        }
        timings = {"prune": t1 - t0, "finetune": rep.seconds, "total": time.perf_counter() - start}
        return DefenseResult(model=work, method=self.name, config=self.config(), timings=timings,
                             scores={head_name: act}, info=info, data_used=f"clean subset: {len(y)} images")
