"""ULRL (Min, Pham, Sun, arXiv 2405.14781): unlearning exposes suspicious neurons, then targeted relearning.

1. Unlearning on a copy (gradient ascent on the cross-entropy over the clean
   subset): SGD lr 0.01, momentum 0.9, weight decay 5e-4, lr ×0.1 at epochs 10
   and 20, gradient norm clipped to 20, at most 20 epochs, stop after the first
   epoch whose running training accuracy is ≤ 20 %.
2. Flagging (:func:`flag_rows`): for the classifier layer — the last ``Linear``
   of any architecture, found by :func:`otbr.layers.classifier_layer` — the change
   of row i is ``c_i = Σ |ΔW[i]|``; robust z-score ``|c − median| / (1.4826·MAD)``;
   rows with z > 3.5 and c > median are flagged, and the **two largest** are kept
   (the authors' code keeps the first two by index).
3. Relearning from the ORIGINAL weights: flagged rows re-drawn from U(−s, s),
   s = sqrt(2 / fan_in) (seeded generator), their biases zeroed; all parameters
   trained on the subset with CE + α·Σ cos(W[i], W_original[i]) over the flagged
   rows; SGD momentum 0.9, lr 0.005, weight decay 5e-4, cosine schedule.
   Nothing flagged → plain fine-tuning with the same settings (said in ``info["notes"]``).

Example:
    >>> import torch
    >>> from otbr.models import Normalized, create_model
    >>> net = Normalized(create_model("tinycnn", num_classes=4), (0.5,), (0.5,))
    >>> data = (torch.rand(32, 1, 8, 8), torch.randint(0, 4, (32,)))
    >>> res = ULRL(unlearn_epochs=1, relearn_epochs=1, batch_size=16, progress=False).run(net, data)
    >>> res.data_used
    'clean subset: 32 images'
"""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from otbr.defenses.base import Defense, DefenseResult, check_range, register_defense
from otbr.device import model_device
from otbr.errors import OtbrError
from otbr.finetune import finetune
from otbr.layers import classifier_layer
from otbr.models.normalize import unwrap
from otbr.training import iterate_batches

log = logging.getLogger(__name__)

MAD_SCALE = 1.4826


def robust_z(values: torch.Tensor) -> torch.Tensor:
    """``|v − median| / (1.4826 · MAD)`` (median by interpolation; MAD 0 → mean absolute deviation · 1.2533).

    Example:
        >>> robust_z(torch.tensor([1.0, 1.1, 0.9, 1.0, 5.0])).argmax().item()
        4
    """
    v = values.detach().double().reshape(-1)
    med = torch.quantile(v, 0.5)
    dev = (v - med).abs()
    scale = MAD_SCALE * torch.quantile(dev, 0.5)
    if scale <= 0:  # more than half the values equal the median
        scale = dev.mean() * math.sqrt(math.pi / 2)
    if scale <= 0:
        return torch.zeros_like(v)
    return dev / scale


def flag_rows(
    change: torch.Tensor, *, z_threshold: float = 3.5, max_rows: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Suspicious classifier rows: robust z > ``z_threshold`` and above the median, the ``max_rows`` largest.

    Args:
        change: ``c_i = Σ |ΔW[i]|`` per row.
        z_threshold: robust z-score threshold.
        max_rows: keep at most this many flagged rows (the largest changes).

    Returns:
        ``(indices sorted by decreasing change, z-scores of all rows)``.

    Example:
        >>> c = torch.tensor([1.0, 1.1, 0.9, 9.0, 1.0, 7.0, 1.05, 8.0])
        >>> flag_rows(c)[0].tolist()
        [3, 7]
    """
    c = change.detach().double().reshape(-1)
    z = robust_z(c)
    ok = (z > z_threshold) & (c > torch.quantile(c, 0.5))
    cand = torch.nonzero(ok).flatten()
    order = torch.argsort(c[cand], descending=True, stable=True)
    return cand[order][:max_rows], z


@register_defense
class ULRL(Defense):
    """Unlearning → robust-z flagging of classifier rows → re-initialise and relearn with a cosine penalty.

    Args:
        unlearn_lr: unlearning SGD learning rate (×0.1 at epochs 10 and 20).
        unlearn_epochs: at most this many unlearning epochs.
        stop_acc: stop unlearning after the first epoch with running accuracy ≤ this.
        clip: gradient-norm clip during unlearning.
        z_threshold: robust z-score threshold of the flagging.
        max_rows: keep at most this many flagged rows (the largest).
        relearn_lr: relearning SGD learning rate (cosine schedule).
        relearn_epochs: relearning epochs.
        alpha: weight of the cosine-similarity penalty.
        momentum, weight_decay, batch_size: SGD settings of both stages.
        seed: seeds batch order and the re-initialisation.
        device: run on this device (``None``: where the model is).
        progress: tqdm bars.
    """

    name = "ulrl"
    needs = "clean"
    default_clean_ratio: ClassVar[float] = 0.01

    def __init__(
        self,
        *,
        unlearn_lr: float = 0.01,
        unlearn_epochs: int = 20,
        stop_acc: float = 0.20,
        clip: float = 20.0,
        z_threshold: float = 3.5,
        max_rows: int = 2,
        relearn_lr: float = 0.005,
        relearn_epochs: int = 20,
        alpha: float = 0.7,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        batch_size: int = 128,
        seed: int = 0,
        device: str | None = None,
        progress: bool = True,
    ) -> None:
        self.unlearn_lr = check_range("unlearn_lr", float(unlearn_lr), 0.0, 10.0, low_open=True)
        self.unlearn_epochs = int(check_range("unlearn_epochs", int(unlearn_epochs), 1, 10_000))
        self.stop_acc = check_range("stop_acc", float(stop_acc), 0.0, 1.0)
        self.clip = check_range("clip", float(clip), 0.0, math.inf, low_open=True)
        self.z_threshold = check_range("z_threshold", float(z_threshold), 0.0, math.inf)
        self.max_rows = int(check_range("max_rows", int(max_rows), 1, 1_000_000))
        self.relearn_lr = check_range("relearn_lr", float(relearn_lr), 0.0, 10.0, low_open=True)
        self.relearn_epochs = int(check_range("relearn_epochs", int(relearn_epochs), 0, 10_000))
        self.alpha = check_range("alpha", float(alpha), 0.0, math.inf)
        self._set_sgd_options(momentum, weight_decay, batch_size)
        self._set_run_options(seed=seed, device=device, progress=progress)

    def unlearn(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[nn.Module, dict[str, Any]]:
        """Gradient-ascent unlearning of a copy of ``model`` (clipped, step schedule, accuracy stop)."""
        work = copy.deepcopy(model)
        was_training = work.training
        device = model_device(work)
        opt = torch.optim.SGD(work.parameters(), lr=self.unlearn_lr, momentum=self.momentum,
                              weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[10, 20], gamma=0.1)
        gen = torch.Generator().manual_seed(self.seed)
        acc, epochs = 1.0, 0
        work.train()
        bar = tqdm(range(self.unlearn_epochs), desc="ULRL unlearning", leave=False, disable=not self.progress)
        try:
            for _ in bar:
                correct = seen = 0
                for xb, yb in iterate_batches(x, y, self.batch_size, shuffle=True, generator=gen):
                    xb, yb = xb.to(device), yb.to(device)
                    logits = work(xb)
                    loss = -F.cross_entropy(logits, yb)
                    if not torch.isfinite(loss):
                        raise OtbrError("ULRL unlearning diverged; lower unlearn_lr")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    nn.utils.clip_grad_norm_(work.parameters(), self.clip)
                    opt.step()
                    correct += int((logits.detach().argmax(1) == yb).sum())
                    seen += len(yb)
                sched.step()
                epochs += 1
                acc = correct / max(seen, 1)
                bar.set_postfix(acc=f"{acc:.3f}")
                if acc <= self.stop_acc:
                    break
        finally:
            bar.close()
            work.train(was_training)
        return work, {"unlearn_epochs": epochs, "unlearn_acc": acc, "unlearn_reached_stop": acc <= self.stop_acc}

    def run(self, model: nn.Module, data: Any | None = None) -> DefenseResult:
        """Defend ``model`` with the clean subset ``data`` (dataset, ``(x, y)`` or batches)."""
        start = time.perf_counter()
        x, y = self._clean_data(model, data)
        work = self._work_copy(model)
        try:
            clf_name, clf = classifier_layer(unwrap(work))
        except ValueError as exc:
            raise OtbrError("ULRL needs a Linear classifier layer") from exc

        t0 = time.perf_counter()
        unlearned, info = self.unlearn(work, x, y)
        t1 = time.perf_counter()
        w_after = dict(unwrap(unlearned).named_modules())[clf_name].weight.detach()
        change = (w_after - clf.weight.detach()).abs().flatten(1).sum(1).cpu()
        rows, z = flag_rows(change, z_threshold=self.z_threshold, max_rows=self.max_rows)
        del unlearned
        notes: list[str] = []
        if not info["unlearn_reached_stop"]:
            notes.append(f"unlearning stopped at the epoch cap with accuracy {info['unlearn_acc']:.3f}")

        w_orig = clf.weight.detach().clone()
        extra = None
        if len(rows):
            idx = rows.to(clf.weight.device)
            fan_in = clf.weight.shape[1]
            s = math.sqrt(2.0 / fan_in)
            gen = torch.Generator().manual_seed(self.seed + 1)
            fresh = (torch.rand(len(rows), fan_in, generator=gen, dtype=torch.float64) * 2 - 1) * s
            with torch.no_grad():
                clf.weight[idx] = fresh.to(clf.weight.device, clf.weight.dtype)
                if clf.bias is not None:
                    clf.bias[idx] = 0
            target = w_orig[idx]

            def extra(_: nn.Module) -> torch.Tensor:
                return self.alpha * F.cosine_similarity(clf.weight[idx], target, dim=1).sum()
        else:
            notes.append("no classifier row flagged: ULRL degenerated to plain fine-tuning")
        t2 = time.perf_counter()
        rep = finetune(work, (x, y), epochs=self.relearn_epochs, lr=self.relearn_lr, momentum=self.momentum,
                       weight_decay=self.weight_decay, batch_size=self.batch_size, extra_loss=extra, seed=self.seed,
                       inplace=True, desc="ULRL relearning", progress=self.progress)
        work.train(model.training)
        t3 = time.perf_counter()
        info.update({
            "classifier": clf_name,
            "flagged_rows": rows.tolist(),
            "row_change": change.tolist(),
            "row_z": z.tolist(),
            "relearn_acc": rep.acc[-1] if rep.acc else None,
            "notes": notes,
        })
        timings = {"unlearn": t1 - t0, "flag": t2 - t1, "relearn": t3 - t2, "total": time.perf_counter() - start}
        return DefenseResult(model=work, method=self.name, config=self.config(), timings=timings,
                             scores={clf_name: change}, info=info, data_used=f"clean subset: {len(y)} images")
