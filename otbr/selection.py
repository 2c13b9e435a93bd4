"""Choosing a defense's strength (OTBR's γ, TSBD's n) without poisoned data.

The published scripts sweep their key ratio and keep the one that scores best
on the poisoned test set — an oracle no defender has. This module replaces the
oracle with an *estimated* defense-effectiveness rating (DER) computed from
what the defender does have:

- **Synthetic inputs** inverted from the backdoored model's BatchNorm statistics
  (:func:`otbr.synthesis.synthesize`), one group per class. For the attacker's
  target class the inversion leans on the backdoor's shortcut features (a
  BadNets model inverts "class 0" largely through its patch), so when the
  backdoor neurons are pruned the candidate stops recognising *those* images
  first. The class whose inversions lose the candidate's agreement most (on
  average over the candidates) is the **suspected target**; the fraction of its
  inversions the candidate no longer assigns to it estimates the ASR drop.
- **Clean behaviour**: agreement with the original model on the inversions of
  the other classes (data-free, OTBR) or accuracy on the clean subset (TSBD).

``estimated DER(c) = (1 + backdoor_drop(c) − clean_drop(c)) / 2`` — the DER
formula with both terms replaced by their estimates — is maximised over the
candidate grid; ties go to the weaker (smaller) setting. Every candidate's
numbers go into the run's report so the user sees why one was chosen.

Calibration of the data-free clean term. Inversions are prototypes, harder to
keep than real images are: on the 55 OTBR candidates of the 11 development
models (``benchmarks/zoo`` and ``benchmarks/zoo2``) the loss of agreement on them
ran ahead of the real loss of clean accuracy (least-squares slope through the
origin 0.70, median ratio 0.66). The data-free clean term is therefore the
disagreement times :data:`SYNTHETIC_CLEAN_SCALE` = 0.7. The constant was fitted
on clean test accuracy only — no poisoned image and no trigger — and is
reported in every choice; a measured clean-subset accuracy drop (TSBD) is used
as is.

The backdoor term with a probe is the *relative* fall of the probe's success rate (:func:`probe_drops`).
Until the third zoo's results it was the absolute fall; that capped the term at the probe's rate on the
original, and on the held-out WaNet model (probe rate 0.25) the clean term alone decided (DER gap 21.4). The
change was made after seeing that result, so the third zoo no longer tests it; the fourth zoo
(``benchmarks/zoo.py --zoo fourth``), trained before the change was run on it, does: mean DER gap to the oracle
6.69 there, 8.53 with the absolute fall (``benchmarks/results/auto-otbr-fmnist.md``). On the 11 development
models the change moves no choice.

A collapsed candidate (clean accuracy near chance) follows no trigger, so its probe reports a large backdoor drop
that is no evidence, and the scaled clean term does not always outweigh it. The collapse guard
(:data:`COLLAPSE_LIMIT`, :func:`within_collapse_limit`) leaves out of OTBR's choice every candidate whose
disagreement on the other classes' inversions is above 0.70 (unless all are); OTBR's default since the ninth zoo.

The trigger scans that name the suspected target and the reverse-engineered probe live in :mod:`otbr.scans`;
this module combines them into the suspect rules and the choice.

Nothing here accepts a dataset argument of poisoned images or a trigger: the
inputs are the models, the synthetic set and (optionally) the clean subset.

Example:
    >>> import torch
    >>> syn_y = torch.tensor([0, 0, 1, 1])
    >>> ref = torch.tensor([0, 0, 1, 1])
    >>> cands = {0.1: torch.tensor([0, 0, 1, 1]), 0.2: torch.tensor([1, 1, 1, 1])}
    >>> choice = choose(cands, ref, num_classes=2)
    >>> choice.value, choice.suspect
    (0.2, 0)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from otbr.scans import recall_override, reverse_trigger, stratified_suspects, target_scan, trigger_rate, warp_override

log = logging.getLogger(__name__)

#: Factor from the loss of agreement on inverted inputs to the estimated loss of clean accuracy (see the module
#: docstring: fitted on the clean accuracy of the development zoos, no poisoned data).
SYNTHETIC_CLEAN_SCALE = 0.7

#: How far that estimate was from the real relative loss of clean accuracy, in points: median and 90th percentile of
#: the absolute error over the 390 candidates of the 78 zoo models (eighteen zoos), under the shipped suspect rule
#: (ORACLE measurement on their clean test sets; the scale above was fitted on 11 of them).
#: ``python benchmarks/shipped_split.py``, ``benchmarks/results/auto-otbr-shipped-split-fmnist.md``; ``otbr defend
#: otbr`` quotes it beside its estimate.
CLEAN_ESTIMATE_ERROR = {"median": 5.2, "p90": 16.8}

#: OTBR's lean toward pruning (estimated-DER units, fractions): among the candidates whose estimated DER is within
#: this of the best, the largest γ is taken. Under-pruning leaves the backdoor (ASR 50–66 % at the zoo's near-ties)
#: and costs far more DER than a grid step of extra pruning; differences of a few points are within the
#: estimator's error. History: 0.035 was fitted on the development zoos' oracle gaps (ORACLE for those 11 models)
#: with one synthetic set; 0.065 was pre-registered as the one alternative to it (commit 852a297, before the fifth
#: zoo was trained) and adopted because it met the rule written there: on the held-out fifth zoo, with the
#: three-set default, mean gap 10.54 → 9.72 and worst no higher (36.91); over all 23 models 4.91 → 3.87
#: (``benchmarks/results/auto-otbr-repeats3-fmnist.md``, re-scored from the stored estimates). The estimates
#: themselves differ from machine to machine (``benchmarks/results/auto-otbr-rerun-main-fmnist.md``), so the
#: value is not a precise optimum. On the sixth zoo, held out from that choice too, the shipped rule scored mean
#: gap 7.98, worst 27.75, against 11.09 / 25.66 without the lean (``benchmarks/results/auto-otbr-repeats3-sixth.md``).
OTBR_LEAN = 0.065

SIGNAL = ("estimated DER: 1 + (drop of the suspected target's agreement on BN-inverted synthetic inputs) − "
          "(drop of clean agreement on the other classes' inputs × SYNTHETIC_CLEAN_SCALE), halved; the suspected "
          "target is the class whose synthetic inputs lose the candidates' agreement most")


SIGNAL_PROBE = ("estimated DER: 1 + (relative drop in the success rate of a trigger reverse-engineered on the original "
                "model toward the suspected target: 1 − rate(candidate) / rate(original); sources in probe.sources) − "
                "(clean drop, see clean_term), halved; the suspected target is the class a small trigger reaches most "
                "easily on the original (target scan)")

#: Below this success rate on the original model the reverse-engineered trigger is taken as "nothing found": its
#: rates on the candidates say nothing about the backdoor, and the backdoor term falls back to the agreement on
#: the suspected class's synthetic inputs (see :func:`choose_for`).
PROBE_MIN_RATE = 0.1

PROBE_NOTHING = ("the probe found no trigger the original model follows (rate below PROBE_MIN_RATE), so its rates "
                 "cannot rank the candidates: the backdoor term is the drop of agreement on the suspected class's "
                 "synthetic inputs instead — a weaker signal; consider checking the result with a little clean data")

#: Below this success rate on the original, the probe toward the suspected class is flagged weak
#: (:func:`suspect_check`): the suspect may be a naturally easy class rather than the backdoor target. Read off
#: the 27 Fashion-MNIST zoo models' stored selections (``benchmarks/results/auto-otbr-repeats3-fmnist.json``, the
#: first set's probe at the averaged suspect): each of the 7 wrong suspects' probes reached 42–88 % of the
#: sources; 14 of the 20 right ones reached 93–100 % (the other six 0–85 %). A threshold fitted on those models
#: (ORACLE there) for a warning only: nothing in the choice reads it. On the seventh zoo, trained after it was
#: set, it flagged the one wrong suspect (probe 0.32) and one of the three right ones (0.81).
SUSPECT_WEAK_RATE = 0.9

#: How the data-free selection names its suspected target: ``"scan"`` (this module's default and TSBD's), the class one
#: small patch reaches most often from the pooled other-class synthetic inputs (:func:`~otbr.scans.target_scan`);
#: ``"stratified"`` (:func:`~otbr.scans.stratified_suspects`), the class a small patch reaches from the most source
#: classes; ``"warp"`` (OTBR's default, ``otbr.defenses.otbr.SUSPECT_RULE``), the stratified suspect unless one class
#: alone is reached by a small universal warp from nearly every source class (:func:`~otbr.scans.warp_override`);
#: ``"recall"`` (labelled clean images only, so TSBD's), the scan suspect unless the original misses one class's clean
#: images (:func:`~otbr.scans.recall_class`).
SUSPECT_RULES = ("scan", "stratified", "warp", "recall")
#: the rules that read nothing but the model (OTBR's choices)
DATA_FREE_SUSPECT_RULES = ("scan", "stratified", "warp")

#: The collapse guard (:func:`within_collapse_limit`): OTBR candidates whose synthetic clean disagreement (the
#: share of the other classes' BN-inverted inputs on which they no longer agree with the original) is above this
#: are left out of the choice, unless every candidate is (then the smallest setting). Pre-registered with the sixth
#: zoo as a re-scoring of stored estimates (``benchmarks/auto_bench.py``), and part of the pair the ninth zoo's rule
#: made OTBR's default (``otbr.defenses.otbr.SUSPECT_RULE``): a collapsed candidate (ACC near chance) can score a
#: high estimated DER when its backdoor term reads the wrong suspect, and no clean term then outweighs it.
COLLAPSE_LIMIT = 0.70

SUSPECT_WEAK = ("the trigger reverse-engineered toward the suspected class {suspect} reaches only {rate:.0%} of the "
                "synthetic sources on the original model (below {limit:.0%}); on the 31 Fashion-MNIST zoo models all 8 "
                "wrongly suspected classes were below that, and so were 7 of the 23 right ones: the suspect may be a "
                "naturally easy class rather than the backdoor target, and the chosen setting may leave the "
                "backdoor — check the result with a little clean data if you can")


#: The removal reading of OTBR's report (:func:`removal_evidence`): the chosen candidate's estimated backdoor drop
#: (the probe's relative fall toward the suspect) at or above which the backdoor reads as probably removed. One minus
#: the 10 % ASR that counts as "removed" in the benchmarks — not fitted. Over the 55 Fashion-MNIST zoo models of the
#: first thirteen zoos (``benchmarks/results/auto-otbr-shipped-split-fmnist.md``, removal section; ORACLE: it reads
#: their ASR) the backdoor stayed on 21 of the 24 choices below it and went on 21 of the 31 at or above it when the
#: line was set; under the shipped suspect rule since (the warp override), 20 of 22 and 22 of 33.
REMOVAL_DROP = 0.9
#: those counts, quoted by the report's notes: (removed, models) below and at or above :data:`REMOVAL_DROP`
REMOVAL_RECORD = {"below": (2, 22), "above": (22, 33)}


def removal_evidence(drop: float, suspect: int, limit: float = REMOVAL_DROP) -> dict[str, Any]:
    """What the chosen candidate's estimated backdoor drop (a fraction) says about whether the backdoor is gone: a
    report entry with the reading (``likely_removed``) and a note that quotes the zoo record behind it. A reading for
    the user, not part of the choice.

    Example:
        >>> removal_evidence(0.35, 4)["likely_removed"], removal_evidence(0.97, 4)["likely_removed"]
        (False, True)
    """
    removed, n = REMOVAL_RECORD["above" if drop >= limit else "below"]
    if drop >= limit:
        note = (f"the trigger reverse-engineered toward class {suspect} lost {drop:.0%} of its effect at the chosen "
                f"setting (≥ {limit:.0%}): the backdoor is probably gone if class {suspect} is its target — on the "
                f"Fashion-MNIST zoo models such choices removed it {removed} times in {n}; blended, low-frequency "
                "and SIG triggers, which a small patch does not imitate, kept theirs")
    else:
        note = (f"the trigger reverse-engineered toward class {suspect} lost only {max(drop, 0.0):.0%} of its effect "
                f"at the chosen setting (below {limit:.0%}): nothing says the backdoor is gone — on the Fashion-MNIST "
                f"zoo models it stayed after {n - removed} of {n} such choices. Treat the model as still backdoored "
                "unless a little clean data says otherwise")
    return {"estimated_drop": round(float(drop), 4), "limit": limit, "likely_removed": bool(drop >= limit),
            "note": note}


def suspect_check(rate_original: float, suspect: int) -> dict[str, Any]:
    """Whether the probe toward ``suspect`` is weak on the original (:data:`SUSPECT_WEAK_RATE`), with a note.

    Example:
        >>> suspect_check(0.75, 6)["weak"], suspect_check(1.0, 0)
        (True, {'probe_rate_original': 1.0, 'weak_below': 0.9, 'weak': False})
    """
    out: dict[str, Any] = {"probe_rate_original": rate_original, "weak_below": SUSPECT_WEAK_RATE,
                           "weak": rate_original < SUSPECT_WEAK_RATE}
    if out["weak"]:
        out["note"] = SUSPECT_WEAK.format(suspect=suspect, rate=rate_original, limit=SUSPECT_WEAK_RATE)
        log.warning("%s", out["note"])
    return out


def probe_drops(rate_original: float, rates: Mapping[float, float]) -> dict[float, float]:
    """Estimated backdoor (ASR) drop per candidate: ``1 − rate / rate_original`` of the probe trigger.

    The probe is a stand-in for the unknown trigger, so only its *relative* fall carries over to the real
    attack success rate: a probe the original follows on 25 % of the sources that no candidate follows any
    more says "backdoor gone" as clearly as one at 100 %. (The absolute fall, used before, capped the backdoor
    term at the probe's own rate and let the clean term decide whenever the probe was weak.)

    Example:
        >>> probe_drops(0.5, {0.1: 0.5, 0.2: 0.0})
        {0.1: 0.0, 0.2: 1.0}
    """
    if rate_original <= 0:
        raise ValueError(f"probe_drops: the original's rate must be positive, got {rate_original}")
    return {v: 1.0 - r / rate_original for v, r in rates.items()}


@dataclass
class Choice:
    """An automatic choice and the evidence for it (JSON-friendly via :meth:`as_dict`)."""

    value: float
    suspect: int
    candidates: list[dict[str, float]]
    signal: str = SIGNAL
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"chosen": self.value, "suspected_target": self.suspect, "signal": self.signal,
                "candidates": self.candidates, **self.extra}


def estimated_der(backdoor_drop: float, clean_drop: float) -> float:
    """The DER formula on estimated drops (fractions): ``(1 + max(backdoor_drop, 0) − max(clean_drop, 0)) / 2``.

    Example:
        >>> estimated_der(0.75, 0.25), estimated_der(-0.2, -0.3)
        (0.75, 0.5)
    """
    return (1.0 + max(backdoor_drop, 0.0) - max(clean_drop, 0.0)) / 2


def class_agreement(pred: torch.Tensor, ref: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per class c: the fraction of inputs the reference assigns to c that ``pred`` also assigns to c.

    Classes the reference never predicts get NaN.

    Example:
        >>> class_agreement(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), 3).tolist()[:2]
        [0.5, 1.0]
    """
    same = (pred == ref).double()
    hits = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, ref, same)
    counts = torch.bincount(ref, minlength=num_classes).double()
    return torch.where(counts > 0, hits / counts.clamp_min(1), torch.full_like(hits, float("nan")))


def suspect_class(candidates: Mapping[float, torch.Tensor], reference: torch.Tensor, num_classes: int) -> int:
    """The class whose synthetic inputs lose the candidates' agreement most, averaged over the candidates.

    Example:
        >>> suspect_class({0.1: torch.tensor([1, 1, 1, 1])}, torch.tensor([0, 0, 1, 1]), 2)
        0
    """
    if not candidates:
        raise ValueError("suspect_class: no candidates")
    per_class = torch.stack([class_agreement(p, reference, num_classes) for p in candidates.values()])
    mean_agree = torch.nanmean(per_class, dim=0)
    mean_agree = torch.where(torch.isnan(mean_agree), torch.full_like(mean_agree, float("inf")), mean_agree)
    return int(torch.argmin(mean_agree))


def choose(
    candidates: Mapping[float, torch.Tensor],
    reference: torch.Tensor,
    num_classes: int,
    *,
    clean_drop: Mapping[float, float] | None = None,
    backdoor_drop: Mapping[float, float] | None = None,
    suspect: int | None = None,
    clean_scale: float = SYNTHETIC_CLEAN_SCALE,
    lean: float = 0.0,
    collapse_limit: float | None = None,
) -> Choice:
    """Pick the candidate setting with the highest estimated DER (with ``lean``: the largest setting within it).

    Args:
        candidates: setting → the candidate model's predicted classes on the synthetic inputs.
        reference: the original model's predicted classes on the same inputs.
        num_classes: number of classes.
        clean_drop: setting → estimated loss of clean accuracy (e.g. from a clean subset). When ``None``,
            the drop of agreement on the synthetic inputs of the non-suspected classes is used (data-free).
        backdoor_drop: setting → estimated ASR drop (e.g. from :func:`~otbr.scans.trigger_rate` of a reverse-engineered
            trigger). When ``None``, the drop of agreement on the suspected class's synthetic inputs is used.
        suspect: the suspected target class (default :func:`suspect_class`).
        clean_scale: factor on the synthetic disagreement when it stands in for the clean drop (ignored when
            ``clean_drop`` is given); each row keeps the raw ``clean_disagreement``.
        lean: take the largest setting whose estimated DER is within ``lean`` of the best (:func:`pick`; OTBR
            uses :data:`OTBR_LEAN`); ``0``: the best itself.
        collapse_limit: leave out the candidates whose ``clean_disagreement`` is above it
            (:func:`within_collapse_limit`; OTBR uses :data:`COLLAPSE_LIMIT`); ``None``: no guard. The report's
            ``collapse_guard`` lists the settings left out.
    """
    if not candidates:
        raise ValueError("choose: no candidates")
    _check_limit(collapse_limit)
    if lean < 0:
        raise ValueError(f"choose: lean must be ≥ 0, got {lean}")
    if not 0.0 < clean_scale <= 1.0:
        raise ValueError(f"choose: clean_scale must be in (0, 1], got {clean_scale}")
    values = sorted(candidates)
    if suspect is None:
        suspect = suspect_class(candidates, reference, num_classes)
    rest = reference != suspect
    # a suspect the original gives no synthetic input to has no agreement to lose: counted as no drop (not NaN)
    empty = backdoor_drop is None and not bool((reference == suspect).any())
    rows: list[dict[str, float]] = []
    for v in values:
        agree_t = 1.0 if empty else float(class_agreement(candidates[v], reference, num_classes)[suspect])
        agree_rest = float((candidates[v][rest] == reference[rest]).double().mean()) if rest.any() else 1.0
        cdrop = clean_scale * (1.0 - agree_rest) if clean_drop is None else float(clean_drop[v])
        bdrop = (1.0 - agree_t) if backdoor_drop is None else float(backdoor_drop[v])
        rows.append({"value": v, "target_agreement": round(agree_t, 4), "backdoor_drop": round(bdrop, 4),
                     "clean_drop": round(cdrop, 4), "clean_disagreement": round(1.0 - agree_rest, 4),
                     "estimated_der": round(estimated_der(bdrop, cdrop), 4)})
    top, best, picked = _guarded_pick(rows, lean, collapse_limit)
    log.info("auto choice %s (suspected target %d, estimated DER %.3f, margin %s%s)", best["value"], suspect,
             best["estimated_der"], picked["margin"],
             "" if best is top else f"; the most pruning within {lean:g} of the best, {top['value']:g}")
    extra = {"clean_term": "measured clean drop" if clean_drop is not None else
             f"synthetic disagreement × {clean_scale:g}", **picked}
    if empty:
        extra["note"] = (f"the original model assigns none of the synthetic inputs to the suspected class {suspect}, "
                         "so the backdoor term counts no drop for any candidate")
    return Choice(value=float(best["value"]), suspect=suspect, candidates=rows, extra=extra)


def within_collapse_limit(rows: Sequence[Mapping[str, Any]], limit: float | None,
                          key: str = "clean_disagreement") -> list[Mapping[str, Any]]:
    """The rows whose ``key`` is at most ``limit``; when none is, the row of the smallest ``value`` alone
    (the lightest setting changes the model least). ``limit=None``: every row.

    Example:
        >>> rows = [{"value": 0.1, "clean_disagreement": 0.2}, {"value": 0.2, "clean_disagreement": 0.9}]
        >>> [r["value"] for r in within_collapse_limit(rows, 0.7)]
        [0.1]
        >>> [r["value"] for r in within_collapse_limit(rows, 0.1)]  # none within: the smallest setting
        [0.1]
    """
    if limit is None:
        return list(rows)
    return [r for r in rows if r[key] <= limit] or [min(rows, key=lambda r: r["value"])]


def _guarded_pick(rows: list[dict[str, float]], lean: float, limit: float | None
                  ) -> tuple[Mapping[str, Any], Mapping[str, Any], dict[str, Any]]:
    """The best row and the leaned pick among the rows the collapse guard keeps, and the report's entries: the
    best's margin over the runner-up among them, the lean, and the guard's record."""
    kept = within_collapse_limit(rows, limit)
    top, best = pick(kept, 0.0), pick(kept, lean)
    runner_up = max((r["estimated_der"] for r in kept if r is not top), default=None)
    extra: dict[str, Any] = {"margin": None if runner_up is None else round(top["estimated_der"] - runner_up, 4),
                             "lean": {"within": lean, "best_estimate": top["value"], "moved": best is not top}}
    if limit is not None:
        out = [r["value"] for r in rows if r["clean_disagreement"] > limit]
        extra["collapse_guard"] = {"limit": limit, "left_out": out, "all_out": len(out) == len(rows)}
        if out:  # (per synthetic set too: the defense warns once, from the report, when all are out)
            log.info("collapse guard: %s left out (synthetic disagreement above %.0f %%)%s", out, 100 * limit,
                     "; all are, so the smallest is taken" if len(out) == len(rows) else "")
    return top, best, extra


def _check_limit(limit: float | None) -> None:
    if limit is not None and not 0.0 < limit <= 1.0:
        raise ValueError(f"collapse_limit must be in (0, 1] or None, got {limit}")


def pick(rows: Sequence[Mapping[str, Any]], lean: float = 0.0) -> Mapping[str, Any]:
    """The row (``value``, ``estimated_der``) with the highest estimated DER, ties to the smaller value; with
    ``lean`` > 0, the largest value among the rows whose estimated DER is within ``lean`` of that best.

    Example:
        >>> rows = [{"value": 0.1, "estimated_der": 0.90}, {"value": 0.15, "estimated_der": 0.88}]
        >>> pick(rows)["value"], pick(rows, lean=0.035)["value"]
        (0.1, 0.15)
    """
    top = max(rows, key=lambda r: (r["estimated_der"], -r["value"]))
    if lean <= 0:
        return top
    return max((r for r in rows if r["estimated_der"] >= top["estimated_der"] - lean - 1e-12),
               key=lambda r: r["value"])


def _check_rule(rule: str) -> None:
    if rule not in SUSPECT_RULES:
        raise ValueError(f"suspect_rule must be one of {', '.join(SUSPECT_RULES)}, got {rule!r}")


def require_batchnorm(model: torch.nn.Module, option: str, example: str) -> None:
    """Raise a one-line :class:`~otbr.errors.OtbrError` when ``model`` has no BatchNorm statistics to invert."""
    from otbr.errors import OtbrError
    from otbr.synthesis import bn_layers

    if not bn_layers(model):
        raise OtbrError(f"{option}='auto' inverts the model's BatchNorm statistics and this model has none; "
                        f"pass a fixed {option} (e.g. {example})")


def _overridden(suspect: int, warp: Mapping[str, Any], *, report: bool = True) -> int:
    """``suspect``, unless :func:`~otbr.scans.warp_override` found one decisive class (logged, with ``report``, when
    that changes the suspect)."""
    if warp["override"] is None or warp["override"] == suspect:
        return suspect
    if report:
        log.info("warp override: class %d is reached by a %g-pixel warp from nearly every source class (median "
                 "%.2f); suspect %d → %d", warp["override"], warp["pixels"], warp["median"][warp["override"]],
                 suspect, warp["override"])
    return int(warp["override"])


def _scan_suspect(scan: torch.Tensor, preds: Mapping[float, torch.Tensor], ref: torch.Tensor,
                  num_classes: int) -> int:
    """The class the scan reaches best; a tie (e.g. every class reachable) goes to the agreement signal."""
    top = float(scan.max())
    tied = [c for c in range(num_classes) if float(scan[c]) >= top - 1e-9]
    agree = suspect_class(preds, ref, num_classes) if len(tied) > 1 else tied[0]
    return agree if agree in tied else tied[0]


def _probe(
    original: torch.nn.Module,
    candidates: Mapping[float, torch.nn.Module],
    pool: torch.Tensor,
    pool_ref: torch.Tensor,
    suspect: int,
    *,
    budget: float,
    steps: int,
    ladder: bool,
    sources: str,
    seed: int = 0,
) -> tuple[dict[float, float] | None, dict[str, Any]]:
    """Reverse-engineer a trigger toward ``suspect`` on the original; the backdoor drop per candidate (``None``
    when the original does not follow it) and the probe's record (see :func:`choose_for`)."""
    src = pool[pool_ref != suspect]
    if len(src) == 0:
        src = pool
    rate_seed = 12345 + seed
    probes = {}
    ladders = {"patch": (0.01, 0.02, budget), "blend": (0.03, 0.05, 0.1)} if ladder else \
        {"patch": (budget,), "blend": (0.1,)}
    for kind, sizes in ladders.items():
        for size in sizes:
            mask, pattern = reverse_trigger(original, src, suspect, kind=kind, budget=size, alpha=size,
                                            steps=steps, seed=seed)
            probes[kind] = (mask, pattern, trigger_rate(original, src, mask, pattern, suspect, seed=rate_seed), size)
            if probes[kind][2] >= 0.9:
                break
    kind = max(probes, key=lambda k: probes[k][2])  # the trigger form the original follows best
    mask, pattern, base, size = probes[kind]
    rates = {v: trigger_rate(m, src, mask, pattern, suspect, seed=rate_seed) for v, m in candidates.items()}
    # the softer top-2 reading, recorded for study (not used by the rule)
    top2 = {v: trigger_rate(m, src, mask, pattern, suspect, top=2, seed=rate_seed) for v, m in candidates.items()}
    top2_base = trigger_rate(original, src, mask, pattern, suspect, top=2, seed=rate_seed)
    found = base >= PROBE_MIN_RATE
    info: dict[str, Any] = {
        "sources": sources, "kind": kind, "rate_original_by_kind": {k: round(v[2], 4) for k, v in probes.items()},
        "size_by_kind": {k: v[3] for k, v in probes.items()}, "ladder": ladder, "steps": steps,
        "rate_original": round(base, 4), "rate": {str(v): round(r, 4) for v, r in sorted(rates.items())},
        "mask_area": round(float(mask.mean()), 4), "robust": True, "found": found,
        "rate_top2_original": round(top2_base, 4),
        "rate_top2": {str(v): round(r, 4) for v, r in sorted(top2.items())}}
    if not found:
        info["note"] = PROBE_NOTHING
        log.warning("the reverse-engineered trigger reaches only %.0f %% on the original model; %s",
                    100 * base, PROBE_NOTHING)
    return (probe_drops(base, rates) if found else None), info


def choose_for(
    original: torch.nn.Module,
    candidates: Mapping[float, torch.nn.Module],
    synthetic: torch.Tensor,
    num_classes: int,
    *,
    clean_drop: Mapping[float, float] | None = None,
    probe: bool = True,
    probe_budget: float = 0.05,
    probe_steps: int = 100,
    probe_images: torch.Tensor | None = None,
    probe_ladder: bool = False,
    clean_scale: float = SYNTHETIC_CLEAN_SCALE,
    lean: float = 0.0,
    suspect_rule: str = "scan",
    collapse_limit: float | None = None,
    labels: torch.Tensor | None = None,
) -> Choice:
    """:func:`choose` on models, with every signal computed from ``synthetic`` inputs.

    ``synthetic`` must come from the model itself (e.g. :func:`otbr.synthesis.synthesize`), never from data
    the defender should not have. Steps: predictions of the original and every candidate; the suspected
    target — with ``probe``, the class a small trigger reaches most easily on the original
    (:func:`~otbr.scans.target_scan`), else the class whose synthetic inputs lose the candidates' agreement most
    (:func:`suspect_class`); with ``probe``, a trigger reverse-engineered on the *original* toward the suspect
    from the synthetic inputs of the other classes (:func:`~otbr.scans.reverse_trigger`), whose success rate on each
    candidate relative to its rate on the original gives the backdoor term (:func:`probe_drops`). When the
    original follows the probe on fewer than :data:`PROBE_MIN_RATE` of the sources, nothing was found: the
    report says so (``probe.found``, ``probe.note``) and the agreement signal is used instead. ``probe_images`` (e.g. a
    clean subset, for TSBD) replace the synthetic inputs as the probe's sources; real images give a probe
    that behaves like the real trigger, where synthetic ones are more fragile. Real images are also easier to
    flip with *any* universal pattern, so with ``probe_ladder`` each trigger form takes the smallest size of a
    ladder (patch area 1, 2, 5 % of the image; blend weight 0.03, 0.05, 0.1) at which the original follows it
    on ≥ 90 % of the sources — a backdoor needs only a small trigger (the idea of Neural Cleanse's norm).
    Without ``clean_drop`` the clean term is the disagreement on the other classes' synthetic inputs times
    ``clean_scale`` (module docstring). With ``suspect_rule="stratified"`` the probe's suspect comes from
    :func:`~otbr.scans.stratified_suspects` instead of :func:`~otbr.scans.target_scan` (:data:`SUSPECT_RULES`); with
    ``"warp"``, from there unless :func:`~otbr.scans.warp_override` names one class; with ``"recall"``, the scan's
    suspect unless the original's recall on ``probe_images`` (their clean ``labels``, required) names a class it misses
    (:func:`~otbr.scans.recall_class`); every rule but ``"scan"`` needs ``probe`` (a ``ValueError`` otherwise).
    ``collapse_limit``: the collapse guard (:func:`choose`). Several synthetic sets: :func:`choose_for_repeats`.
    """
    from otbr.metrics import predict

    _check_rule(suspect_rule)
    _check_limit(collapse_limit)
    if suspect_rule != "scan" and not probe:
        raise ValueError(f"suspect_rule {suspect_rule!r} names the probe's suspect: it needs probe=True (without "
                         "the probe the suspect is the class the candidates disagree on most)")
    if suspect_rule == "recall" and (labels is None or probe_images is None):
        raise ValueError("suspect_rule 'recall' reads labelled clean images: pass probe_images and their labels")

    ref = predict(original, synthetic)
    preds = {v: predict(m, synthetic) for v, m in candidates.items()}
    extra: dict[str, Any] = {}
    bdrop = None
    pool, pool_ref = synthetic, ref
    if probe_images is not None:
        pool, pool_ref = probe_images, predict(original, probe_images)
    if probe and suspect_rule in ("stratified", "warp"):
        (suspect,), _, (extra["stratified_scan"],), _ = stratified_suspects(original, [pool], [pool_ref], num_classes,
                                                                            budget=probe_budget)
        if suspect_rule == "warp":
            extra["warp_scan"] = warp_override(original, pool, pool_ref, num_classes, patch_suspect=suspect)
            suspect = _overridden(suspect, extra["warp_scan"])
    elif probe:
        scan = target_scan(original, pool, pool_ref, num_classes, budget=probe_budget)
        suspect = _scan_suspect(scan, preds, ref, num_classes)
        extra["target_scan"] = [round(float(v), 4) for v in scan]
        if suspect_rule == "recall":
            extra["recall_scan"] = recall_override(original, probe_images, labels, num_classes, scan_suspect=suspect)
            suspect = extra["recall_scan"]["suspect"]
    if probe:
        extra["suspect_rule"] = suspect_rule
        bdrop, extra["probe"] = _probe(original, candidates, pool, pool_ref, suspect, budget=probe_budget,
                                       steps=probe_steps, ladder=probe_ladder,
                                       sources="synthetic" if probe_images is None else "given images")
        if probe_images is None:  # the threshold was read off probes on synthetic sources
            extra["suspect_check"] = suspect_check(extra["probe"]["rate_original"], suspect)
    else:
        suspect = suspect_class(preds, ref, num_classes)
    choice = choose(preds, ref, num_classes, clean_drop=clean_drop, backdoor_drop=bdrop, suspect=suspect,
                    clean_scale=clean_scale, lean=lean, collapse_limit=collapse_limit)
    if bdrop is not None:
        choice.signal = SIGNAL_PROBE
    choice.extra.update(extra)
    return choice


#: The per-candidate terms :func:`choose_for_repeats` averages over its repeats.
_TERMS = ("target_agreement", "backdoor_drop", "clean_drop", "clean_disagreement", "estimated_der")


def choose_for_repeats(
    original: torch.nn.Module,
    candidates: Mapping[float, torch.nn.Module],
    synthetic_sets: Sequence[torch.Tensor],
    num_classes: int,
    *,
    probe_budget: float = 0.05,
    probe_steps: int = 100,
    clean_scale: float = SYNTHETIC_CLEAN_SCALE,
    lean: float = 0.0,
    suspect_rule: str = "scan",
    collapse_limit: float | None = None,
) -> Choice:
    """:func:`choose_for` (data-free, with the probe) averaged over several synthetic sets, each with its own seed.

    The estimates of one set are the end of a chain of optimisations (inversion → scan → probe) that amplifies
    small numerical differences: the same model can get a different suspected target, or estimates tens of
    points apart, from another seed or another machine. With ``k`` sets: the target scan is averaged over the
    sets to give one suspect; each set's probe toward it gives that set's estimates; each candidate's terms
    are averaged (``estimated_der_min`` / ``_max`` keep their spread) and :func:`pick` chooses (with ``lean``).
    ``extra["repeats"]`` records, per set, what it would have chosen alone (its own suspect and estimates) —
    ``repeat_agreement`` is the share of sets whose lone choice is the averaged one, a measure of how sure the
    choice is. One set gives exactly :func:`choose_for`. ``suspect_rule`` (:data:`SUSPECT_RULES`): with ``"stratified"``
    each set's suspect and the joint one come from :func:`~otbr.scans.stratified_suspects` (scores averaged over the
    sets) instead of the averaged :func:`~otbr.scans.target_scan`; with ``"warp"``, the first set's
    :func:`~otbr.scans.warp_override`, when it names a class, replaces them all. ``collapse_limit`` (the collapse guard,
    :func:`choose`) applies to the averaged disagreement, and to each set's lone choice.

    Example:
        >>> c = choose_for_repeats(net, cands, [syn_a, syn_b, syn_c], 10)  # doctest: +SKIP
        >>> c.extra["repeat_agreement"]  # doctest: +SKIP
        0.6667
    """
    from otbr.metrics import predict

    _check_rule(suspect_rule)
    _check_limit(collapse_limit)
    if suspect_rule not in DATA_FREE_SUSPECT_RULES:
        raise ValueError(f"suspect_rule {suspect_rule!r} reads labelled clean images; the data-free selection takes "
                         f"one of {', '.join(DATA_FREE_SUSPECT_RULES)}")
    sets = list(synthetic_sets)
    if not sets:
        raise ValueError("choose_for_repeats: no synthetic sets")
    if len(sets) == 1:
        return choose_for(original, candidates, sets[0], num_classes, probe_budget=probe_budget,
                          probe_steps=probe_steps, clean_scale=clean_scale, lean=lean, suspect_rule=suspect_rule,
                          collapse_limit=collapse_limit)
    refs = [predict(original, x) for x in sets]
    preds = [{v: predict(m, x) for v, m in candidates.items()} for x in sets]
    scan_extra: dict[str, Any]
    if suspect_rule in ("stratified", "warp"):
        own, suspect, per_set_scores, avg_scores = stratified_suspects(original, sets, refs, num_classes,
                                                                       budget=probe_budget)
        set_scans: list[dict[str, Any]] = [{"stratified_scan": sc} for sc in per_set_scores]
        scan_extra = {"stratified_scan": avg_scores}
        if suspect_rule == "warp":  # the first set's warp scan; an override holds for every set's suspect
            scan_extra["warp_scan"] = warp_override(original, sets[0], refs[0], num_classes, patch_suspect=suspect)
            own = [_overridden(c, scan_extra["warp_scan"], report=False) for c in own]
            suspect = _overridden(suspect, scan_extra["warp_scan"])
    else:
        scans = [target_scan(original, x, r, num_classes, budget=probe_budget, seed=i)
                 for i, (x, r) in enumerate(zip(sets, refs, strict=True))]
        own = [_scan_suspect(sc, p, r, num_classes) for sc, p, r in zip(scans, preds, refs, strict=True)]
        scan = torch.stack(scans).mean(0)
        joint = {v: torch.cat([p[v] for p in preds]) for v in candidates}
        suspect = _scan_suspect(scan, joint, torch.cat(refs), num_classes)
        set_scans = [{"target_scan": [round(float(v), 4) for v in sc]} for sc in scans]
        scan_extra = {"target_scan": [round(float(v), 4) for v in scan]}
    repeats: list[dict[str, Any]] = []
    per_set: list[Choice] = []
    probe_kw = {"budget": probe_budget, "steps": probe_steps, "ladder": False, "sources": "synthetic"}
    for i, x in enumerate(sets):
        # the predictions and scans above are reused: each set needs only its probe(s) and the rule
        bdrop, probe_own = _probe(original, candidates, x, refs[i], own[i], seed=i, **probe_kw)
        alone = choose(preds[i], refs[i], num_classes, backdoor_drop=bdrop, suspect=own[i], clean_scale=clean_scale,
                       lean=lean, collapse_limit=collapse_limit)
        joined, probe_joined = alone, probe_own
        if own[i] != suspect:
            bdrop, probe_joined = _probe(original, candidates, x, refs[i], suspect, seed=i, **probe_kw)
            joined = choose(preds[i], refs[i], num_classes, backdoor_drop=bdrop, suspect=suspect,
                            clean_scale=clean_scale, lean=lean, collapse_limit=collapse_limit)
        joined.signal = SIGNAL_PROBE if bdrop is not None else SIGNAL
        per_set.append(joined)
        repeats.append({"seed": i, "suspect": own[i], "chosen": alone.value, **set_scans[i],
                        "estimated_der": {str(r["value"]): r["estimated_der"] for r in alone.candidates},
                        "clean_disagreement": {str(r["value"]): r["clean_disagreement"] for r in alone.candidates},
                        "probe": probe_own,
                        "estimated_der_at_suspect": {str(r["value"]): r["estimated_der"] for r in joined.candidates},
                        "probe_at_suspect": probe_joined})
    rows: list[dict[str, float]] = []
    for j, v in enumerate(sorted(candidates)):
        cells = [c.candidates[j] for c in per_set]
        row: dict[str, float] = {"value": v}
        row.update({t: round(sum(c[t] for c in cells) / len(cells), 4) for t in _TERMS})
        row["estimated_der_min"] = min(c["estimated_der"] for c in cells)
        row["estimated_der_max"] = max(c["estimated_der"] for c in cells)
        rows.append(row)
    _, best, picked = _guarded_pick(rows, lean, collapse_limit)
    agreement = round(sum(r["chosen"] == best["value"] for r in repeats) / len(repeats), 4)
    log.info("auto choice %s over %d synthetic sets (suspected target %d, estimated DER %.3f, %d of %d sets alone "
             "agree)", best["value"], len(sets), suspect, best["estimated_der"],
             sum(r["chosen"] == best["value"] for r in repeats), len(sets))
    extra = {"clean_term": f"synthetic disagreement × {clean_scale:g}", **picked,
             "suspect_rule": suspect_rule, **scan_extra, "repeats": repeats, "repeat_agreement": agreement,
             "probe": repeats[0]["probe_at_suspect"],
             "suspect_check": suspect_check(repeats[0]["probe_at_suspect"]["rate_original"], suspect)}
    source = {"stratified": "stratified patch scan", "warp": "stratified patch scan (or the first set's decisive warp "
              "scan)"}.get(suspect_rule, "target scan")
    signal = per_set[0].signal + f"; each term averaged over {len(sets)} synthetic sets (seeds), the suspect from " \
                                 f"their averaged {source}"
    return Choice(value=float(best["value"]), suspect=suspect, candidates=rows, signal=signal, extra=extra)
