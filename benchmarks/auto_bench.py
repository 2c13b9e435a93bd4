"""Automatic γ (OTBR) and n (TSBD) against the oracle, on the Fashion-MNIST zoos.

For every model the defense's own automatic choice is made exactly as a user's
run makes it (no poisoned data, no trigger knowledge: OTBR sees only the model,
TSBD the model and its clean subset). Then, for the benchmark only, every
candidate on the same grid is scored on the poisoned test set: the best one by
DER is the ORACLE choice, and the gap ``oracle DER − auto DER`` says what the
automatic rule loses. The published fixed settings (OTBR γ = 0.05, TSBD n = 0.1)
are shown beside it.

The first two zoos are the development set of the selection rules (the calibration of OTBR's data-free clean
term, ``otbr.selection.SYNTHETIC_CLEAN_SCALE``, was fitted on their clean accuracy); the third zoo
(``benchmarks/zoo.py --zoo third``) was held out until its results led to one more rule change (the probe's
relative drop, ``otbr.selection.probe_drops``); the fourth zoo is held out from that change, the fifth from everything
decided on the first four (OTBR's three-set averaging and lean included). Rows made under an
earlier rule carry the estimates the selector computed then; ``--rescore`` re-applies the current rule to those
stored estimates (probe rates and raw disagreement do not depend on the rule) and keeps the as-run choice beside
it.

Usage:
    python benchmarks/auto_bench.py [--method otbr|tsbd] [--zoo main|second|...|eleventh|both|all]
                                    [--repeats 3] [--suspect-rule warp|stratified|scan|recall]
                                    [--collapse-limit 0.7|1] [--only NAME,...] [--eval-limit 5000] [--threads 1]
                                    [--append] [--rescore] [--out STEM]

Writes ``benchmarks/results/auto-<method>-fmnist.{md,json}`` (TSBD with the scan suspect, its rule until the
recall rule was adopted on 2026-11-24; OTBR with one synthetic set, the scan and no guard). TSBD with the shipped
``recall`` rule: ``auto-tsbd-recall-fmnist`` (the stored scan rows, which that rule leaves unchanged, merged with the
re-runs of the rows it changes). OTBR with ``--repeats 3``: ``auto-otbr-warp-guard-fmnist`` for the shipped rule
(warp override, collapse guard); the rules before it keep their files: ``auto-otbr-repeats3-fmnist``
(``--suspect-rule scan --collapse-limit 1``), ``auto-otbr-stratified-fmnist`` (``--suspect-rule stratified
--collapse-limit 1``) and ``auto-otbr-stratified-guard-fmnist`` (``--suspect-rule stratified``).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from zoo import FOLDERS
from zoo import ZOOS as ZOO_DEFS

from otbr.attacks import attack_from_config
from otbr.data import load_dataset, sample_subset
from otbr.defenses.otbr import OTBR, SUSPECT_RULE
from otbr.defenses.tsbd import SUSPECT_RULE as TSBD_SUSPECT_RULE
from otbr.defenses.tsbd import TSBD
from otbr.metrics import der, evaluate
from otbr.models import load_model
from otbr.pixels import as_float
from otbr.report import ORACLE_NOTE, environment, markdown_table, write_json
from otbr.selection import (
    COLLAPSE_LIMIT as GUARD,
)
from otbr.selection import (
    OTBR_LEAN,
    SUSPECT_RULES,
    SUSPECT_WEAK_RATE,
    SYNTHETIC_CLEAN_SCALE,
    estimated_der,
    pick,
    probe_drops,
    within_collapse_limit,
)

log = logging.getLogger("auto_bench")

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
#: zoo name → (model folder, backdoored model names), from the zoo definitions in ``benchmarks/zoo.py``
ZOOS = {z: (ROOT.parent / FOLDERS[z], [n for n, e in entries.items() if e["attack"] is not None])
        for z, (entries, _seed, _stem) in ZOO_DEFS.items()}
ZOO_ARGS = {"both": ["main", "second"], "all": list(ZOOS)}
FIXED = {"otbr": 0.05, "tsbd": 0.1}


def pct(v: float | None) -> float | None:
    return None if v is None else round(100 * v, 2)


def candidates_otbr(model, meta, subset, repeats: int = 1, suspect_rule: str = SUSPECT_RULE,
                    collapse_limit: float | None = GUARD) -> tuple[Any, dict[float, Any], float]:
    d = OTBR(input_shape=meta.input_shape, num_classes=meta.num_classes, selection_repeats=repeats,
             suspect_rule=suspect_rule, collapse_limit=collapse_limit, progress=False)
    if FIXED["otbr"] not in d.gamma_grid:
        raise SystemExit("the fixed γ must be on the grid")
    t0 = time.perf_counter()
    choice, cands = d.select(model)
    return choice, cands, time.perf_counter() - t0


def candidates_tsbd(model, meta, subset, repeats: int = 1, suspect_rule: str = TSBD_SUSPECT_RULE,
                    collapse_limit: float | None = None) -> tuple[Any, dict[float, Any], float]:  # TSBD: no guard
    d = TSBD(suspect_rule=suspect_rule, progress=False)
    x = as_float(subset.x)
    y = subset.y.long()
    t0 = time.perf_counter()
    work = d._work_copy(model)
    scores, s1 = d._stage1_scores(work, x, y)
    auto = d._select(work, scores, s1["_changes"], x, y, keep=True)
    cands = auto.pop("_candidates")
    return auto, cands, time.perf_counter() - t0


def run_model(method: str, zoo: str, name: str, test, subset, limit: int | None,
              repeats: int = 1, suspect_rule: str = SUSPECT_RULE,
              collapse_limit: float | None = GUARD) -> dict[str, Any] | None:
    path = ZOOS[zoo][0] / f"{name}.safetensors"
    if not path.is_file():
        log.warning("%s missing: run python benchmarks/zoo.py%s first", path, "" if zoo == "main" else f" --zoo {zoo}")
        return None
    model, meta = load_model(path)
    ps = attack_from_config(meta.attack).poison_test(test)
    sets = ((test.x[:limit], test.y[:limit]), (ps.x[:limit], ps.y_true[:limit], int(ps.target)))
    base = evaluate(model, *sets)
    candidates = candidates_otbr if method == "otbr" else candidates_tsbd
    choice, cands, seconds = candidates(model, meta, subset, repeats, suspect_rule, collapse_limit)
    info = choice.as_dict() if hasattr(choice, "as_dict") else choice
    est = {c["value"]: c for c in info["candidates"]}
    rows = []
    for v, m in sorted(cands.items()):
        after = evaluate(m, *sets)
        rows.append({"value": v, "acc": pct(after.acc), "asr": pct(after.asr), "ra": pct(after.ra),
                     "der": pct(der(base.acc, base.asr, after.acc, after.asr)),
                     "estimated_der": pct(est[v]["estimated_der"]), "backdoor_drop_est": pct(est[v]["backdoor_drop"]),
                     "clean_drop_est": pct(est[v]["clean_drop"]),
                     "clean_disagreement_est": pct(est[v].get("clean_disagreement")),
                     **({f"estimated_der_{e}": pct(est[v][f"estimated_der_{e}"]) for e in ("min", "max")}
                        if "estimated_der_min" in est[v] else {})})
    oracle = max(rows, key=lambda r: (r["der"], -r["value"]))
    auto = next(r for r in rows if r["value"] == float(info["chosen"]))
    fixed = next((r for r in rows if abs(r["value"] - FIXED[method]) < 1e-12), None)
    out = {"zoo": zoo, "model": name, "attack": meta.attack, "target": int(ps.target),
           "original": {"acc": pct(base.acc), "asr": pct(base.asr), "ra": pct(base.ra)},
           "suspected_target": info["suspected_target"], "auto": auto, "oracle": oracle, "fixed": fixed,
           "gap": round(oracle["der"] - auto["der"], 2), "select_s": round(seconds, 1), "candidates": rows,
           "probe": info.get("probe"), "clean_term": info.get("clean_term"), "backdoor_term": "relative"}
    if method == "otbr":
        out["clean_scale"], out["lean"] = SYNTHETIC_CLEAN_SCALE, OTBR_LEAN
    if method == "otbr" and suspect_rule != "scan":
        out["suspect_rule"] = suspect_rule
        out["stratified_scan"] = info.get("stratified_scan")
        if "warp_scan" in info:
            out["warp_scan"] = info["warp_scan"]
    if method == "tsbd" and suspect_rule != "scan":  # rows without the field ran the scan
        out["suspect_rule"] = suspect_rule
        if "recall_scan" in info:
            out["recall_scan"] = info["recall_scan"]
    if method == "otbr" and collapse_limit is not None:
        out["collapse_limit"], out["collapse_guard"] = collapse_limit, info.get("collapse_guard")
    if "repeats" in info:  # each synthetic set's lone estimates (fractions) and choice, and their agreement
        out["repeats"] = [{"seed": r["seed"], "suspect": r["suspect"], "chosen": r["chosen"],
                           "estimated_der": {float(v): pct(e) for v, e in r["estimated_der"].items()},
                           **({"clean_disagreement": {float(v): pct(e) for v, e in r["clean_disagreement"].items()}}
                              if "clean_disagreement" in r else {}),
                           **({"stratified_scan": r["stratified_scan"]} if "stratified_scan" in r else {})}
                          for r in info["repeats"]]
        out["repeat_agreement"] = info["repeat_agreement"]
    log.info("%s/%s: auto %s (DER %.2f), oracle %s (DER %.2f), gap %.2f, %.0f s", zoo, name, auto["value"],
             auto["der"], oracle["value"], oracle["der"], out["gap"], seconds)
    return out


def guarded_pick(rows: list[dict[str, Any]], limit: float | None, lean: float) -> dict[str, Any]:
    """:func:`otbr.selection.pick` (``lean`` in points) among the stored candidates the collapse guard keeps
    (``limit`` in percent of ``clean_disagreement_est``; ``None``: every candidate), as the selector chooses."""
    return pick(within_collapse_limit(rows, limit, key="clean_disagreement_est"), lean)


def row_pick(m: dict[str, Any], rows: list[dict[str, Any]], lean: float) -> dict[str, Any]:
    """:func:`guarded_pick` with the row's own collapse guard (its ``collapse_limit``, the selector's guard; none for
    rows run without it)."""
    limit = m.get("collapse_limit")
    return guarded_pick(rows, None if limit is None else 100 * limit, lean)


def _drops(m: dict[str, Any], relative: bool, top2: bool = False) -> dict[float, float] | None:
    """The probe's backdoor drop per candidate (percent), relative (current rule) or absolute (the rule before),
    from the top-1 rates the rule uses or the softer top-2 reading the probe records beside them."""
    p = m.get("probe") or {}
    key = "rate_top2" if top2 else "rate"
    if not p.get(key) or p.get("found") is False:
        return None
    rates = {float(v): r for v, r in p[key].items()}
    base = p[key + "_original"]
    drops = probe_drops(base, rates) if relative else {v: base - r for v, r in rates.items()}
    return {v: 100 * d for v, d in drops.items()}


def rescore(m: dict[str, Any], method: str, scale: float = SYNTHETIC_CLEAN_SCALE, lean: float = OTBR_LEAN) -> bool:
    """Re-apply the current selection rule to a row made with an earlier one; returns whether it changed.

    Earlier rules: OTBR's clean term without the calibration factor (1.0), the probe's *absolute* rate drop
    as the backdoor term (now relative, :func:`otbr.selection.probe_drops`), and OTBR without the lean toward
    pruning (:data:`otbr.selection.OTBR_LEAN`). The stored estimates are the selector's own (probe rates; clean
    drop = raw disagreement × the factor it ran with, or the measured clean drop for TSBD); the rule is
    :func:`otbr.selection.choose`'s (:func:`otbr.selection.pick`). The first as-run choice is kept under
    ``as_run``, the choice without any lean under ``before_lean``, and the choice under each earlier non-zero lean
    in ``lean_history``. Rows averaged over synthetic sets (``repeats``) store only the first set's probe, so for
    them only the lean is re-applied, to the averaged estimates they store.
    """
    otbr = method == "otbr"
    ran_with = m.get("clean_scale", 1.0) if otbr else None
    ran_lean = m.get("lean", 0.0) if otbr else 0.0
    if "repeats" in m:  # averaged over synthetic sets: the stored probe is only the first set's, so only the lean
        if not otbr or ran_lean == lean:  # can be re-applied (to the averaged estimates the rows store)
            return False
        _record_lean(m, ran_lean)
        auto = row_pick(m, m["candidates"], 100 * lean)
        m.update(auto=auto, gap=round(m["oracle"]["der"] - auto["der"], 2), lean=lean, rescored=True)
        return True
    old_term = m.get("backdoor_term", "absolute")
    if (not otbr or (ran_with == scale and ran_lean == lean)) and old_term == "relative":
        return False
    drops = _drops(m, relative=True) if old_term != "relative" else None
    for r in m["candidates"]:
        if otbr:
            raw = r.get("clean_disagreement_est")
            raw = r["clean_drop_est"] / ran_with if raw is None else raw
            r["clean_disagreement_est"] = round(raw, 2)
            r["clean_drop_est"] = round(scale * raw, 2)
        if drops is not None:
            r["backdoor_drop_est"] = round(drops[r["value"]], 2)
        r["estimated_der"] = round(100 * estimated_der(r["backdoor_drop_est"] / 100, r["clean_drop_est"] / 100), 2)
    auto = row_pick(m, m["candidates"], 100 * lean if otbr else 0.0)
    m.setdefault("as_run", {"clean_scale": ran_with, "backdoor_term": old_term, "value": m["auto"]["value"],
                            "der": m["auto"]["der"], "gap": m["gap"]})
    if otbr and ran_lean != lean:
        if ran_lean == 0.0:
            m.setdefault("before_lean", {"value": m["auto"]["value"], "der": m["auto"]["der"], "gap": m["gap"]})
        else:
            _record_lean(m, ran_lean)
    m.update(auto=auto, gap=round(m["oracle"]["der"] - auto["der"], 2), backdoor_term="relative", rescored=True)
    if otbr:
        m["clean_scale"], m["lean"] = scale, lean
    return True


def _record_lean(m: dict[str, Any], ran_lean: float) -> None:
    """Keep the as-run choice (once) and the choice under the row's previous lean (``lean_history``)."""
    m.setdefault("as_run", {"clean_scale": m.get("clean_scale"), "backdoor_term": m.get("backdoor_term"),
                            "value": m["auto"]["value"], "der": m["auto"]["der"], "gap": m["gap"]})
    m.setdefault("lean_history", []).append({"lean": ran_lean, "value": m["auto"]["value"], "der": m["auto"]["der"],
                                             "gap": m["gap"]})


def gap_at(m: dict[str, Any], scale: float | None = None, relative: bool = True, top2: bool = False) -> float | None:
    """The DER gap the rule would have with clean-term factor ``scale`` (OTBR rows; ``None``: the row's own clean
    term) and the relative or absolute probe drop of the top-1 or top-2 reading, from the stored estimates."""
    if scale is not None and any(r.get("clean_disagreement_est") is None for r in m["candidates"]):
        return None
    if top2 and not (m.get("probe") or {}).get("rate_top2"):
        return None
    drops = _drops(m, relative, top2)
    if drops is None:  # no probe found: every rule uses the agreement term the row stores
        drops = {r["value"]: r["backdoor_drop_est"] for r in m["candidates"]}
    rows = [{**r, "estimated_der": 100 * estimated_der(
        drops[r["value"]] / 100, (r["clean_drop_est"] if scale is None else scale * r["clean_disagreement_est"]) / 100)}
        for r in m["candidates"]]
    return round(m["oracle"]["der"] - row_pick(m, rows, 100 * m.get("lean", 0.0))["der"], 2)


def lone_choices(m: dict[str, Any], lean: float | None = None) -> list[float]:
    """Per synthetic set of a ``--repeats`` row: the γ that set alone would choose (its own suspect and estimates),
    with the row's lean (``lean`` in points overrides it)."""
    within = 100 * m.get("lean", 0.0) if lean is None else lean
    # rows stored before the sets kept their disagreement cannot be guarded per set
    guarded = m.get("collapse_limit") is not None and all("clean_disagreement" in r for r in m["repeats"])
    limit = 100 * m["collapse_limit"] if guarded else None
    return [guarded_pick([{"value": float(v), "estimated_der": e,
                           "clean_disagreement_est": r["clean_disagreement"][v] if guarded else None}
                          for v, e in r["estimated_der"].items()], limit, within)["value"]
            for r in m["repeats"]]


def lone_gaps(m: dict[str, Any], lean: float | None = None) -> list[float]:
    """The DER gap of each set's :func:`lone_choices`."""
    der = {r["value"]: r["der"] for r in m["candidates"]}
    return [round(m["oracle"]["der"] - der[v], 2) for v in lone_choices(m, lean)]


def averaged_gap(m: dict[str, Any], lean: float) -> float:
    """The DER gap of the averaged estimates' choice with ``lean`` (points)."""
    return round(m["oracle"]["der"] - row_pick(m, m["candidates"], lean)["der"], 2)


#: The collapse guard (:data:`otbr.selection.COLLAPSE_LIMIT`, in percent), pre-registered with the sixth zoo
#: (benchmarks/RESULTS.md, "Choosing γ and n") and OTBR's default since the ninth zoo: OTBR candidates whose
#: synthetic clean disagreement is above it are left out of the choice, unless every candidate is (then the smallest
#: γ). The ``*_collapse_guard`` summary columns re-score rows run without it; on rows run with it they repeat the
#: choice.
COLLAPSE_LIMIT = 100 * GUARD


def guarded_choice(m: dict[str, Any], limit: float | None = COLLAPSE_LIMIT) -> dict[str, Any] | None:
    """The candidate the row's rule (its lean, its stored estimates) picks with the collapse guard (``limit`` in
    percent; ``None``: without it); ``None`` for rows whose clean term is not the synthetic disagreement (TSBD) or
    that do not store it."""
    rows = m["candidates"]
    if not str(m.get("clean_term", "")).startswith("synthetic") or any(
            r.get("clean_disagreement_est") is None for r in rows):
        return None
    return guarded_pick(rows, limit, 100 * m.get("lean", 0.0))


def guarded_gap(m: dict[str, Any], limit: float = COLLAPSE_LIMIT) -> float | None:
    """The DER gap of :func:`guarded_choice` to the oracle; ``None`` where it has none."""
    choice = guarded_choice(m, limit)
    return None if choice is None else round(m["oracle"]["der"] - choice["der"], 2)


def collapse_limit_arg(value: str) -> float | None:
    """``--collapse-limit``: a share in (0, 1]; 1 (no guard, as the rows made before it) reads as ``None``."""
    limit = float(value)
    if not 0 < limit <= 1:
        raise argparse.ArgumentTypeError(f"a share in (0, 1], got {value}")
    return None if limit >= 1 else limit


def oracle_asr(m: dict[str, Any]) -> float | None:
    """The ASR left at the oracle's choice (``None`` if the row stores no ASR): above 10 %, no setting of the grid
    removes the backdoor, and the gap only measures the clean cost."""
    return {r["value"]: r.get("asr") for r in m["candidates"]}[m["oracle"]["value"]]


def right_suspect_gaps(m: dict[str, Any]) -> list[float]:
    """ORACLE reading of a ``--repeats`` row: the gap of the lone choice of each synthetic set whose own suspect was
    the real target — what the selection could do with the right suspect (empty: no set suspected it)."""
    return [g for g, r in zip(lone_gaps(m), m["repeats"], strict=True) if r["suspect"] == m["target"]]


def weak_suspect(m: dict[str, Any]) -> bool | None:
    """Whether the row's report carries the weak-suspect warning (:func:`otbr.selection.suspect_check`: the first
    set's probe below :data:`~otbr.selection.SUSPECT_WEAK_RATE` on the original); ``None`` when its probe did not
    run on synthetic sources (TSBD), where the warning does not apply."""
    probe = m.get("probe") or {}
    return probe["rate_original"] < SUSPECT_WEAK_RATE if probe.get("sources") == "synthetic" else None


def hedged_gap(m: dict[str, Any]) -> float | None:
    """The DER gap of the weak-suspect hedge pre-registered with the seventh zoo (benchmarks/RESULTS.md, "Choosing γ
    and n"): when the row's weak-suspect warning fires, the largest of the averaged choice and each set's lone
    choice; otherwise the averaged choice. ``None`` for rows without synthetic probes or per-set choices."""
    weak = weak_suspect(m)
    if weak is None or "repeats" not in m:
        return None
    value = m["auto"]["value"]
    if weak:
        value = max([value, *lone_choices(m)])
    return round(m["oracle"]["der"] - {r["value"]: r["der"] for r in m["candidates"]}[value], 2)


def zoos_from_ninth(last: str) -> tuple[str, ...]:
    """The zoos from the ninth to ``last``, in their order (the groups held out from the shipped OTBR rule)."""
    names = list(ZOOS)
    return tuple(names[names.index("ninth"):names.index(last) + 1])


GROUPS = (("main zoo", ("main",)), ("second zoo", ("second",)), ("development (main + second)", ("main", "second")),
          ("third zoo (held out until the probe-drop change)", ("third",)),
          ("fourth zoo (held out)", ("fourth",)),
          ("fifth zoo (held out from everything decided on the first four)", ("fifth",)),
          ("sixth zoo (held out from everything decided on the first five)", ("sixth",)),
          ("seventh zoo (held out from the suspect signals read on the first six)", ("seventh",)),
          ("eighth zoo (held out from the stratified suspect rule)", ("eighth",)),
          ("held out from the suspect signal (seventh + eighth)", ("seventh", "eighth")),
          ("ninth zoo (held out from everything decided by 2026-11-24)", ("ninth",)),
          ("tenth zoo (held out from the shipped OTBR rule too)", ("tenth",)),
          ("held out from the shipped OTBR rule (ninth + tenth)", zoos_from_ninth("tenth")),
          ("eleventh zoo (held out from the shipped OTBR rule too)", ("eleventh",)),
          ("held out from the shipped OTBR rule (ninth to eleventh)", zoos_from_ninth("eleventh")),
          ("twelfth zoo (held out from the shipped OTBR rule too)", ("twelfth",)),
          ("held out from the shipped OTBR rule (ninth to twelfth)", zoos_from_ninth("twelfth")),
          ("thirteenth zoo (held out; the pre-registered test of the collapse limit 0.62)", ("thirteenth",)),
          ("held out from the shipped OTBR rule (ninth to thirteenth)", zoos_from_ninth("thirteenth")),
          ("fourteenth zoo (held out; the pre-registered removal reading)", ("fourteenth",)),
          ("held out from the shipped OTBR rule (ninth to fourteenth)", zoos_from_ninth("fourteenth")),
          ("fifteenth zoo (held out; the pre-registered repair-check margin)", ("fifteenth",)),
          ("held out from the shipped OTBR rule (ninth to fifteenth)", zoos_from_ninth("fifteenth")),
          ("sixteenth zoo (held out; the pre-registered warp override)", ("sixteenth",)),
          ("held out from the shipped OTBR rule (ninth to sixteenth)", zoos_from_ninth("sixteenth")),
          ("seventeenth zoo (held out; SIG at other frequencies and amplitude)", ("seventeenth",)),
          ("held out from the shipped OTBR rule (ninth to seventeenth)", zoos_from_ninth("seventeenth")),
          ("eighteenth zoo (held out; the pre-registered test of TSBD's recall suspect)", ("eighteenth",)),
          ("held out from the shipped OTBR rule (ninth to eighteenth)", zoos_from_ninth("eighteenth")),
          ("all", tuple(ZOOS)))


def summary(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for label, zoos in GROUPS:
        group = [m for m in models if m["zoo"] in zoos]
        present = {m["zoo"] for m in group}
        # a named group of several zoos needs every one of them ("all" takes whatever the file holds, two at least)
        if not group or (len(zoos) > 1 and (len(present) < 2 if label == "all" else present != set(zoos))):
            continue
        gaps = [m["gap"] for m in group]
        fixed_gaps = [m["oracle"]["der"] - m["fixed"]["der"] for m in group if m["fixed"]]
        out.append({"models": label, "n": len(group), "mean_gap_auto": round(statistics.fmean(gaps), 2),
                    "worst_gap_auto": round(max(gaps), 2),
                    "mean_gap_fixed": round(statistics.fmean(fixed_gaps), 2) if fixed_gaps else None,
                    "worst_gap_fixed": round(max(fixed_gaps), 2) if fixed_gaps else None,
                    "auto_hits_oracle": sum(m["auto"]["value"] == m["oracle"]["value"] for m in group),
                    "suspect_is_target": sum(m["suspected_target"] == m["target"] for m in group),
                    "oracle_asr_over_10": sum((oracle_asr(m) or 0.0) > 10 for m in group),
                    "mean_der_auto": round(statistics.fmean(m["auto"]["der"] for m in group), 2),
                    "mean_der_oracle": round(statistics.fmean(m["oracle"]["der"] for m in group), 2),
                    "mean_select_s": round(statistics.fmean(m["select_s"] for m in group), 1)})
        earlier = [m["lean_history"][-1] for m in group if m.get("lean_history")]
        if len(earlier) == len(group) and len({h["lean"] for h in earlier}) == 1:  # the choice under the last lean
            prev = [h["gap"] for h in earlier]
            out[-1].update({f"mean_gap_lean_{earlier[0]['lean']:g}": round(statistics.fmean(prev), 2),
                            f"worst_gap_lean_{earlier[0]['lean']:g}": round(max(prev), 2)})
        if all("before_lean" in m for m in group):  # single-set rows re-scored from before the lean
            none = [m["before_lean"]["gap"] for m in group]
            out[-1].update(mean_gap_auto_no_lean=round(statistics.fmean(none), 2),
                           worst_gap_auto_no_lean=round(max(none), 2))
        guarded = [guarded_gap(m) for m in group]
        if None not in guarded:
            out[-1].update(mean_gap_collapse_guard=round(statistics.fmean(guarded), 2),
                           worst_gap_collapse_guard=round(max(guarded), 2))
        weak = [weak_suspect(m) for m in group]
        if None not in weak:
            flagged = [m["gap"] for m, w in zip(group, weak, strict=True) if w]
            calm = [m["gap"] for m, w in zip(group, weak, strict=True) if not w]
            out[-1].update(weak_suspect=len(flagged),
                           weak_suspect_wrong=sum(w and m["suspected_target"] != m["target"]
                                                  for m, w in zip(group, weak, strict=True)),
                           mean_gap_weak=round(statistics.fmean(flagged), 2) if flagged else None,
                           worst_gap_weak=round(max(flagged), 2) if flagged else None,
                           mean_gap_not_weak=round(statistics.fmean(calm), 2) if calm else None,
                           worst_gap_not_weak=round(max(calm), 2) if calm else None)
        hedged = [hedged_gap(m) for m in group]
        if None not in hedged:
            out[-1].update(mean_gap_weak_hedge=round(statistics.fmean(hedged), 2),
                           worst_gap_weak_hedge=round(max(hedged), 2))
        if all("repeats" in m for m in group):
            lone = [g for m in group for g in lone_gaps(m)]
            lone0 = [g for m in group for g in lone_gaps(m, 0.0)]
            avg0 = [averaged_gap(m, 0.0) for m in group]
            out[-1].update(mean_gap_one_set=round(statistics.fmean(lone), 2), worst_gap_one_set=round(max(lone), 2),
                           mean_gap_auto_no_lean=round(statistics.fmean(avg0), 2),
                           worst_gap_auto_no_lean=round(max(avg0), 2),
                           mean_gap_one_set_no_lean=round(statistics.fmean(lone0), 2),
                           worst_gap_one_set_no_lean=round(max(lone0), 2),
                           mean_repeat_agreement=round(statistics.fmean(m["repeat_agreement"] for m in group), 2))
            continue  # the stored probe is the first set's only: no re-reading of it
        uncal = [gap_at(m, 1.0) for m in group]
        if group[0].get("clean_scale") not in (None, 1.0) and None not in uncal:
            out[-1].update(mean_gap_factor_1=round(statistics.fmean(uncal), 2), worst_gap_factor_1=round(max(uncal), 2))
        for name, gaps_alt in (("abs_drop", [gap_at(m, relative=False) for m in group]),
                               ("top2", [gap_at(m, top2=True) for m in group])):
            if None not in gaps_alt:
                out[-1].update({f"mean_gap_{name}": round(statistics.fmean(gaps_alt), 2),
                                f"worst_gap_{name}": round(max(gaps_alt), 2)})
    return out


#: summary columns of the choice under a row's previous lean (``lean_history``), e.g. ``mean_gap_lean_0.035``
LEAN_COLUMNS = ("mean_gap_lean_", "worst_gap_lean_")
SUMMARY_COLUMNS = ["models", "n", "mean_gap_auto", "worst_gap_auto", "mean_gap_fixed", "worst_gap_fixed",
                   "auto_hits_oracle", "suspect_is_target", "oracle_asr_over_10", "mean_der_auto", "mean_der_oracle",
                   "mean_select_s"]


def _table(rows: list[dict[str, Any]]) -> str:
    return markdown_table(rows, list(rows[0])) if rows else "(none)"


def margin(m: dict[str, Any]) -> float | None:
    """Estimated-DER lead of the auto choice over the runner-up (points): a small one is a near-tie."""
    est = sorted((r["estimated_der"] for r in m["candidates"]), reverse=True)
    return round(est[0] - est[1], 2) if len(est) > 1 else None


def write_markdown(p: dict[str, Any], path: Path) -> None:
    sym = "γ" if p["method"] == "otbr" else "n"
    lines = [f"# Automatic {sym} for {p['method'].upper()} vs the oracle (Fashion-MNIST zoos)", "",
             f"Generated by `{p['command']}`. Evaluated on the first {p['eval_limit'] or 'all'} clean and triggered "
             "non-target test images.", "",
             "The automatic choice sees " + ("only the model (no data at all)" if p["method"] == "otbr" else
                                              "the model and the 5 % clean subset") +
             "; the selection code path takes no poisoned data and no trigger (see `otbr/selection.py` and "
             "`tests/test_selection.py`). Estimated DER is what the selector computed; DER is measured.", "",
             f"**{ORACLE_NOTE}** Here that is the `oracle` columns (best DER on the grid) and every measured column "
             "of the candidate table; they exist only to measure the gap.", "",
             *([f"**Note:** {p['note']}", ""] if p.get("note") else []),
             "## Summary", "", markdown_table(p["summary"], SUMMARY_COLUMNS + [
                 c for c in (*sorted({k for r in p["summary"] for k in r if k.startswith(LEAN_COLUMNS)}),
                             "mean_gap_factor_1", "worst_gap_factor_1", "mean_gap_abs_drop", "worst_gap_abs_drop",
                             "mean_gap_top2", "worst_gap_top2", "mean_gap_one_set", "worst_gap_one_set",
                             "mean_gap_auto_no_lean", "worst_gap_auto_no_lean", "mean_gap_one_set_no_lean",
                             "worst_gap_one_set_no_lean", "mean_repeat_agreement", "mean_gap_collapse_guard",
                             "worst_gap_collapse_guard", "weak_suspect", "weak_suspect_wrong", "mean_gap_weak",
                             "worst_gap_weak", "mean_gap_not_weak", "worst_gap_not_weak", "mean_gap_weak_hedge",
                             "worst_gap_weak_hedge")
                 if any(c in r for r in p["summary"])]), "",
             "`gap of sets suspecting the target` (per model, ORACLE: it reads the real target): the gap of each "
             "synthetic set's lone choice among the sets whose own suspect was the real target. "
             "`oracle_asr_over_10`: models on which even the oracle's choice leaves more than 10 % ASR (no setting "
             "of the grid removes the backdoor; there the gap measures only the clean cost). "
             "`mean_gap_fixed`: gap of the published fixed setting "
             f"({sym} = {FIXED[p['method']]}) on the same grid, for comparison."
             + (" `*_factor_1`: the gap the rule would have without the clean-term calibration (factor 1 on the "
                "inversions' disagreement), from the same stored estimates. `weak_suspect`: models whose report "
                f"carries the weak-suspect warning (the first set's probe reaches below {SUSPECT_WEAK_RATE:.0%} of "
                "the sources on the original; a threshold read off these models, ORACLE for them, and not read by "
                "the choice), `weak_suspect_wrong` those of them whose suspect is not the target, and the gaps of "
                "the flagged and unflagged models. `*_weak_hedge`: the gap with the weak-suspect hedge pre-registered "
                "with the seventh zoo (on flagged models, the largest of the averaged and each set's lone choice; not "
                "the default), from the same stored estimates. `*_collapse_guard`: the gap with the "
                f"collapse guard pre-registered with the sixth zoo, OTBR's default since the ninth (candidates whose "
                f"synthetic disagreement is above {COLLAPSE_LIMIT:g} % left out), from the same stored estimates; on "
                "rows run with the guard (`collapse_limit` in the JSON) it is the as-run choice."
                if p["method"] == "otbr" else "")
             + " `*_abs_drop`: the gap with the earlier backdoor term (the probe's absolute rate drop instead of "
             "the relative one), from the same stored probe rates. `*_top2`: the gap if the backdoor term read the "
             "probe softly (the target among the top 2 classes, relative drop) — recorded by the selector, not used "
             "by the rule.", "",
             *(["`rescored`: the row was made under an earlier rule (OTBR: factor 1 on the inversions' "
                f"disagreement before the calibration to {SYNTHETIC_CLEAN_SCALE:g}, fitted on the development zoos' "
                "clean accuracy, or an earlier lean; both methods: the probe's absolute rate drop before the "
                "relative one); its auto "
                "choice here is the current rule applied to the selector's stored estimates, and the `as_run` "
                "columns give the choice the run made (`python benchmarks/auto_bench.py --rescore`).", ""]
               if any(m.get("rescored") for m in p["models"]) else []),
             *([f"**Lean toward pruning** (OTBR, `otbr.selection.OTBR_LEAN` = {OTBR_LEAN:g}): the rule takes the "
                f"largest γ whose estimated DER is within {100 * OTBR_LEAN:g} points of the best. The first lean "
                "(0.035, 2026-11-23) was fitted on the development zoos' (main + second) one-set gaps — ORACLE for "
                "those 11 models: the middle of the range of leans with the lowest development gap, 3.43–3.94 "
                "points; the fourth zoo was its held-out test. The current 0.065 was pre-registered as the one "
                "alternative (commit 852a297, before the fifth zoo was trained) and adopted because it met the rule "
                "written there on the fifth zoo (mean gap lower, worst no higher). Each change was applied to every "
                "row's stored estimates by `--rescore` (no model re-run; the selector is deterministic given them). "
                "`before_lean` columns (in the summary `*_auto_no_lean`): the choice and gap without a lean; "
                "`lean 0.035` columns (`*_gap_lean_0.035`): under the first lean.", ""]
               if any("before_lean" in m or "lean_history" in m for m in p["models"]) else []),
             *(["**Averaged over synthetic sets** (`OTBR(selection_repeats=K)`, `--repeats`): the auto choice "
                "averages each candidate's estimates over K BatchNorm inversions (seeds 0…K−1) at one suspected "
                "target (the averaged target scan); `each set alone` is what each set would have chosen by itself "
                "(its own suspect and estimates, the same lean) — the choice a one-set selector makes with that "
                "seed — and its gap. `*_one_set`: those lone gaps over all sets and models; `*_no_lean`: the same "
                "rules without the lean toward pruning.", ""] if any("repeats" in m for m in p["models"]) else []),
             "## Per model", ""]
    per = []
    for m in p["models"]:
        per.append({"zoo": m["zoo"], "model": m["model"], "target": m["target"], "suspect": m["suspected_target"],
                    f"auto {sym}": m["auto"]["value"], "auto ACC": m["auto"]["acc"], "auto ASR": m["auto"]["asr"],
                    "auto DER": m["auto"]["der"], f"oracle {sym}": m["oracle"]["value"],
                    "oracle DER": m["oracle"]["der"], "oracle ASR": oracle_asr(m), "gap": m["gap"],
                    f"fixed {sym} DER": m["fixed"]["der"] if m["fixed"] else None, "margin": margin(m),
                    "probe rate": (m.get("probe") or {}).get("rate_original"), "select s": m["select_s"],
                    **({f"as_run {sym}": m["as_run"]["value"], "as_run gap": m["as_run"]["gap"]}
                       if any("as_run" in x for x in p["models"]) and "as_run" in m else {}),
                    **({"rescored": bool(m.get("rescored"))} if any("as_run" in x for x in p["models"]) else {}),
                    **({f"before_lean {sym}": m["before_lean"]["value"], "before_lean gap": m["before_lean"]["gap"]}
                       if "before_lean" in m else {}),
                    **{k: v for h in m.get("lean_history", []) for k, v in
                       ((f"lean {h['lean']:g} {sym}", h["value"]), (f"lean {h['lean']:g} gap", h["gap"]))},
                    **({f"each set alone {sym}": " / ".join(f"{r['chosen']:g}" for r in m["repeats"]),
                        "each set alone gap": " / ".join(f"{g:g}" for g in lone_gaps(m)),
                        "suspect per set": " / ".join(str(r["suspect"]) for r in m["repeats"]),
                        "gap of sets suspecting the target": " / ".join(f"{g:g}" for g in right_suspect_gaps(m)),
                        "weak hedge gap": hedged_gap(m)}
                       if "repeats" in m else {})})
    lines += [_table(per), "", "## Every candidate (measured columns are ORACLE)", ""]
    cand = [{"model": m["model"], sym: r["value"], "est. DER": r["estimated_der"],
             "est. backdoor drop": r["backdoor_drop_est"], "est. clean drop": r["clean_drop_est"],
             **({"disagreement": r.get("clean_disagreement_est")} if p["method"] == "otbr" else {}),
             "ACC": r["acc"], "ASR": r["asr"], "RA": r["ra"], "DER": r["der"],
             "pick": ("auto" if r["value"] == m["auto"]["value"] else "")
             + (" oracle" if r["value"] == m["oracle"]["value"] else "")}
            for m in p["models"] for r in m["candidates"]]
    lines += [_table(cand), "", f"Machine: {p['environment'].get('platform', '')}, "
              f"{p['threads']} thread(s), shared 2-core CPU (times are indicative)."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=["otbr", "tsbd"], default="otbr")
    ap.add_argument("--zoo", choices=[*ZOOS, *ZOO_ARGS], default="both",
                    help="both: the two development zoos; all: those and the held-out third to eleventh")
    ap.add_argument("--only", help="comma-separated model names")
    ap.add_argument("--eval-limit", type=int, default=5000, help="first N test images (0: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--render", action="store_true", help="only rewrite the summary and Markdown from the JSON")
    ap.add_argument("--rescore", action="store_true",
                    help="re-apply the current rule (OTBR's clean-term factor and lean, the relative probe drop) to "
                    "rows made under an earlier one (no models run)")
    ap.add_argument("--append", action="store_true",
                    help="keep the models of an existing result file and skip them (resume an interrupted run)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="OTBR: average the selector's estimates over this many synthetic sets (seeds); the rows "
                    "also keep each set's lone choice. Results go to auto-otbr-repeatsK-fmnist.json")
    ap.add_argument("--out", help="result file stem instead of the default (e.g. to run zoos in two processes)")
    ap.add_argument("--merge", help="comma-separated result stems (made with --out) to merge into the output file; "
                    "a model in several keeps its row from the last")
    ap.add_argument("--suspect-rule", choices=SUSPECT_RULES, default=None,
                    help="the suspect rule (otbr.selection.SUSPECT_RULES; default: the method's shipped one, "
                    f"OTBR {SUSPECT_RULE}, TSBD {TSBD_SUSPECT_RULE}; recall: TSBD only)")
    ap.add_argument("--collapse-limit", type=collapse_limit_arg, default=GUARD,
                    help=f"OTBR's collapse guard (default: the shipped {GUARD:g}; 1: none, as the rows made before "
                    "the guard existed)")
    args = ap.parse_args(argv)
    if args.suspect_rule is None:
        args.suspect_rule = SUSPECT_RULE if args.method == "otbr" else TSBD_SUSPECT_RULE
    elif args.method == "otbr" and args.suspect_rule == "recall":
        ap.error("--suspect-rule recall reads labelled clean images: TSBD only")
    guard = args.collapse_limit
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    if args.repeats < 1 or (args.repeats > 1 and args.method != "otbr"):
        raise SystemExit("--repeats: a positive number, for --method otbr only")
    stem = args.out or (f"auto-{args.method}-fmnist" if args.repeats == 1
                        else f"auto-otbr-repeats{args.repeats}-fmnist")
    if not args.out and args.method == "otbr" and (args.suspect_rule != "scan" or guard is not None):
        # the files of the scan without the guard (the rule before both options) keep their names
        stem = f"auto-otbr-{args.suspect_rule}" + ("" if args.repeats == 3 else f"-repeats{args.repeats}") + \
            ("" if guard is None else "-guard") + "-fmnist"
    if not args.out and args.method == "tsbd" and args.suspect_rule != "scan":  # the scan's file keeps its name
        stem = f"auto-tsbd-{args.suspect_rule}-fmnist"
    jpath = RESULTS / f"{stem}.json"
    if args.merge:
        parts = [json.loads((RESULTS / f"{s}.json").read_text()) for s in args.merge.split(",")]
        if len({(p["method"], p["eval_limit"]) for p in parts}) != 1:
            raise SystemExit("--merge: the files differ in method or eval limit")
        last = {(m["zoo"], m["model"]): m for p in parts for m in p["models"]}  # a later part's row replaces
        models = [last[k] for k in dict.fromkeys((m["zoo"], m["model"]) for p in parts for m in p["models"])]
        payload = {**parts[0], "models": models, "summary": summary(models),
                   "command": " ; ".join(f"({p['command']})" for p in parts) + " (in parallel processes), merged by "
                   "python benchmarks/auto_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])}
        write_json(jpath, payload)
        write_markdown(payload, jpath.with_suffix(".md"))
        return 0
    if args.render or args.rescore:
        payload = json.loads(jpath.read_text())
        if args.rescore:
            changed = [m["model"] for m in payload["models"] if rescore(m, payload["method"])]
            log.info("re-scored %d rows: %s", len(changed), ", ".join(changed) or "none")
            if changed:
                payload["command"] += f", then python benchmarks/auto_bench.py --rescore (rows: {', '.join(changed)})"
        # the summary may have gained groups (e.g. the held-out zoo); width of the rows differs between versions
        payload["summary"] = summary(payload["models"])
        write_json(jpath, payload)
        write_markdown(payload, jpath.with_suffix(".md"))
        return 0
    test = load_dataset("fashion-mnist", "test")
    subset = sample_subset(load_dataset("fashion-mnist", "train"), ratio=0.05, seed=0) if args.method == "tsbd" \
        else None
    zoos = ZOO_ARGS.get(args.zoo, [args.zoo])
    only = set(args.only.split(",")) if args.only else None
    models: list[dict[str, Any]] = []
    done: set[tuple[str, str]] = set()
    command = "python benchmarks/auto_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    kept: dict[str, Any] = {}
    if args.append and jpath.is_file():
        prev = json.loads(jpath.read_text())
        if prev.get("eval_limit") != args.eval_limit:
            raise SystemExit("--append: the existing results used another eval limit")
        models = prev["models"]
        done = {(m["zoo"], m["model"]) for m in models}
        command = prev["command"] + ", then " + command
        kept = {k: prev[k] for k in ("note",) if k in prev}  # a hand-written reading stays with its rows
    for zoo in zoos:
        for name in ZOOS[zoo][1]:
            if (only is not None and name not in only) or (zoo, name) in done:
                continue
            row = run_model(args.method, zoo, name, test, subset, args.eval_limit or None, args.repeats,
                            args.suspect_rule, guard)
            if row is None:
                continue
            models = [m for m in models if (m["zoo"], m["model"]) != (zoo, name)] + [row]
            payload = {"method": args.method, "command": command.strip(), "eval_limit": args.eval_limit,
                       "threads": args.threads, "models": models, "summary": summary(models),
                       "environment": environment(), "oracle_note": ORACLE_NOTE, **kept}
            write_json(jpath, payload)
            write_markdown(payload, jpath.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
