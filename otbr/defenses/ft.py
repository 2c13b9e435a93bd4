"""FT: plain fine-tuning of the backdoored model on a clean subset (the weakest data-dependent baseline).

SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 128, cosine schedule per
step, 10 epochs by default, on the same default 5 % subset as TSBD so the two
are comparable. No augmentation.

Example:
    >>> import torch
    >>> from otbr.models import Normalized, create_model
    >>> net = Normalized(create_model("tinycnn", num_classes=4), (0.5,), (0.5,))
    >>> data = (torch.rand(32, 1, 8, 8), torch.randint(0, 4, (32,)))
    >>> FT(epochs=1, batch_size=16, progress=False).run(net, data).method
    'ft'
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from torch import nn

from otbr.defenses.base import Defense, DefenseResult, check_range, register_defense
from otbr.finetune import finetune


@register_defense
class FT(Defense):
    """Plain fine-tuning.

    Args:
        epochs: fine-tuning epochs (default 10).
        lr, momentum, weight_decay, batch_size: SGD settings (cosine schedule to 0).
        seed: seeds the batch order.
        device: run on this device (``None``: where the model is).
        progress: tqdm bars.
    """

    name = "ft"
    needs = "clean"
    default_clean_ratio: ClassVar[float] = 0.05

    def __init__(self, *, epochs: int = 10, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4,
                 batch_size: int = 128, seed: int = 0, device: str | None = None, progress: bool = True) -> None:
        self.epochs = int(check_range("epochs", int(epochs), 1, 10_000))
        self.lr = check_range("lr", float(lr), 0.0, 10.0, low_open=True)
        self._set_sgd_options(momentum, weight_decay, batch_size)
        self._set_run_options(seed=seed, device=device, progress=progress)

    def run(self, model: nn.Module, data: Any | None = None) -> DefenseResult:
        """Fine-tune a copy of ``model`` on the clean subset ``data``."""
        start = time.perf_counter()
        x, y = self._clean_data(model, data)
        work = self._work_copy(model)
        rep = finetune(work, (x, y), epochs=self.epochs, lr=self.lr, momentum=self.momentum,
                       weight_decay=self.weight_decay, batch_size=self.batch_size, seed=self.seed, inplace=True,
                       desc="FT", progress=self.progress)
        info = {"train_loss": rep.loss, "train_acc": rep.acc, "notes": []}
        timings = {"finetune": rep.seconds, "total": time.perf_counter() - start}
        return DefenseResult(model=work, method=self.name, config=self.config(), timings=timings, info=info,
                             data_used=f"clean subset: {len(y)} images")
