"""Unlearning and neuron weight change (NWC) scores, shared by OTBR and TSBD.

*Unlearning* is gradient **ascent** on the cross-entropy with SGD, on one deep
copy of the model (the input is never modified), in train mode (BatchNorm uses
batch statistics; the copy's running statistics change, the original's do not).
Three sources of batches:

* ``"random"`` (OTBR, data-free): ``steps`` batches of uniform noise in [0, 1]
  shaped like one model input (``input_shape``), labels uniform over **all**
  ``num_classes`` classes, drawn from a seeded :class:`torch.Generator` on the
  model's device. The model's :class:`~otbr.models.Normalized` wrapper maps the
  noise to its normalised input space like a real image.
* ``"clean"`` (TSBD) / ``"poison"``: epochs over a ``loader`` until the running
  accuracy of an epoch (predictions made in train mode before each step) is
  ``≤ stop_acc``, or ``max_epochs`` is reached (then a warning is logged and
  :attr:`UnlearnResult.hit_cap` is set).

The NWC of neuron ``k`` (output channel of a ``Conv2d`` / output unit of a
``Linear``) is ``Σ |W_after[k] − W_before[k]|`` over its weights (bias not
included), computed in float64 on CPU and never rounded. Layer names are those
of the bare network (:func:`otbr.models.unwrap`), e.g. ``"layer1.0.conv1"``.

Example:
    >>> from otbr.models import create_model, Normalized
    >>> net = Normalized(create_model("tinycnn", num_classes=4, in_channels=1), (0.5,), (0.25,))
    >>> s = nwc_scores(net, "random", input_shape=(1, 8, 8), num_classes=4, steps=2, progress=False)
    >>> sorted(s.layers)
    ['conv1', 'conv2']
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import logging
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from otbr.device import model_device
from otbr.errors import OtbrError
from otbr.layers import considered_layers
from otbr.models.normalize import unwrap
from otbr.pixels import as_float
from otbr.seeding import seeded_global_rng

log = logging.getLogger(__name__)

UnlearnMode = Literal["random", "clean", "poison"]
Batches = Iterable[Sequence[torch.Tensor]] | tuple[torch.Tensor, torch.Tensor]


@dataclasses.dataclass
class UnlearnResult:
    """Outcome of :func:`unlearn`.

    Attributes:
        model: the unlearned copy (train/eval mode as the input had it).
        mode: ``"random"``, ``"clean"`` or ``"poison"``.
        steps: optimiser steps taken.
        epochs: epochs over the loader (0 in random mode).
        accuracy: random mode: accuracy on the last noise batch; loader modes: running accuracy of the last epoch.
        seconds: wall time.
        hit_cap: loader modes: the epoch cap was reached before ``accuracy ≤ stop_acc``.
    """

    model: nn.Module
    mode: str
    steps: int
    epochs: int
    accuracy: float
    seconds: float
    hit_cap: bool = False


def _iter_batches(
    data: Batches, batch_size: int, generator: torch.Generator | None
) -> Iterator[Sequence[torch.Tensor]]:
    """Batches from a ``(x, y)`` tensor pair (shuffled with ``generator``; a trailing batch of one is dropped) or any
    iterable of batches."""
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        order = torch.randperm(len(x), generator=generator, device=generator.device if generator else "cpu")
        order = order.to(x.device)
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            if len(idx) < 2 <= len(x):  # a trailing batch of one: BatchNorm cannot train on it (as iterate_batches)
                break
            yield x[idx], y[idx]
    else:
        yield from data  # type: ignore[misc]


@seeded_global_rng  # dropout in training mode draws from the global RNG
def unlearn(
    model: nn.Module,
    mode: UnlearnMode,
    *,
    steps: int = 20,
    loader: Batches | None = None,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    lr: float = 1e-4,
    momentum: float = 0.9,
    batch_size: int = 256,
    max_epochs: int = 100,
    stop_acc: float = 0.10,
    seed: int = 0,
    progress: bool = True,
    generator: torch.Generator | None = None,
) -> UnlearnResult:
    """Gradient-ascent unlearning of a deep copy of ``model``.

    Args:
        model: classifier taking images in [0, 1] (usually :class:`~otbr.models.Normalized`); left untouched.
        mode: ``"random"`` (noise, data-free), ``"clean"`` or ``"poison"`` (batches from ``loader``).
        steps: random mode: number of noise batches.
        loader: loader modes: an iterable of ``(x, y, ...)`` batches (re-iterated every epoch) or an ``(x, y)``
            tensor pair, batched by ``batch_size`` and shuffled with the generator.
        input_shape: random mode: ``(C, H, W)`` of one input (required).
        num_classes: random mode: labels are drawn from ``0 … num_classes − 1`` (required).
        lr, momentum: SGD settings.
        batch_size: random mode: batch size; tensor-pair loader: batch size.
        max_epochs: loader modes: epoch cap.
        stop_acc: loader modes: stop after the first epoch whose running accuracy is ``≤ stop_acc``.
        seed: seed of the generator used when ``generator`` is not given, and of the global RNG (dropout)
            for the duration of the call (forked: the caller's RNG state is left as it was).
        progress: show a tqdm bar.
        generator: a :class:`torch.Generator` on the model's device (random mode) to draw from.

    Returns:
        :class:`UnlearnResult` with the unlearned copy.

    Example:
        >>> from otbr.models import create_model
        >>> net = create_model("tinycnn", num_classes=4, in_channels=1)
        >>> r = unlearn(net, "random", steps=2, input_shape=(1, 8, 8), num_classes=4, progress=False)
        >>> r.steps
        2
    """
    if mode not in ("random", "clean", "poison"):
        raise OtbrError(f"unlearning mode must be random, clean or poison, got {mode!r}")
    if lr <= 0 or not 0 <= momentum < 1 or batch_size < 1:
        raise OtbrError("unlearning needs lr > 0, momentum in [0, 1) and batch_size ≥ 1")
    start = time.perf_counter()
    device = model_device(model)
    work = copy.deepcopy(model)
    was_training = model.training
    work.train()
    opt = torch.optim.SGD([p for p in work.parameters() if p.requires_grad], lr=lr, momentum=momentum)

    def ascent_step(x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
        opt.zero_grad(set_to_none=True)
        logits = work(x)
        loss = -F.cross_entropy(logits, y)  # maximise the cross-entropy
        loss.backward()
        opt.step()
        return int((logits.argmax(1) == y).sum()), len(y)

    n_steps, epochs, acc, hit_cap = 0, 0, 0.0, False
    if mode == "random":
        if input_shape is None or num_classes is None:
            raise OtbrError("random unlearning needs input_shape and num_classes (from the model's metadata)")
        if steps < 1 or num_classes < 2:
            raise OtbrError("random unlearning needs steps ≥ 1 and num_classes ≥ 2")
        gen = generator if generator is not None else torch.Generator(device=device).manual_seed(seed)
        shape = (batch_size, *tuple(int(s) for s in input_shape))
        for _ in tqdm(range(steps), desc="random unlearning", disable=not progress, leave=False):
            x = torch.rand(shape, generator=gen, device=device)
            y = torch.randint(0, num_classes, (batch_size,), generator=gen, device=device)
            correct, total = ascent_step(x, y)
            acc = correct / total
            n_steps += 1
    else:
        if loader is None:
            raise OtbrError(f"{mode} unlearning needs a loader of (x, y) batches")
        if max_epochs < 1:
            raise OtbrError("max_epochs must be ≥ 1")
        gen = generator if generator is not None else torch.Generator().manual_seed(seed)
        bar = tqdm(total=max_epochs, desc=f"{mode} unlearning", disable=not progress, leave=False)
        try:
            while True:
                correct = total = 0
                for batch in _iter_batches(loader, batch_size, gen):
                    x, y = as_float(batch[0].to(device)), batch[1].to(device)
                    c, t = ascent_step(x, y)
                    correct, total, n_steps = correct + c, total + t, n_steps + 1
                epochs += 1
                if total == 0:
                    raise OtbrError(f"{mode} unlearning: the loader yielded no batches")
                acc = correct / total
                bar.update(1)
                bar.set_postfix(acc=f"{acc:.3f}")
                if acc <= stop_acc:
                    break
                if epochs >= max_epochs:
                    hit_cap = True
                    log.warning(
                        "%s unlearning hit the cap of %d epochs with accuracy %.3f > %.3f",
                        mode, max_epochs, acc, stop_acc,
                    )
                    break
        finally:
            bar.close()
    work.train(was_training)
    return UnlearnResult(work, mode, n_steps, epochs, acc, time.perf_counter() - start, hit_cap)


def _resolve_layers(net: nn.Module, layers: Sequence[str] | None, include_linear: bool) -> list[str]:
    if layers is None:
        return [n for n, _ in considered_layers(net, include_linear=include_linear)]
    return list(layers)


@torch.no_grad()
def neuron_weight_change(
    before: nn.Module,
    after: nn.Module,
    layers: Sequence[str] | None = None,
    include_linear: bool = False,
) -> dict[str, torch.Tensor]:
    """Per-layer NWC: ``Σ |W_after[k] − W_before[k]|`` over each output neuron's weights.

    Args:
        before, after: two models of the same architecture (wrapped or bare).
        layers: names in the bare network; default: :func:`otbr.layers.considered_layers`.
        include_linear: with ``layers=None``, also score ``Linear`` layers.

    Returns:
        ``{layer name: float64 CPU tensor of shape (out_features,)}`` in definition order. A non-finite change
        (a diverged unlearning) is an :class:`OtbrError`.

    Example:
        >>> import copy
        >>> from otbr.models import create_model
        >>> a = create_model("tinycnn"); b = copy.deepcopy(a)
        >>> float(neuron_weight_change(a, b)["conv1"].sum())
        0.0
    """
    net_b, net_a = unwrap(before), unwrap(after)
    mods_b, mods_a = dict(net_b.named_modules()), dict(net_a.named_modules())
    out: dict[str, torch.Tensor] = {}
    for name in _resolve_layers(net_b, layers, include_linear):
        if name not in mods_b or name not in mods_a:
            raise OtbrError(f"layer {name!r} not found in both models")
        wb, wa = mods_b[name].weight, mods_a[name].weight
        if wb.shape != wa.shape:
            raise OtbrError(f"layer {name!r}: weight shapes differ {tuple(wb.shape)} vs {tuple(wa.shape)}")
        diff = wa.detach().to(torch.float64) - wb.detach().to(wa.device, torch.float64)
        out[name] = diff.abs().flatten(1).sum(1).cpu()
    bad = [name for name, v in out.items() if not bool(torch.isfinite(v).all())]
    if bad:  # a NaN would sort first and be pruned as the most changed neuron
        raise OtbrError(f"unlearning diverged (non-finite weight changes in {', '.join(bad[:3])}); "
                        "lower its learning rate")
    return out


@dataclasses.dataclass
class FlatScores:
    """All neurons' scores in one vector: ``values[i]`` is neuron ``index[i]`` of layer ``names[layer[i]]``."""

    values: torch.Tensor
    layer: torch.Tensor
    index: torch.Tensor
    names: list[str]

    def neuron(self, i: int) -> tuple[str, int]:
        """``(layer name, neuron index)`` of flat position ``i``."""
        return self.names[int(self.layer[i])], int(self.index[i])


@dataclasses.dataclass
class NWCScores:
    """Per-layer NWC scores (float64, CPU) and how they were made.

    Example:
        >>> s = NWCScores({"a": torch.tensor([1.0, 3.0]), "b": torch.tensor([2.0])})
        >>> s.flat().values.tolist(), s.total
        ([1.0, 3.0, 2.0], 3)
    """

    layers: dict[str, torch.Tensor]
    mode: str = "random"
    unlearn: UnlearnResult | None = dataclasses.field(default=None, repr=False)

    @property
    def total(self) -> int:
        """Number of scored neurons."""
        return sum(int(v.numel()) for v in self.layers.values())

    def flat(self) -> FlatScores:
        """Concatenated scores with the (layer, index) of every entry, layers in definition order."""
        names = list(self.layers)
        vals = [self.layers[n].reshape(-1) for n in names]
        if not vals:
            empty = torch.zeros(0, dtype=torch.int64)
            return FlatScores(torch.zeros(0, dtype=torch.float64), empty, empty, names)
        sizes = torch.tensor([v.numel() for v in vals])
        layer = torch.repeat_interleave(torch.arange(len(names)), sizes)
        index = torch.cat([torch.arange(int(s)) for s in sizes])
        return FlatScores(torch.cat(vals), layer, index, names)

    def to_csv(self, path: str | Path) -> Path:
        """Write ``layer,index,nwc`` rows; floats as ``repr`` (round-trips exactly)."""
        path = Path(path)
        flat = self.flat()
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["layer", "index", "nwc"])
            names = [flat.names[i] for i in flat.layer.tolist()]
            w.writerows(zip(names, flat.index.tolist(), map(repr, flat.values.tolist()), strict=True))
        return path

    @classmethod
    def from_csv(cls, path: str | Path, mode: str = "random") -> NWCScores:
        """Read a file written by :meth:`to_csv` (bit-exact float64 scores)."""
        rows: dict[str, list[tuple[int, float]]] = {}
        try:
            with Path(path).open(newline="") as fh:
                for rec in csv.DictReader(fh):
                    rows.setdefault(rec["layer"], []).append((int(rec["index"]), float(rec["nwc"])))
        except (KeyError, ValueError, TypeError, UnicodeDecodeError, csv.Error) as exc:
            raise OtbrError(f"{path}: not an NWC score file (columns layer,index,nwc as `otbr nwc -o` writes; "
                            f"{type(exc).__name__}: {exc})") from exc
        if not rows:
            raise OtbrError(f"{path}: holds no scores (columns layer,index,nwc as `otbr nwc -o` writes)")
        bad = [name for name, items in rows.items() if not all(math.isfinite(v) for _, v in items)]
        if bad:
            raise OtbrError(f"{path}: non-finite scores in layer(s) {', '.join(bad[:3])}")
        layers: dict[str, torch.Tensor] = {}
        for name, items in rows.items():
            if sorted(i for i, _ in items) != list(range(len(items))):
                raise OtbrError(f"{path}: layer {name!r} must list each neuron index 0…{len(items) - 1} exactly once")
            idx = torch.tensor([i for i, _ in items])
            vals = torch.tensor([v for _, v in items], dtype=torch.float64)
            t = torch.empty(len(items), dtype=torch.float64)
            t[idx] = vals
            layers[name] = t
        return cls(layers, mode)


def as_layer_scores(scores: NWCScores | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``{layer: scores}`` mapping of either form."""
    return dict(scores.layers) if isinstance(scores, NWCScores) else dict(scores)


def nwc_scores(
    model: nn.Module,
    mode: UnlearnMode = "random",
    *,
    layers: Sequence[str] | None = None,
    include_linear: bool = False,
    **unlearn_kwargs: Any,
) -> NWCScores:
    """Unlearn a copy of ``model`` (see :func:`unlearn`) and score every considered neuron by its NWC.

    Example:
        >>> from otbr.models import create_model
        >>> net = create_model("tinycnn", num_classes=4, in_channels=1)
        >>> s = nwc_scores(net, input_shape=(1, 8, 8), num_classes=4, steps=1, progress=False)
        >>> s.total
        24
    """
    res = unlearn(model, mode, **unlearn_kwargs)
    return NWCScores(neuron_weight_change(model, res.model, layers, include_linear), mode, res)
