"""Training: a reusable SGD loop, and the one-call "train a (backdoored) model" helper.

:func:`train_model` trains a model that takes [0, 1] images (a
:class:`otbr.models.Normalized` wrapper) with SGD + momentum and a cosine
learning-rate schedule stepped per batch. :func:`run_epoch` is the loop body,
reusable by fine-tuning defenses. :func:`train_backdoored` loads a dataset,
poisons it with an attack (or not), trains, evaluates ACC/ASR/RA and returns
the model with its metadata ready for :func:`otbr.models.save_model`.

Augmentation is a random crop with 2 px zero padding only. Triggers are baked
into the stored poisoned images, so the augmentation is applied after the
trigger (as it would be to any poisoned file); horizontal flips are left off
because a flip moves a corner trigger to the other corner (and WaNet's warp to
its mirror image), which teaches the network a different trigger.

Example:
    >>> import torch
    >>> from otbr.data import ImageDataset
    >>> from otbr.models import Normalized, create_model
    >>> ds = ImageDataset(torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8), torch.randint(0, 4, (64,)))
    >>> net = Normalized(create_model("tinycnn", num_classes=4), (0.5,), (0.5,))
    >>> report = train_model(net, ds, epochs=1, batch_size=16, progress=False)
    >>> len(report.loss)
    1
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from otbr.device import model_device, resolve_device
from otbr.errors import OtbrError
from otbr.metrics import Metrics, evaluate
from otbr.pixels import as_float

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclasses.dataclass
class TrainReport:
    """What a training run did.

    Attributes:
        epochs: number of epochs run.
        loss: mean training loss per epoch.
        acc: training accuracy per epoch (on the augmented, possibly poisoned data).
        lr: learning rate at the start of each epoch.
        wall_s: wall-clock seconds of the training loop.
        metrics: ACC (and ASR/RA with a poisoned set) after training, if test data was given.
    """

    epochs: int
    loss: list[float]
    acc: list[float]
    lr: list[float]
    wall_s: float
    metrics: Metrics | None = None

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["metrics"] = self.metrics.as_dict() if self.metrics is not None else None
        return d


def show_progress(progress: bool) -> bool:
    """True when progress bars should be drawn (asked for, and stderr is a terminal)."""
    return bool(progress) and sys.stderr.isatty()


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample random crop of a zero-padded batch back to its size (vectorised).

    Example:
        >>> random_crop(torch.ones(2, 1, 4, 4), pad=0).shape
        torch.Size([2, 1, 4, 4])
    """
    if pad <= 0:
        return x
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return xp[batch, chans, rows, cols]


def iterate_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = True,
    generator: torch.Generator | None = None,
) -> Iterator[Batch]:
    """Batches of ``(float images in [0, 1], labels)`` from in-memory tensors (uint8 or float images).

    A trailing batch of a single sample is dropped when shuffling (BatchNorm cannot train on it).
    """
    n = len(y)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        if shuffle and len(idx) < 2:
            break
        xb = x[idx]
        yield as_float(xb), y[idx]


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches per shuffled epoch of :func:`iterate_batches` (a last batch of one is dropped).

    Example:
        >>> steps_per_epoch(257, 128), steps_per_epoch(258, 128), steps_per_epoch(1, 128)
        (2, 3, 1)
    """
    return max(1, n // batch_size + (1 if n % batch_size > 1 else 0))


def sgd_cosine(
    params: Iterable[torch.Tensor], *, lr: float, momentum: float, weight_decay: float, total_steps: int | None
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.CosineAnnealingLR | None]:
    """SGD (momentum, weight decay) and a cosine schedule from ``lr`` to 0 over ``total_steps`` per-batch steps.

    ``total_steps=None``: a constant learning rate (no scheduler).
    """
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = None if total_steps is None else torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    return opt, sched


def run_epoch(
    model: nn.Module,
    batches: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    *,
    scheduler: Any | None = None,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    total: int | None = None,
    desc: str = "train",
    progress: bool = True,
) -> tuple[float, float]:
    """One pass of SGD over ``batches``; returns (mean loss, accuracy).

    The model is put in train mode and its previous mode restored. Batches are
    moved to the model's device; ``scheduler`` (if any) is stepped per batch.

    Args:
        model: takes images in [0, 1].
        batches: iterable of ``(images, labels)``; uint8 images are scaled to [0, 1].
        optimizer: optimiser over the parameters to train.
        scheduler: a per-step learning-rate scheduler.
        augment: function applied to each image batch (on the device) before the forward pass.
        loss_fn: ``loss_fn(logits, labels)``, default cross-entropy.
        total: number of batches, for the progress bar.
        desc: progress bar label.
        progress: draw a tqdm bar (only on a terminal).

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> loss, acc = run_epoch(net, [(torch.rand(8, 1, 2, 2), torch.zeros(8, dtype=torch.long))], opt,
        ...                       progress=False)
    """
    loss_fn = loss_fn or F.cross_entropy
    device = model_device(model)
    was_training = model.training
    model.train()
    seen, correct, loss_sum = 0, 0, 0.0
    shown = show_progress(progress)
    bar = tqdm(batches, total=total, desc=desc, leave=False, disable=not shown, unit="batch")
    # Without a bar (log files, pipes), a few log lines per long epoch show that it is moving.
    log_every = max(100, (total or 0) // 4) if not shown else 0
    t0 = time.perf_counter()
    try:
        for step, (xb, yb) in enumerate(bar, 1):
            xb = xb.to(device, non_blocking=True)
            xb = as_float(xb)
            yb = yb.to(device, non_blocking=True)
            if augment is not None:
                xb = augment(xb)
            logits = model(xb)
            loss = loss_fn(logits, yb)
            if not torch.isfinite(loss):
                raise OtbrError(f"training diverged (loss {float(loss)}); lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            n = len(yb)
            seen += n
            loss_sum += float(loss.detach()) * n
            correct += int((logits.detach().argmax(1) == yb).sum())
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
            if log_every and step % log_every == 0:
                log.info("%s: batch %d/%s, loss %.4f, acc %.4f, %.0f s", desc, step, total or "?", loss_sum / seen,
                         correct / seen, time.perf_counter() - t0)
    finally:
        bar.close()
        model.train(was_training)
    if seen == 0:
        raise OtbrError("no training batches (empty training set?)")
    return loss_sum / seen, correct / seen


def _clean_pair(test: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(test, "x") and hasattr(test, "y"):
        return test.x, test.y
    return test[0], test[1]


def _poisoned_triple(poisoned: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
    if hasattr(poisoned, "as_tuple"):
        return poisoned.as_tuple()
    return poisoned[0], poisoned[1], poisoned[2]


def train_model(
    model: nn.Module,
    train_ds: Any,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    schedule: str = "cosine",
    augment: bool = True,
    crop_padding: int = 2,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    test: Any | None = None,
    poisoned: Any | None = None,
) -> TrainReport:
    """Train ``model`` in place with SGD + momentum; returns a :class:`TrainReport`.

    Args:
        model: takes images in [0, 1] (e.g. :class:`otbr.models.Normalized`); trained where it is
            unless ``device`` is given.
        train_ds: a dataset with ``x`` (uint8 or float NCHW) and ``y`` tensors (:class:`otbr.data.ImageDataset`).
        epochs: number of epochs (≥ 1).
        batch_size, lr, momentum, weight_decay: SGD settings.
        schedule: ``"cosine"`` (per step, to 0) or ``"constant"``.
        augment: random crop with ``crop_padding`` px zero padding (no flips, see the module docstring).
        seed: seeds shuffling and augmentation (a private ``torch.Generator``; no global seeding).
        device: move the model there first (``"auto"``: CUDA when available).
        progress: tqdm bar per epoch (only on a terminal).
        test: clean test set (dataset or ``(x, y)``) for the final ACC.
        poisoned: poisoned test set (:class:`otbr.attacks.PoisonedSet` or ``(x, y_true, target)``) for ASR/RA.

    Example:
        >>> report = train_model(net, train, epochs=3, test=test_ds, poisoned=pset)  # doctest: +SKIP
        >>> report.metrics.asr  # doctest: +SKIP
        0.998
    """
    if epochs < 1:
        raise OtbrError(f"epochs must be ≥ 1, got {epochs}")
    if batch_size < 1 or lr <= 0:
        raise OtbrError("batch size must be ≥ 1 and learning rate > 0")
    if schedule not in ("cosine", "constant"):
        raise OtbrError(f"unknown schedule {schedule!r} (cosine or constant)")
    if device is not None:
        model.to(resolve_device(device))
    gen = torch.Generator().manual_seed(int(seed))
    aug_gen = torch.Generator().manual_seed(int(seed) + 1)
    x, y = train_ds.x, train_ds.y
    per_epoch = steps_per_epoch(len(y), batch_size)
    optimizer, scheduler = sgd_cosine(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      total_steps=epochs * per_epoch if schedule == "cosine" else None)

    def aug(xb: torch.Tensor) -> torch.Tensor:
        return random_crop(xb, crop_padding, aug_gen)

    report = TrainReport(epochs=epochs, loss=[], acc=[], lr=[], wall_s=0.0)
    start = time.perf_counter()
    for epoch in range(epochs):
        report.lr.append(optimizer.param_groups[0]["lr"])
        t0 = time.perf_counter()
        loss, acc = run_epoch(
            model, iterate_batches(x, y, batch_size, shuffle=True, generator=gen), optimizer, scheduler=scheduler,
            augment=aug if augment else None, total=per_epoch, desc=f"epoch {epoch + 1}/{epochs}",
            progress=progress,
        )
        report.loss.append(loss)
        report.acc.append(acc)
        log.info("epoch %d/%d: loss %.4f, train acc %.4f, %.1f s", epoch + 1, epochs, loss, acc,
                 time.perf_counter() - t0)
    report.wall_s = time.perf_counter() - start
    model.eval()
    if test is not None:
        triple = _poisoned_triple(poisoned) if poisoned is not None else None
        report.metrics = evaluate(model, _clean_pair(test), triple)
        log.info("after training: %s", report.metrics.as_dict())
    return report


@dataclasses.dataclass
class TrainedModel:
    """Result of :func:`train_backdoored`.

    Attributes:
        model: the trained :class:`otbr.models.Normalized` model (eval mode).
        meta: its :class:`otbr.models.ModelMeta` (attack config, dataset, classes, history).
        report: the :class:`TrainReport` (final ACC/ASR/RA in ``report.metrics``).
        poisoned: the poisoned test set (``None`` for a clean model).
        poisoned_indices: indices of the poisoned training samples.
    """

    model: nn.Module
    meta: Any
    report: TrainReport
    poisoned: Any | None
    poisoned_indices: torch.Tensor


def train_backdoored(
    data: str,
    arch: str,
    *,
    epochs: int,
    arch_kwargs: dict[str, Any] | None = None,
    attack: Any | None = None,
    clean_model: nn.Module | None = None,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 0.01,
    augment: bool = True,
    data_root: str | None = None,
    train_limit: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    train_ds: Any | None = None,
    test_ds: Any | None = None,
) -> TrainedModel:
    """Load ``data``, poison it with ``attack`` (``None``: clean), train ``arch``, evaluate.

    Args:
        data: dataset name or spec (``fashion-mnist``, ``npz:FILE`` …).
        arch: registered architecture name (or ``file.py:Factory``).
        epochs: training epochs.
        arch_kwargs: factory arguments; ``num_classes`` and (for registered archs) ``in_channels``
            default to the dataset's.
        attack: an :class:`otbr.attacks.Attack`; a :class:`~otbr.attacks.Trojan` that is not fitted yet
            is fitted on ``clean_model`` first.
        clean_model: a clean model (images in [0, 1]) for Trojan's patch optimisation.
        seed: seeds model initialisation (via a forked RNG), shuffling and augmentation.
        train_limit: use only a seeded random subset of this many training images (quick runs).
        train_ds, test_ds: already loaded datasets (skip loading ``data``).

    Returns:
        A :class:`TrainedModel`; save it with ``save_model(result.model, path, result.meta)``.

    Example:
        >>> from otbr.attacks import create_attack
        >>> r = train_backdoored("fashion-mnist", "preactresnet18", arch_kwargs={"width": 16},
        ...                      attack=create_attack("badnets"), epochs=3)  # doctest: +SKIP
        >>> r.report.metrics.asr  # doctest: +SKIP
        1.0
    """
    from otbr.attacks import Trojan
    from otbr.data import default_normalization, load_dataset
    from otbr.data.registry import portable_spec
    from otbr.models import ModelMeta, build_model, is_custom_arch

    train_ds = train_ds if train_ds is not None else load_dataset(data, "train", root=data_root)
    test_ds = test_ds if test_ds is not None else load_dataset(data, "test", root=data_root)
    if train_ds.input_shape != test_ds.input_shape:
        raise OtbrError(f"train and test images differ in shape: {train_ds.input_shape} vs {test_ds.input_shape}")
    if train_limit is not None and train_limit < len(train_ds):
        pick = torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(seed + 7))[:train_limit]
        train_ds = train_ds.subset(pick.sort().values)
    kwargs = dict(arch_kwargs or {})
    kwargs.setdefault("num_classes", train_ds.num_classes)
    if not is_custom_arch(arch):
        kwargs.setdefault("in_channels", train_ds.input_shape[0])
    if kwargs["num_classes"] != train_ds.num_classes:
        raise OtbrError(f"num_classes {kwargs['num_classes']!r} in the architecture arguments, but {data} has "
                        f"{train_ds.num_classes} classes; leave it out (it is read from the dataset)")
    if kwargs.get("in_channels", train_ds.input_shape[0]) != train_ds.input_shape[0]:
        raise OtbrError(f"in_channels {kwargs['in_channels']!r} in the architecture arguments, but {data} has "
                        f"{train_ds.input_shape[0]}-channel images; leave it out (it is read from the dataset)")
    mean, std = default_normalization(train_ds)
    meta = ModelMeta(arch=arch, arch_kwargs=kwargs, num_classes=int(kwargs["num_classes"]),
                     input_shape=train_ds.input_shape, mean=tuple(mean), std=tuple(std), classes=train_ds.classes,
                     dataset=portable_spec(data), seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # model initialisation only; the global RNG state is restored afterwards
        try:
            model = build_model(meta)
        except (TypeError, ValueError, RuntimeError) as exc:  # e.g. a width of -1 or 8.0 in --arch-kwargs
            raise OtbrError(f"cannot build {arch} with {json.dumps(kwargs)}: {exc}") from exc
    if device is not None:
        model.to(resolve_device(device))

    poisoned = None
    idx = torch.empty(0, dtype=torch.long)
    ds = train_ds
    if attack is not None:
        if isinstance(attack, Trojan) and attack.patch is None:
            if clean_model is None:
                raise OtbrError("the trojan attack optimises its patch on a clean model: pass a clean model")
            attack.fit(clean_model, train_ds)
        ds, idx = attack.poison_train(train_ds)
        poisoned = attack.poison_test(test_ds)
        meta.attack = attack.config()
    report = train_model(model, ds, epochs=epochs, batch_size=batch_size, lr=lr, augment=augment, seed=seed,
                         progress=progress, test=test_ds, poisoned=poisoned)
    meta.history = [{
        "step": "train", "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed, "augment": augment,
        "poison_rate": attack.poison_rate if attack is not None else 0.0, "n_train": len(ds),
        "n_poisoned": len(idx), "wall_s": round(report.wall_s, 2),
        "metrics": report.metrics.as_dict() if report.metrics is not None else None,
    }]
    if report.metrics is not None and not math.isfinite(report.metrics.acc):
        raise OtbrError("training produced a non-finite accuracy")
    return TrainedModel(model=model, meta=meta, report=report, poisoned=poisoned, poisoned_indices=idx)
