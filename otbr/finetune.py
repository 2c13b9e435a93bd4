"""Plain fine-tuning on a clean subset, shared by FT, FP and ULRL.

SGD with momentum and weight decay, a cosine learning-rate schedule stepped per
batch (down to 0 at the end of the last epoch), cross-entropy plus an optional
extra loss term ``extra_loss(model)`` (ULRL's cosine regulariser). The data may
be an :class:`otbr.data.ImageDataset`, an ``(x, y)`` tensor pair or any
iterable of ``(x, y)`` batches; images are uint8 or float in [0, 1].

Example:
    >>> import torch
    >>> from otbr.models import Normalized, create_model
    >>> net = Normalized(create_model("tinycnn", num_classes=4), (0.5,), (0.5,))
    >>> data = (torch.rand(32, 1, 8, 8), torch.randint(0, 4, (32,)))
    >>> rep = finetune(net, data, epochs=1, batch_size=16, progress=False)
    >>> len(rep.loss), rep.model is not net
    (1, True)
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from otbr.errors import OtbrError
from otbr.seeding import seeded_global_rng
from otbr.training import iterate_batches, run_epoch, sgd_cosine, steps_per_epoch

log = logging.getLogger(__name__)


@dataclasses.dataclass
class FinetuneReport:
    """Outcome of :func:`finetune`: the trained model, per-epoch loss/accuracy and wall seconds."""

    model: nn.Module
    loss: list[float]
    acc: list[float]
    seconds: float


def clean_tensors(data: Any, model: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` tensors of a clean subset given as a dataset, a pair of tensors or an iterable of batches; with
    ``model``, they must fit it (:func:`check_fits`).

    Example:
        >>> x, y = clean_tensors([(torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]))])
        >>> tuple(x.shape), y.tolist()
        ((2, 1, 4, 4), [0, 1])
    """
    if data is None:
        raise OtbrError("clean data is required")
    if hasattr(data, "x") and hasattr(data, "y"):
        x, y = data.x, data.y
    elif isinstance(data, tuple | list) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
    elif isinstance(data, Iterable) and not isinstance(data, str | bytes):
        xs, ys = [], []
        for batch in data:
            if not (isinstance(batch, tuple | list) and len(batch) >= 2 and all(torch.is_tensor(t) for t in batch[:2])):
                raise OtbrError(f"clean data batches must be (images, labels) tensor pairs, got {type(batch).__name__}")
            xs.append(batch[0])
            ys.append(batch[1])
        if not xs:
            raise OtbrError("the clean data yielded no batches")
        x, y = torch.cat(xs), torch.cat(ys)
    else:
        raise OtbrError(f"cannot read clean data of type {type(data).__name__}; pass a dataset or (x, y)")
    if x.ndim != 4 or y.ndim != 1:
        raise OtbrError(f"clean data: need NCHW images and one label each, got {tuple(x.shape)}, {tuple(y.shape)}")
    if model is not None and len(x) and len(x) == len(y):
        check_fits(model, x, y)
    if len(x) != len(y) or len(y) < 2:
        raise OtbrError(f"clean data needs at least 2 images with one label each, got {len(x)} / {len(y)}")
    return x, y.long()


def check_fits(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Clean data must fit the model: its images go through it, and its labels are classes it outputs.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> check_fits(net, torch.rand(2, 1, 2, 2), torch.tensor([0, 2]))
        >>> check_fits(net, torch.rand(2, 1, 2, 2), torch.tensor([0, 3]))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        otbr.errors.OtbrError: the clean data's labels run 0..3, the model outputs 3 classes; pass the dataset the ...
    """
    from otbr.device import model_device
    from otbr.pixels import as_float

    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            classes = int(model(as_float(x[:1]).to(model_device(model))).shape[-1])
    except RuntimeError as exc:
        raise OtbrError(f"the clean data's images {tuple(x.shape[1:])} do not fit the model "
                        f"({str(exc).splitlines()[0]}); pass the dataset the model was trained on") from None
    finally:
        model.train(was)
    if len(y) and not 0 <= int(y.min()) <= int(y.max()) < classes:
        raise OtbrError(f"the clean data's labels run {int(y.min())}..{int(y.max())}, the model outputs {classes} "
                        "classes; pass the dataset the model was trained on")


@seeded_global_rng  # dropout in training mode draws from the global RNG
def finetune(
    model: nn.Module,
    data: Any,
    *,
    epochs: int,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 128,
    extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
    grad_hooks: dict[str, torch.Tensor] | None = None,
    seed: int = 0,
    inplace: bool = False,
    desc: str = "fine-tune",
    progress: bool = True,
) -> FinetuneReport:
    """Fine-tune (a copy of) ``model`` on clean data with SGD and a per-step cosine schedule.

    Args:
        model: classifier taking images in [0, 1]; trained where it lives.
        data: clean subset (dataset, ``(x, y)`` or iterable of batches).
        epochs: number of epochs (0 returns an untrained copy).
        lr, momentum, weight_decay, batch_size: SGD settings.
        extra_loss: ``extra_loss(model) -> scalar`` added to the cross-entropy of every batch.
        grad_hooks: ``{parameter name: 0/1 mask}``: the gradient of that parameter is multiplied by the mask,
            so masked entries that start at zero stay exactly zero (momentum and weight decay included).
        seed: seeds the batch order (a private generator) and, for the run, the global RNG dropout draws from
            (forked: the caller's RNG state is left as it was).
        inplace: train ``model`` itself instead of a deep copy.
        desc: progress-bar label.
        progress: tqdm bars.

    Returns:
        :class:`FinetuneReport`; the model's train/eval mode is the one it came with.
    """
    if epochs < 0 or batch_size < 1 or lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0:
        raise OtbrError("fine-tuning needs epochs ≥ 0, batch_size ≥ 1, lr > 0, momentum in [0, 1), weight_decay ≥ 0")
    start = time.perf_counter()
    work = model if inplace else copy.deepcopy(model)
    report = FinetuneReport(work, [], [], 0.0)
    if epochs == 0:
        return report
    x, y = clean_tensors(data)
    gen = torch.Generator().manual_seed(int(seed))
    params = [p for p in work.parameters() if p.requires_grad]
    per_epoch = steps_per_epoch(len(y), batch_size)
    opt, sched = sgd_cosine(params, lr=lr, momentum=momentum, weight_decay=weight_decay, total_steps=epochs * per_epoch)

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, labels)
        return loss if extra_loss is None else loss + extra_loss(work)

    named = dict(work.named_parameters())
    handles = []
    try:
        for name, mask in (grad_hooks or {}).items():
            if name not in named:
                raise OtbrError(f"no parameter named {name!r} to mask")
            m = mask.to(named[name].device, named[name].dtype)
            handles.append(named[name].register_hook(lambda g, m=m: g * m))
        for epoch in range(epochs):
            loss, acc = run_epoch(work, iterate_batches(x, y, batch_size, shuffle=True, generator=gen), opt,
                                  scheduler=sched, loss_fn=loss_fn, total=per_epoch,
                                  desc=f"{desc} {epoch + 1}/{epochs}", progress=progress)
            report.loss.append(loss)
            report.acc.append(acc)
            log.debug("%s epoch %d/%d: loss %.4f, acc %.4f", desc, epoch + 1, epochs, loss, acc)
    finally:
        for h in handles:
            h.remove()
    report.seconds = time.perf_counter() - start
    return report
