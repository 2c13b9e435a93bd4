"""TSBD (Lin et al., NeurIPS 2024): clean unlearning → NWC zero-reinitialisation → activeness-aware fine-tuning.

Data-dependent: needs a small clean subset (default 5 % of the training set; the
command line samples it, :attr:`TSBD.clean_ratio` only records the intent).

Stage 1 — zero reinitialisation:

1. clean unlearning of a copy (:func:`otbr.nwc.unlearn`, ``mode="clean"``): SGD
   lr 1e-4, momentum 0.9, gradient ascent, epoch after epoch until the running
   accuracy on the subset is ≤ ``stop_acc`` (10 %), at most ``unlearn_max_epochs``
   (a warning and an ``info["notes"]`` entry when the cap is hit);
2. NWC of every considered neuron (Conv2d outside residual shortcuts; hidden
   ``Linear`` layers with ``include_linear``; never the classifier);
3. the top ``neuron_ratio`` neurons by the global NWC ranking (``int(n · N)``);
4. among **all** weights of those neurons, the top ``weight_ratio`` fraction by
   ``|ΔW|`` (one global threshold, exactly ``int(m · S)`` of the ``S`` selected
   sub-weights; ties broken by position) are set to zero in a copy of the
   **original** model (not the unlearned one). Biases are left alone: the paper
   reinitialises sub-weights, and ``|ΔW|`` is defined on the weights.

``neuron_ratio`` defaults to ``"auto"``: every n of ``neuron_grid`` (the
paper's plateau, 5–20 %) gets its stage-1 model and ``auto_ft_epochs`` of the
configured fine-tuning; the candidate with the highest estimated DER wins
(:mod:`otbr.selection`: the backdoor term from a trigger reverse-engineered on the
clean subset toward the suspected target, the clean term from accuracy on the
clean subset) and is then fine-tuned from its stage-1 model for ``ft_epochs``. The
suspect is the class a small patch reaches most easily from the clean subset,
unless the original misses most of one class's clean images (the default
``suspect_rule="recall"``: the mark of a clean-label backdoor such as SIG). No
poisoned data and no trigger knowledge enter the choice; the report lists every
candidate. A number fixes n (0.1 is the middle of the paper's plateau).

Stage 2 — fine-tuning on the same subset (:func:`otbr.activeness.finetune`):
``"activeness"`` (the paper: g = (1 − α)·∇L(θ) + α·∇L(θ + r·g1/‖g1‖), per-tensor
normalisation, in-place perturbation restored bit-exactly), ``"vanilla"`` (plain
SGD), or ``"none"`` (stage 1 only) — the paper's ablation. SGD lr 0.01, momentum
0.9, weight decay 5e-4, cosine schedule per batch, random crop with 2 px padding
(the zoo's training augmentation).

:meth:`TSBD.sweep` makes one unlearning run and yields the defended model for
every neuron ratio (the published code's sweep; an ORACLE when scored on poisoned data).

Example:
    >>> import torch
    >>> from otbr.models import create_model, Normalized
    >>> net = Normalized(create_model("tinycnn", num_classes=4, in_channels=1), (0.5,), (0.25,))
    >>> x, y = torch.rand(64, 1, 8, 8), torch.arange(64) % 4
    >>> res = TSBD(neuron_ratio=0.25, unlearn_max_epochs=2, ft_epochs=1, batch_size=32, progress=False).run(net, (x, y))
    >>> res.info["selected_neurons"], res.data_used
    (6, 'clean subset: 64 images')
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from otbr.activeness import FinetuneReport
from otbr.activeness import finetune as finetune_loop
from otbr.defenses.base import (
    Defense,
    DefenseResult,
    check_auto_fraction,
    check_choice,
    check_range,
    register_defense,
)
from otbr.errors import OtbrError
from otbr.layers import scored_layers
from otbr.models.normalize import unwrap
from otbr.models.registry import output_classes
from otbr.nwc import NWCScores, neuron_weight_change, unlearn
from otbr.pixels import as_float
from otbr.pruning import global_topk, mask_count, mask_indices, num_selected
from otbr.selection import SUSPECT_RULES, choose_for, require_batchnorm
from otbr.synthesis import synthesize

log = logging.getLogger(__name__)

#: How ``neuron_ratio="auto"`` names its suspected target (:data:`otbr.selection.SUSPECT_RULES`): ``"recall"`` since
#: 2026-11-24 (evening), by the two-stage rule written before its first run (``benchmarks/recall_suspect_explore.py``,
#: commit 35aecff). Stage 1: over the 74 stored TSBD rows it turned 6 wrong suspects (all SIG) into the target and no
#: right one wrong (``benchmarks/results/recall-suspect-explore-fmnist.md``). Stage 2: re-run on those 6, the mean DER
#: gap over the 74 went 1.04 → 0.88 and the worst 20.37 → 4.85 (SIG-t1: 20.37 → 0; but SIG-t8 0 → 3.85 and SIG-t3
#: 0 → 4.85, where the wrong suspect had happened to choose the oracle's n; ``auto-tsbd-recall-fmnist.md``).
#: ``"scan"`` was the rule before, and of every stored row the override leaves unchanged.
SUSPECT_RULE = "recall"

FINETUNE_MODES = ("activeness", "vanilla", "none")
NEURON_GRID = (0.05, 0.1, 0.15, 0.2)


@torch.no_grad()
def subweight_changes(before: nn.Module, after: nn.Module, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """``|W_after − W_before|`` per weight (float64, on the weights' device) of each named layer.

    Example:
        >>> from otbr.models import create_model
        >>> a = create_model("tinycnn"); b = copy.deepcopy(a)
        >>> subweight_changes(a, b, ["conv1"])["conv1"].shape
        torch.Size([8, 1, 3, 3])
    """
    mods_b, mods_a = dict(unwrap(before).named_modules()), dict(unwrap(after).named_modules())
    out: dict[str, torch.Tensor] = {}
    for name in layers:
        wb, wa = mods_b[name].weight.detach(), mods_a[name].weight.detach()
        out[name] = (wa.to(torch.float64) - wb.to(wa.device, torch.float64)).abs()
    return out


def zero_masks(
    changes: dict[str, torch.Tensor], neuron_masks: dict[str, torch.Tensor], weight_ratio: float
) -> tuple[dict[str, torch.Tensor], int, int]:
    """Masks of the sub-weights to zero: the top ``weight_ratio`` of the selected neurons' weights by change.

    All weights of the selected neurons (rows of ``changes`` where ``neuron_masks`` is True) are
    ranked together; exactly ``k = int(weight_ratio · S)`` of them (``S`` = their number) are
    marked, largest change first, ties broken by position (layer order, then row-major index).
    One gather, one stable sort and one scatter — no loop over neurons.

    Args:
        changes: ``{layer: |ΔW| tensor of the weight's shape}``.
        neuron_masks: ``{layer: bool tensor over output neurons}`` (layers absent are not selected).
        weight_ratio: fraction ``m`` in [0, 1].

    Returns:
        ``({layer: bool mask of the weight's shape}, k, S)``.

    Example:
        >>> ch = {"a": torch.tensor([[1.0, 5.0], [3.0, 2.0]])}
        >>> masks, k, s = zero_masks(ch, {"a": torch.tensor([True, True])}, 0.5)
        >>> masks["a"].tolist(), k, s
        ([[False, True], [True, False]], 2, 4)
    """
    check_range("weight_ratio", float(weight_ratio), 0.0, 1.0)
    names = list(changes)
    rows = {n: neuron_masks.get(n, torch.zeros(changes[n].shape[0], dtype=torch.bool)).to(changes[n].device)
            for n in names}
    # element-level selection masks, flattened per layer in row-major order
    sel = [rows[n].reshape(-1, *([1] * (changes[n].ndim - 1))).expand_as(changes[n]).reshape(-1) for n in names]
    vals = [changes[n].reshape(-1)[s].to("cpu") for n, s in zip(names, sel, strict=True)]
    total = sum(int(v.numel()) for v in vals)
    k = num_selected(weight_ratio, total)
    flat = torch.zeros(total, dtype=torch.bool)
    if k > 0:
        order = torch.sort(torch.cat(vals), descending=True, stable=True).indices
        flat[order[:k]] = True
    out: dict[str, torch.Tensor] = {}
    for n, s, chosen in zip(names, sel, torch.split(flat, [int(v.numel()) for v in vals]), strict=True):
        m = torch.zeros(changes[n].numel(), dtype=torch.bool, device=changes[n].device)
        m[s] = chosen.to(m.device)
        out[n] = m.reshape(changes[n].shape)
    return out, k, total


@register_defense
class TSBD(Defense):
    """Two-stage backdoor defense with a small clean subset.

    Args:
        clean_ratio: share of the training set the clean subset is meant to be (recorded only: the caller
            samples the subset; the command line sets it to ``None`` when the subset is given by count).
        neuron_ratio: fraction n of considered neurons selected by NWC (global ranking), in [0, 1], or
            ``"auto"``: chosen from ``neuron_grid`` with the clean subset and synthetic inputs only.
        neuron_grid: candidate n values for ``neuron_ratio="auto"``.
        auto_ft_epochs: fine-tuning epochs given to each candidate before the automatic choice.
        synthetic: number of BatchNorm-inverted inputs used by the automatic choice.
        suspect_rule: how the automatic choice names the suspected target (:data:`otbr.selection.SUSPECT_RULES`):
            ``"recall"`` (default, :data:`SUSPECT_RULE`: the scan's class unless the original misses one class's
            clean images, :func:`otbr.scans.recall_override`) or ``"scan"`` (a small patch from the clean
            subset, :func:`otbr.scans.target_scan`; the rule before); ``"stratified"`` and ``"warp"`` run their
            scans on the subset.
        weight_ratio: fraction m of the selected neurons' weights zeroed (largest ``|ΔW|``), in [0, 1].
        unlearn_lr: clean-unlearning learning rate (SGD, momentum 0.9).
        unlearn_max_epochs: epoch cap of clean unlearning.
        stop_acc: unlearning stops after the first epoch with subset accuracy ≤ this.
        r: activeness perturbation radius (per parameter tensor).
        alpha: weight of the gradient at the perturbed point.
        ft_epochs: fine-tuning epochs.
        ft_lr: fine-tuning learning rate (SGD, momentum 0.9, cosine schedule).
        weight_decay: fine-tuning weight decay.
        batch_size: batch size of unlearning and fine-tuning.
        finetune: ``"activeness"`` (the paper), ``"vanilla"`` (plain SGD) or ``"none"`` (stage 1 only).
        augment: random-crop (2 px) augmentation during fine-tuning.
        include_linear: also score hidden ``Linear`` layers (never the classifier).
        seed: seeds shuffling and augmentation (private generators).
        device: run on this device (the model is copied there); ``None``: where the model is.
        progress: tqdm bars for both stages.

    Example:
        >>> TSBD(finetune="vanilla").config()["finetune"]
        'vanilla'
    """

    name = "tsbd"
    needs = "clean"

    def __init__(
        self,
        *,
        clean_ratio: float = 0.05,
        neuron_ratio: float | str = "auto",
        neuron_grid: Sequence[float] = NEURON_GRID,
        auto_ft_epochs: int = 1,
        synthetic: int = 256,
        suspect_rule: str = SUSPECT_RULE,
        weight_ratio: float = 0.7,
        unlearn_lr: float = 1e-4,
        unlearn_max_epochs: int = 100,
        stop_acc: float = 0.10,
        r: float = 0.05,
        alpha: float = 0.7,
        ft_epochs: int = 20,
        ft_lr: float = 0.01,
        weight_decay: float = 5e-4,
        batch_size: int = 128,
        finetune: str = "activeness",
        augment: bool = True,
        include_linear: bool = False,
        seed: int = 0,
        device: str | None = None,
        progress: bool = True,
    ) -> None:
        self.clean_ratio = check_range("clean_ratio", float(clean_ratio), 0.0, 1.0, low_open=True)
        self.neuron_ratio, self.neuron_grid = check_auto_fraction("neuron_ratio", neuron_ratio, neuron_grid)
        if int(auto_ft_epochs) < 0 or int(synthetic) < 2:
            raise OtbrError(f"auto_ft_epochs must be ≥ 0 and synthetic ≥ 2, got {auto_ft_epochs}, {synthetic}")
        self.auto_ft_epochs, self.synthetic = int(auto_ft_epochs), int(synthetic)
        self.suspect_rule = check_choice("suspect_rule", suspect_rule, SUSPECT_RULES)
        self.weight_ratio = check_range("weight_ratio", float(weight_ratio), 0.0, 1.0)
        self.unlearn_lr = check_range("unlearn_lr", float(unlearn_lr), 0.0, 10.0, low_open=True)
        if int(unlearn_max_epochs) < 1:
            raise OtbrError(f"unlearn_max_epochs must be ≥ 1, got {unlearn_max_epochs}")
        self.unlearn_max_epochs = int(unlearn_max_epochs)
        self.stop_acc = check_range("stop_acc", float(stop_acc), 0.0, 1.0)
        self.r = check_range("r", float(r), 0.0, 1e3)
        self.alpha = check_range("alpha", float(alpha), 0.0, 1.0)
        if int(ft_epochs) < 1:
            raise OtbrError(f"ft_epochs must be ≥ 1, got {ft_epochs}")
        self.ft_epochs = int(ft_epochs)
        self.ft_lr = check_range("ft_lr", float(ft_lr), 0.0, 10.0, low_open=True)
        self.weight_decay = check_range("weight_decay", float(weight_decay), 0.0, 1.0)
        if int(batch_size) < 1:
            raise OtbrError(f"batch_size must be ≥ 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.finetune = check_choice("finetune", finetune, FINETUNE_MODES)
        self.augment = bool(augment)
        self.include_linear = bool(include_linear)
        self._set_run_options(seed=seed, device=device, progress=progress)

    def config(self) -> dict[str, Any]:
        """The hyperparameters (public attributes); ``suspect_rule`` only when ``neuron_ratio="auto"`` and it is not
        ``"scan"``, the rule of every run made before the option, so their stored comparison cells keep their keys.

        Example:
            >>> TSBD().config()["suspect_rule"], "suspect_rule" in TSBD(suspect_rule="scan").config()
            ('recall', False)
        """
        out = super().config()
        if out["suspect_rule"] == "scan" or self.neuron_ratio != "auto":
            del out["suspect_rule"]
        return out

    # -- pieces ---------------------------------------------------------------------------------------
    def _data(self, model: nn.Module, data: Any) -> tuple[torch.Tensor, torch.Tensor, str]:
        """Float images in [0, 1], labels and a description of the clean subset (read and checked against ``model``
        by :meth:`Defense._clean_data`, as every data-dependent defense reads it)."""
        x, y = self._clean_data(model, data)
        name = getattr(data, "name", None)
        desc = f"clean subset: {len(y)} images" + (f" of {name}" if name and name != "dataset" else "")
        return as_float(x), y, desc

    def _stage1_scores(self, ref: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[NWCScores, dict[str, Any]]:
        """Clean unlearning of a copy of ``ref``; NWC scores and per-sub-weight changes."""
        t0 = time.perf_counter()
        res = unlearn(ref, "clean", loader=(x, y), lr=self.unlearn_lr, momentum=0.9, batch_size=self.batch_size,
                      max_epochs=self.unlearn_max_epochs, stop_acc=self.stop_acc, seed=self.seed,
                      progress=self.progress)
        t1 = time.perf_counter()
        layers = scored_layers(ref, include_linear=self.include_linear, method="TSBD")
        scores = NWCScores(neuron_weight_change(ref, res.model, layers), "clean", None)
        changes = subweight_changes(ref, res.model, layers)
        t2 = time.perf_counter()
        notes: list[str] = []
        if res.hit_cap:
            notes.append(f"clean unlearning hit the cap of {res.epochs} epochs with subset accuracy "
                         f"{res.accuracy:.3f} > {self.stop_acc}: NWC scores may be less informative")
        info = {"unlearn_epochs": res.epochs, "unlearn_steps": res.steps, "unlearn_accuracy": res.accuracy,
                "hit_cap": res.hit_cap, "notes": notes, "_changes": changes,
                "_timings": {"unlearn": t1 - t0, "score": t2 - t1}}
        return scores, info

    @torch.no_grad()
    def _reinit(self, model: nn.Module, scores: NWCScores, changes: dict[str, torch.Tensor],
                neuron_ratio: float) -> dict[str, Any]:
        """Zero the chosen sub-weights of ``model`` in place; returns the facts of the selection."""
        neuron_masks = global_topk(scores, neuron_ratio)
        masks, k, total = zero_masks(changes, neuron_masks, self.weight_ratio)
        modules = dict(unwrap(model).named_modules())
        for name, m in masks.items():
            if bool(m.any()):
                w = modules[name].weight
                w.masked_fill_(m.to(w.device), 0.0)
        return {"neuron_ratio": neuron_ratio, "weight_ratio": self.weight_ratio,
                "selected_neurons": mask_count(neuron_masks), "num_neurons": scores.total,
                "selected_subweights": total, "zeroed_subweights": k,
                "zeroed_per_layer": {n: int(m.sum()) for n, m in masks.items() if bool(m.any())},
                "pruned": mask_indices(neuron_masks)}

    def _finetune(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  epochs: int | None = None) -> FinetuneReport | None:
        if self.finetune == "none" or epochs == 0:
            return None
        return finetune_loop(model, x, y, mode=self.finetune, epochs=epochs or self.ft_epochs, lr=self.ft_lr,
                             momentum=0.9, weight_decay=self.weight_decay, batch_size=self.batch_size, r=self.r,
                             alpha=self.alpha, augment=self.augment, seed=self.seed,
                             progress=self.progress and epochs is None, desc=f"{self.finetune} fine-tuning")

    def _select(self, original: nn.Module, scores: NWCScores, changes: dict[str, torch.Tensor],
                x: torch.Tensor, y: torch.Tensor, keep: bool = False) -> dict[str, Any]:
        """Choose n from ``neuron_grid``: stage 1 + ``auto_ft_epochs`` of fine-tuning per candidate, then
        :func:`otbr.selection.choose_for` (synthetic inputs for the backdoor term, clean-subset accuracy for
        the clean term). Only the model and the clean subset are read. ``keep`` adds the candidate models
        under ``"_candidates"`` (for benchmarks)."""
        from otbr.metrics import accuracy

        shape = tuple(x.shape[1:])
        num_classes = max(int(y.max()) + 1, output_classes(original, shape))
        syn = synthesize(original, self.synthetic, shape, num_classes=num_classes, steps=100, seed=self.seed,
                         progress=self.progress)
        base_acc = accuracy(original, x, y)
        cands: dict[float, nn.Module] = {}
        clean_drop: dict[float, float] = {}
        for n in self.neuron_grid:
            cand = copy.deepcopy(original)
            self._reinit(cand, scores, changes, n)
            self._finetune(cand, x, y, epochs=self.auto_ft_epochs)
            cands[n] = cand
            clean_drop[n] = base_acc - accuracy(cand, x, y)
            log.info("TSBD auto: n = %g, clean-subset accuracy %.4f", n, base_acc - clean_drop[n])
        choice = choose_for(original, cands, syn.x, num_classes, clean_drop=clean_drop, probe_images=x,
                            probe_ladder=True, suspect_rule=self.suspect_rule, labels=y)
        out = choice.as_dict()
        out.update({"synthetic": syn.info, "auto_ft_epochs": self.auto_ft_epochs,
                    "clean_term": "accuracy drop on the clean subset after the candidate's short fine-tuning"})
        if keep:
            out["_candidates"] = cands
        return out

    def _result(self, model: nn.Module, scores: NWCScores, s1: dict[str, Any], sel: dict[str, Any],
                ft: FinetuneReport | None, timings: dict[str, float], desc: str) -> DefenseResult:
        notes = list(s1["notes"])
        if sel["selected_neurons"] == 0:
            notes.append("no neuron selected (neuron_ratio·N < 1): stage 1 left the model unchanged")
        if ft is None:
            notes.append("stage 1 only: zero-reinitialised model, no fine-tuning" if self.finetune == "none"
                         else "fine-tuning skipped for this ratio (sweep): stage-1 model")
        info = {k: v for k, v in s1.items() if not k.startswith("_") and k != "notes"}
        info.update(sel)
        info["finetune"] = self.finetune if ft is not None else "none"
        info["notes"] = notes
        if ft is not None:
            info["finetune_loss"] = ft.loss
            info["finetune_acc"] = ft.acc
            info["finetune_epoch_s"] = ft.epoch_seconds
            timings["finetune_epoch_mean"] = sum(ft.epoch_seconds) / len(ft.epoch_seconds)
        return DefenseResult(model=model, method=self.name, config=self.config(), timings=timings,
                             scores=scores.layers, info=info, data_used=desc)

    # -- public ---------------------------------------------------------------------------------------
    def run(self, model: nn.Module, data: Any | None = None) -> DefenseResult:
        """Defend ``model`` (images in [0, 1]) with the clean subset ``data`` (ImageDataset or ``(x, y)``).

        Returns:
            A :class:`DefenseResult`; ``timings`` has ``unlearn``, ``score``, ``reinit``, ``finetune``,
            ``total`` (and ``finetune_epoch_mean``); ``info`` has the unlearning epochs, ``hit_cap``,
            ``selected_neurons``, ``zeroed_subweights``, per-epoch fine-tuning seconds and notes.
        """
        start = time.perf_counter()
        x, y, desc = self._data(model, data)
        work = self._work_copy(model)
        if self.neuron_ratio == "auto":
            require_batchnorm(work, "neuron_ratio", "0.1")
        scores, s1 = self._stage1_scores(work, x, y)
        t_sel = time.perf_counter()
        auto = None
        if self.neuron_ratio == "auto":
            auto = self._select(work, scores, s1["_changes"], x, y)
            ratio = float(auto["chosen"])
        else:
            ratio = float(self.neuron_ratio)
        t0 = time.perf_counter()
        sel = self._reinit(work, scores, s1["_changes"], ratio)
        t1 = time.perf_counter()
        ft = self._finetune(work, x, y)
        t2 = time.perf_counter()
        timings = {**s1["_timings"], "select": t0 - t_sel, "reinit": t1 - t0, "finetune": t2 - t1,
                   "total": time.perf_counter() - start}
        result = self._result(work, scores, s1, sel, ft, timings, desc)
        if auto is not None:
            result.info["auto"] = auto
            result.info["notes"].append(f"n = {ratio:g} chosen automatically from {self.neuron_grid} with the "
                                        "clean subset and synthetic inputs only (see info.auto)")
        return result

    def scores(self, model: nn.Module, data: Any) -> NWCScores:
        """Clean-unlearning NWC of every considered neuron (stage 1, steps 1–2 only)."""
        x, y, _ = self._data(model, data)
        ref = self._work_copy(model) if self.device is not None else model
        return self._stage1_scores(ref, x, y)[0]

    def sweep(self, model: nn.Module, data: Any, neuron_ratios: Sequence[float], *,
              finetune_ratios: Sequence[float] | None = None) -> Iterator[tuple[float, nn.Module, DefenseResult]]:
        """One clean-unlearning run, then ``(n, stage-1 model, result)`` for every neuron ratio ``n``.

        The stage-1 model is the zero-reinitialised copy before fine-tuning (the ``"none"`` ablation);
        ``result.model`` is fine-tuned as configured (the same object when ``finetune="none"``, or when
        ``finetune_ratios`` is given and does not contain ``n`` — fine-tuning is the expensive part).
        Scoring these on a poisoned test set is an ORACLE (:data:`otbr.report.ORACLE_NOTE`).

        Example:
            >>> for n, reinit, res in TSBD(ft_epochs=5).sweep(net, subset, [0.05, 0.1]):  # doctest: +SKIP
            ...     print(n, evaluate(res.model, ...))
        """
        ratios = [check_range("neuron_ratio", float(n), 0.0, 1.0) for n in neuron_ratios]
        start = time.perf_counter()
        x, y, desc = self._data(model, data)
        ref = self._work_copy(model) if self.device is not None else model
        scores, s1 = self._stage1_scores(ref, x, y)
        shared = time.perf_counter() - start
        for n in ratios:
            t0 = time.perf_counter()
            work = copy.deepcopy(ref)
            sel = self._reinit(work, scores, s1["_changes"], n)
            t1 = time.perf_counter()
            tune = self.finetune != "none" and (finetune_ratios is None or any(abs(n - float(f)) < 1e-12
                                                                                for f in finetune_ratios))
            reinit = copy.deepcopy(work) if tune else work
            ft = self._finetune(work, x, y) if tune else None
            t2 = time.perf_counter()
            timings = {**s1["_timings"], "reinit": t1 - t0, "finetune": t2 - t1, "total": shared + (t2 - t0)}
            yield n, reinit, self._result(work, scores, s1, sel, ft, timings, desc)
