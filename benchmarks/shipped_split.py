"""OTBR's shipped automatic γ on every zoo model, split by whether any γ of the grid removes the backdoor.

The DER gap to the oracle mixes two kinds of model. Where some γ of the grid removes the backdoor (the ORACLE
choice leaves ≤ 10 % ASR), the gap says how close the data-free choice came to a working defense. Where none does,
every candidate keeps the backdoor and the gap only measures how much clean accuracy the choice spent failing.
This script reads stored automatic-γ runs (no model is run; a later file's row replaces an earlier one, so the warp
override's re-runs replace the stratified rows of the models it changes), applies the shipped rule to each row — the
stored estimates toward the row's suspect with the collapse guard, :func:`auto_bench.guarded_choice`, which on rows
run with the guard is the as-run choice — and splits the gaps that way. The split reads the oracle's ASR: the groups are
ORACLE-defined, for reading only; nothing is chosen from them.

Usage:
    python benchmarks/shipped_split.py [--runs auto-otbr-stratified-fmnist,auto-otbr-stratified-guard-fmnist,...]
        [--out STEM]   # --runs without the warp file: the stratified rule alone (auto-otbr-stratified-split-fmnist)

Writes ``benchmarks/results/auto-otbr-shipped-split-fmnist.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from auto_bench import COLLAPSE_LIMIT, guarded_choice, guarded_pick, zoos_from_ninth

from otbr.report import ORACLE_NOTE, markdown_table, write_json
from otbr.selection import OTBR_LEAN, REMOVAL_DROP, SYNTHETIC_CLEAN_SCALE, pick, within_collapse_limit

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = ("auto-otbr-stratified-fmnist,auto-otbr-stratified-guard-fmnist,auto-otbr-warp-guard-fmnist,"
        "auto-otbr-zoo17-fmnist,auto-otbr-zoo18-fmnist")
#: ASR (%) at or below which a model counts as cleaned (the issue's "no attack left above 10 % ASR")
REMOVED = 10.0
#: clean accuracy (%) below which a candidate counts as collapsed: twice chance for ten classes
COLLAPSED = 20.0
#: zoos held out from the shipped rule (defined after, or with the rule that adopted it)
HELD_OUT = zoos_from_ninth("eighteenth")
#: zoos after the thirteenth (the last one seen when the removal reading was written)
LATER = HELD_OUT[HELD_OUT.index("fourteenth"):]
#: groups of the summary after the general ones, in order: a zoo alone (its label) or, as ``("before", zoo, label)``,
#: every row of the zoos before it (a new zoo needs one entry here and in ``HELD_OUT``)
ZOO_GROUPS: tuple[tuple[str, str] | tuple[str, str, str], ...] = (
    ("before", "twelfth", "the first eleven zoos (the rows before the twelfth)"),
    ("before", "fourteenth", "the first thirteen zoos (the rows before the fourteenth)"),
    ("twelfth", "twelfth zoo"),
    ("thirteenth", "thirteenth zoo (the pre-registered test of the limit 62 %)"),
    ("fourteenth", "fourteenth zoo"),
    ("fifteenth", "fifteenth zoo"),
    ("sixteenth", "sixteenth zoo (the pre-registered test of the warp override)"),
    ("before", "seventeenth", "the first sixteen zoos (the rows before the seventeenth)"),
    ("seventeenth", "seventeenth zoo (SIG at other frequencies and amplitude; held out)"),
    ("eighteenth", "eighteenth zoo (held out; defined for TSBD's recall suspect)"),
)
COLUMNS = ["zoo", "model", "target", "suspect", "auto", "auto_drop_est", "auto_acc", "auto_asr", "auto_der", "oracle",
           "oracle_acc",
           "oracle_asr", "oracle_der", "gap", "gap_no_guard", "gap_limit_62", "deployable_oracle", "gap_deployable"]
SUMMARY = ["group", "n", "mean_gap", "worst_gap", "auto_is_oracle", "auto_removes", "mean_gap_no_guard",
           "worst_gap_no_guard", "mean_gap_fixed", "worst_gap_fixed", "mean_gap_limit_62", "worst_gap_limit_62",
           "mean_gap_deployable", "worst_gap_deployable"]
#: the second reading's oracle only takes candidates keeping at least this share of the original's clean accuracy:
#: the DER oracle otherwise rewards a model no user would deploy (SIG-t8's at 24.6 %, VGG BadNets-t6's at 11.4 %).
#: Half was named in the closing note of 2026-11-24 (session 19), before any gap was computed with it.
DEPLOYABLE = 0.5
#: the collapse limit (percent) pre-registered against the shipped one with the thirteenth zoo (``zoo.py``)
ALT_LIMIT = 62.0
#: the rule's own family, re-scored over every stored row: collapse limits (percent; ``None``: no guard) × leans
#: (estimated-DER points); the shipped pair is 70 × 6.5
FAMILY_LIMITS: tuple[float | None, ...] = (40.0, 50.0, 55.0, 60.0, 62.0, 65.0, 70.0, 75.0, 80.0, 90.0, None)
FAMILY_LEANS = (0.0, 3.5, 6.5, 10.0)
FAMILY = ["collapse_limit", "lean", "mean_gap", "worst_gap", "auto_is_oracle", "shipped"]
#: a wider family over the same stored signals, every combination fitted on the rows (ORACLE): the clean term's scale
#: (the shipped 0.7 calibrates synthetic disagreement to clean loss), the lean (points), the collapse limit (percent;
#: ``None``: none), an evidence floor (percent of estimated backdoor drop; below it on every kept candidate, the
#: smallest γ; ``None``: none) and a saturation stop (percent; the lean goes no further than the first γ from the best
#: estimate on whose estimated drop reaches it; ``None``: none). 8 × 10 × 6 × 6 × 3 = 8 640 rules, the shipped one
#: among them (0.7, 6.5, 70, ``None``, ``None``); the best fits lie inside the ranges (scale 2.5, lean 30), not at an
#: edge
WIDE_SCALES = (0.5, 0.7, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0)
WIDE_LEANS = (0.0, 3.5, 6.5, 10.0, 13.0, 20.0, 25.0, 30.0, 35.0, 50.0)
WIDE_LIMITS: tuple[float | None, ...] = (40.0, 50.0, 60.0, 70.0, 80.0, None)
WIDE_EVIDENCE: tuple[float | None, ...] = (None, 10.0, 20.0, 40.0, 60.0, 80.0)
WIDE_SATURATION: tuple[float | None, ...] = (None, 95.0, 99.0)
WIDE = ["group", "models", "rules", "meeting_goal", "shipped_mean", "shipped_worst", "best_mean", "its_worst",
        "its_rule", "best_worst", "its_mean", "its_rule_by_worst"]
REMOVAL = ["group", "reading", "models", "removed", "kept"]


def load_runs(stems: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The rows of the comma-separated OTBR result stems, by ``(zoo, model)``; a later run's row wins. A missing
    file or a TSBD run is a ``ValueError``."""
    models: dict[tuple[str, str], dict[str, Any]] = {}
    for stem in stems.split(","):
        path = RESULTS / f"{stem}.json"
        if not path.is_file():
            raise ValueError(f"no result file {path.name} in benchmarks/results")
        run = json.loads(path.read_text())
        if run.get("method") != "otbr":
            raise ValueError(f"{path.name} is not an OTBR run")
        models.update({(m["zoo"], m["model"]): m for m in run["models"]})
    return models


def shipped_rows(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per OTBR model: the shipped rule's choice and the oracle's, measured (ORACLE) columns beside them."""
    out = []
    for m in models:
        auto = guarded_choice(m)
        if auto is None:
            raise ValueError(f"{m['zoo']}:{m['model']}: no stored synthetic disagreement to apply the guard to")
        o = m["oracle"]
        out.append({"zoo": m["zoo"], "model": m["model"], "target": m["target"], "suspect": m["suspected_target"],
                    "auto": auto["value"], "auto_drop_est": auto["backdoor_drop_est"], "auto_acc": auto["acc"],
                    "auto_asr": auto["asr"], "auto_der": auto["der"],
                    "oracle": o["value"], "oracle_acc": o["acc"], "oracle_asr": o["asr"], "oracle_der": o["der"],
                    "gap": round(o["der"] - auto["der"], 2),
                    # the same suspect and estimates without the collapse guard (the stratified rule before it)
                    "gap_no_guard": round(o["der"] - guarded_choice(m, None)["der"], 2),
                    # the same with the pre-registered alternative limit
                    "gap_limit_62": round(o["der"] - guarded_choice(m, ALT_LIMIT)["der"], 2),
                    # the published fixed γ = 5 %
                    "gap_fixed": None if not m.get("fixed") else round(o["der"] - m["fixed"]["der"], 2),
                    **deployable_gap(m, auto["der"])})
    return out


def deployable_gap(m: dict[str, Any], auto_der: float, share: float = DEPLOYABLE) -> dict[str, Any]:
    """The second reading: the best DER among the candidates keeping ≥ ``share`` of the original's clean accuracy
    (ORACLE), and the automatic choice's gap to it — negative where the choice is a candidate that oracle leaves out.
    A row with no such candidate keeps the full oracle.

    Example:
        >>> m = {"original": {"acc": 90.0}, "oracle": {"value": 0.2, "der": 70.0},
        ...      "candidates": [{"value": 0.02, "acc": 80.0, "der": 50.0}, {"value": 0.2, "acc": 20.0, "der": 70.0}]}
        >>> deployable_gap(m, 45.0)
        {'deployable_oracle': 0.02, 'gap_deployable': 5.0}
    """
    kept = [c for c in m["candidates"] if c["acc"] >= share * m["original"]["acc"]]
    best = max(kept, key=lambda c: c["der"]) if kept else m["oracle"]
    return {"deployable_oracle": best["value"], "gap_deployable": round(best["der"] - auto_der, 2)}


def _zoo_rows(rows: list[dict[str, Any]], *key: str) -> list[dict[str, Any]]:
    """The rows of one zoo (``key`` = its name) or of every zoo before one (``key`` = ``"before", name``).

    Example:
        >>> rows = [{"zoo": "main"}, {"zoo": "twelfth"}, {"zoo": "fourteenth"}]
        >>> len(_zoo_rows(rows, "twelfth")), len(_zoo_rows(rows, "before", "fourteenth"))
        (1, 2)
    """
    if key[0] == "before":
        later = HELD_OUT[HELD_OUT.index(key[1]):]
        return [r for r in rows if r["zoo"] not in later]
    return [r for r in rows if r["zoo"] == key[0]]


def groups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and worst gap, hits and cleaned models for all rows and for the ORACLE-defined groups."""
    removable = [r for r in rows if r["oracle_asr"] <= REMOVED]
    usable = [r for r in removable if r["oracle_acc"] >= COLLAPSED]
    def held(last: int) -> list[dict[str, Any]]:  # (empty unless every zoo of the span has rows: no mislabelled group)
        if not set(HELD_OUT[:last]) <= {r["zoo"] for r in rows}:
            return []
        return [r for r in rows if r["zoo"] in HELD_OUT[:last]]

    parts = (("all", rows),
             *((f"held out from the shipped rule ({HELD_OUT[0]} to {HELD_OUT[k - 1]})", held(k))
               for k in range(len(HELD_OUT), 2, -1)),
             (f"some γ removes the backdoor (oracle ASR ≤ {REMOVED:g} %)", removable),
             (f"… and the oracle's model is not collapsed (ACC ≥ {COLLAPSED:g} %)", usable),
             ("no γ removes it", [r for r in rows if r["oracle_asr"] > REMOVED]),
             *((g[-1], _zoo_rows(rows, *g[:-1])) for g in ZOO_GROUPS))
    out = []
    for label, g in parts:
        if g:
            gaps, loose = [r["gap"] for r in g], [r["gap_no_guard"] for r in g]
            out.append({"group": label, "n": len(g), "mean_gap": round(statistics.fmean(gaps), 2),
                        "worst_gap": round(max(gaps), 2), "auto_is_oracle": sum(r["auto"] == r["oracle"] for r in g),
                        "auto_removes": sum(r["auto_asr"] <= REMOVED for r in g),
                        "mean_gap_no_guard": round(statistics.fmean(loose), 2),
                        "worst_gap_no_guard": round(max(loose), 2),
                        **column_gaps([r.get("gap_fixed") for r in g], "fixed"),
                        **column_gaps([r.get("gap_limit_62") for r in g], "limit_62"),
                        **column_gaps([r.get("gap_deployable") for r in g], "deployable")})
    return out


def removal(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The report's removal reading (:func:`otbr.selection.removal_evidence`: the chosen candidate's estimated
    backdoor drop against :data:`~otbr.selection.REMOVAL_DROP`) against what happened (ORACLE: the choice's ASR ≤
    ``REMOVED``), over all rows, the held-out zoos and the fourteenth zoo (defined with this reading pre-registered)."""
    limit = 100 * REMOVAL_DROP
    last = [z for z in HELD_OUT if any(r["zoo"] == z for r in rows)][-1:] or ["-"]
    parts = (("all", rows), (f"held out ({HELD_OUT[0]} to {last[0]})", [r for r in rows if r["zoo"] in HELD_OUT]),
             ("the first thirteen zoos (seen when the reading was written)",
              [r for r in rows if r["zoo"] not in LATER]),
             *((f"{z} zoo (held out from the reading)", [r for r in rows if r["zoo"] == z]) for z in LATER))
    out = []
    for label, g in parts:
        for reading, keep in ((f"drop ≥ {limit:g} %: probably removed", lambda r: r["auto_drop_est"] >= limit),
                              (f"drop < {limit:g} %: not shown removed", lambda r: r["auto_drop_est"] < limit)):
            sel = [r for r in g if keep(r)]
            if g:
                out.append({"group": label, "reading": reading, "models": len(sel),
                            "removed": sum(r["auto_asr"] <= REMOVED for r in sel),
                            "kept": sum(r["auto_asr"] > REMOVED for r in sel)})
    return out


def family(models: list[dict[str, Any]], limits: tuple[float | None, ...] = FAMILY_LIMITS,
           leans: tuple[float, ...] = FAMILY_LEANS) -> list[dict[str, Any]]:
    """Mean and worst gap of every (collapse limit, lean) pair of the shipped rule's family over the stored rows, the
    suspect and estimates kept. Picking the pair from this table would be an ORACLE fit on these models: it says how
    far re-tuning the rule's two constants could take it, not what a new model would get."""
    out = []
    for limit in limits:
        for lean in leans:
            gaps = [m["oracle"]["der"] - guarded_pick(m["candidates"], limit, lean)["der"] for m in models]
            out.append({"collapse_limit": "none" if limit is None else limit, "lean": lean,
                        "mean_gap": round(statistics.fmean(gaps), 2), "worst_gap": round(max(gaps), 2),
                        "auto_is_oracle": sum(g <= 1e-9 for g in gaps),
                        "shipped": limit == COLLAPSE_LIMIT and lean == 100 * OTBR_LEAN})
    return out


def wide_pick(m: dict[str, Any], scale: float, lean: float, limit: float | None, evidence: float | None,
              saturation: float | None) -> dict[str, Any]:
    """The candidate one rule of the wider family picks from a row's stored averaged estimates.

    The estimated DER is re-weighted exactly: each set's estimate is ``(max(0, drop) − scale · disagreement + 100) / 2``
    and the stored one is their mean at the row's ``clean_scale``, so changing the scale moves it by ``(scale −
    clean_scale) / 2`` × the mean disagreement. The shipped rule is ``(0.7, 6.5, 70.0, None, None)``.

    Example:
        >>> m = {"clean_scale": 0.7, "candidates": [
        ...     {"value": 0.1, "estimated_der": 90.0, "backdoor_drop_est": 99.5, "clean_disagreement_est": 20.0},
        ...     {"value": 0.15, "estimated_der": 86.0, "backdoor_drop_est": 100.0, "clean_disagreement_est": 30.0}]}
        >>> [wide_pick(m, 0.7, lean, 70.0, None, sat)["value"] for lean, sat in ((0, None), (6.5, None), (6.5, 99))]
        [0.1, 0.15, 0.1]
        >>> wide_pick(m, 0.7, 6.5, 70.0, 100.5, None)["value"]  # no candidate reaches the evidence floor
        0.1
    """
    rows = sorted(m["candidates"], key=lambda c: c["value"])
    kept = within_collapse_limit(rows, limit, key="clean_disagreement_est")
    if evidence is not None and max(c["backdoor_drop_est"] for c in kept) < evidence:
        return rows[0]
    shift = (scale - m.get("clean_scale", SYNTHETIC_CLEAN_SCALE)) / 2
    rescored = [{**c, "estimated_der": c["estimated_der"] - shift * c["clean_disagreement_est"]} for c in kept]
    if saturation is not None:  # the lean may not pass the first γ from the best estimate on whose drop reaches it
        top = pick(rescored)
        full = [c["value"] for c in rescored if c["value"] >= top["value"] and c["backdoor_drop_est"] >= saturation
                and c["estimated_der"] >= top["estimated_der"] - lean - 1e-12]
        rescored = [c for c in rescored if not full or c["value"] <= full[0]]
    return pick(rescored, lean)


WideRule = tuple[float, float, float | None, float | None, float | None]
#: the shipped selection as a member of the wider family
SHIPPED_RULE: WideRule = (SYNTHETIC_CLEAN_SCALE, 100 * OTBR_LEAN, COLLAPSE_LIMIT, None, None)


def wide_gaps(models: list[dict[str, Any]]) -> dict[WideRule, list[float]]:
    """Every rule of the wider family (:data:`WIDE_SCALES` × … × :data:`WIDE_SATURATION`) → its DER gap per model."""
    import itertools

    return {rule: [m["oracle"]["der"] - wide_pick(m, *rule)["der"] for m in models]
            for rule in itertools.product(WIDE_SCALES, WIDE_LEANS, WIDE_LIMITS, WIDE_EVIDENCE, WIDE_SATURATION)}


def _fit(gaps: dict[WideRule, list[float]], rows: list[int]) -> WideRule:
    """The rule with the lowest mean gap over ``rows`` (then the lowest worst): an ORACLE fit on them."""
    return min(gaps, key=lambda r: (statistics.fmean(gaps[r][i] for i in rows), max(gaps[r][i] for i in rows)))


def wide_family(models: list[dict[str, Any]], gaps: dict[WideRule, list[float]] | None = None) -> dict[str, Any]:
    """The wider family scored over ``models`` (``gaps``: :func:`wide_gaps` of them, computed if not given): how many
    rules meet issue 7's goal (mean gap ≤ 1, worst ≤ 5), the shipped rule's score, and the best mean and the best worst
    any rule reaches with its rule — an ORACLE fit, a bound on what these stored signals allow, not a selector."""
    gaps = wide_gaps(models) if gaps is None else gaps
    scored = [(round(statistics.fmean(g), 2), round(max(g), 2), rule) for rule, g in gaps.items()]
    by_mean = min(scored, key=lambda r: (r[0], r[1]))
    by_worst = min(scored, key=lambda r: (r[1], r[0]))
    shipped = next(r for r in scored if r[2] == SHIPPED_RULE)
    return {"models": len(models), "rules": len(scored), "meeting_goal": sum(a <= 1 and w <= 5 for a, w, _ in scored),
            "shipped_mean": shipped[0], "shipped_worst": shipped[1], "best_mean": by_mean[0], "its_worst": by_mean[1],
            "its_rule": _rule_text(by_mean[2]), "best_worst": by_worst[1], "its_mean": by_worst[0],
            "its_rule_by_worst": _rule_text(by_worst[2])}


def leave_one_zoo_out(models: list[dict[str, Any]], gaps: dict[WideRule, list[float]]) -> dict[str, Any]:
    """Fitting the wider family as a selection procedure, scored out of sample: for each zoo, the rule fitted (lowest
    mean gap) on every other zoo's rows, applied to that zoo's. The mean and worst over all models say what re-tuning
    on stored zoos would give a new one; the fitted bound of :func:`wide_family` does not.

    Example:
        >>> ms = [{"zoo": "a"}, {"zoo": "b"}]
        >>> r = leave_one_zoo_out(ms, {(1, 0, None, None, None): [0.0, 9.0], (2, 0, None, None, None): [4.0, 1.0]})
        >>> r["mean_gap"], r["worst_gap"], [z["rule"][:7] for z in r["zoos"]]  # a's fit is b's best rule, and back
        (6.5, 9.0, ['scale 2', 'scale 1'])
    """
    out: list[float | None] = [None] * len(models)
    zoos = []
    for zoo in dict.fromkeys(m["zoo"] for m in models):
        rows = [i for i, m in enumerate(models) if m["zoo"] == zoo]
        rule = _fit(gaps, [i for i, m in enumerate(models) if m["zoo"] != zoo])
        for i in rows:
            out[i] = gaps[rule][i]
        zoos.append({"zoo": zoo, "rule": _rule_text(rule),
                     "gaps": ", ".join(f"{models[i].get('model', i)} {gaps[rule][i]:.2f}" for i in rows)})
    done = [g for g in out if g is not None]
    return {"mean_gap": round(statistics.fmean(done), 2), "worst_gap": round(max(done), 2), "zoos": zoos}


def wide_groups(models: list[dict[str, Any]]) -> dict[str, Any]:
    """:func:`wide_family` over all rows, the held-out zoos, and the rows whose suspect is the real target (an ORACLE
    group: what the rule could do were the suspect always right), and :func:`leave_one_zoo_out` over all rows."""
    gaps = wide_gaps(models)
    parts = (("all", range(len(models))),
             (f"held out ({HELD_OUT[0]} to {HELD_OUT[-1]})", [i for i, m in enumerate(models) if m["zoo"] in HELD_OUT]),
             ("suspect right (ORACLE group)",
              [i for i, m in enumerate(models) if m["suspected_target"] == m["target"]]))
    out = [{"group": label, **wide_family([models[i] for i in idx], {r: [g[i] for i in idx] for r, g in gaps.items()})}
           for label, idx in parts if idx]
    return {"groups": out, "leave_one_zoo_out": leave_one_zoo_out(models, gaps)}


def _rule_text(rule: tuple[Any, ...]) -> str:
    """``scale 0.7, lean 6.5, limit 70, evidence -, saturation -``."""
    names = ("scale", "lean", "limit", "evidence", "saturation")
    return ", ".join(f"{n} {'-' if v is None else f'{v:g}'}" for n, v in zip(names, rule, strict=True))


def column_gaps(gaps: list[float | None], name: str) -> dict[str, float | None]:
    """``mean_gap_NAME`` and ``worst_gap_NAME`` of one gap column (``None`` unless every row has it).

    Example:
        >>> column_gaps([1.0, 3.0], "fixed"), column_gaps([1.0, None], "fixed")["mean_gap_fixed"]
        ({'mean_gap_fixed': 2.0, 'worst_gap_fixed': 3.0}, None)
    """
    if not gaps or any(v is None for v in gaps):
        return {f"mean_gap_{name}": None, f"worst_gap_{name}": None}
    return {f"mean_gap_{name}": round(statistics.fmean(gaps), 2), f"worst_gap_{name}": round(max(gaps), 2)}


def clean_estimate(models: list[dict[str, Any]]) -> dict[str, Any]:
    """How far the selector's data-free clean term (``clean_drop_est``: the synthetic disagreement × the clean scale)
    is from the real relative loss of clean accuracy, ``100 · (ACC_original − ACC) / ACC_original``, over every
    candidate of every row (ORACLE: the real loss reads the clean test set). ``otbr defend otbr`` quotes the median
    and 90th-percentile absolute errors beside its estimate (``otbr.selection.CLEAN_ESTIMATE_ERROR``)."""
    est, real = [], []
    for m in models:
        base = m["original"]["acc"]
        for c in m["candidates"]:
            est.append(c["clean_drop_est"])
            real.append(100 * (base - c["acc"]) / base)
    err = sorted(abs(r - e) for e, r in zip(est, real, strict=True))
    return {"candidates": len(err), "median_abs_error": round(statistics.median(err), 1),
            "p90_abs_error": round(err[int(0.9 * len(err))], 1),
            "mean_error": round(statistics.fmean(r - e for e, r in zip(est, real, strict=True)), 2),
            "correlation": round(statistics.correlation(est, real), 3)}


def write_markdown(p: dict[str, Any], path: Path) -> None:
    rows = sorted(p["rows"], key=lambda r: -r["gap"])
    lines = ["# OTBR's shipped automatic γ, split by whether the grid can remove the backdoor (Fashion-MNIST zoos)",
             "", f"Generated by `{p['command']}` from the stored runs {', '.join(f'`{r}`' for r in p['runs'])} "
             "(no model run here).", "",
             f"**{ORACLE_NOTE}** Every measured column, and the groups themselves (they read the oracle's ASR and "
             "ACC), are: they explain the gap, nothing is chosen from them.", "",
             "The shipped rule: the stratified suspect with the collapse guard "
             f"({COLLAPSE_LIMIT:g} % synthetic disagreement), three synthetic sets, its lean; re-made from each "
             "row's stored estimates, which on rows run with the guard is the as-run choice. `*_no_guard`: the same "
             "suspect and estimates without the guard (the stratified rule before it); `*_fixed`: the published "
             f"fixed γ = 5 %; `*_limit_62`: the collapse limit {ALT_LIMIT:g} % pre-registered with the thirteenth zoo; "
             f"`*_deployable`: a second reading of the gap, to the best DER among the candidates that keep at least "
             f"{DEPLOYABLE:.0%} of the original's clean accuracy (`deployable_oracle`; the DER oracle otherwise "
             "rewards a model no user would deploy; negative where the choice is one it leaves out) — ORACLE too, and "
             "not the issue's measure. "
             "`auto_removes`: models "
             f"on which the automatic choice leaves ≤ {REMOVED:g} % ASR. Issue 7's goal is a mean gap ≤ 1 and a "
             "worst ≤ 5 over all models (the first row); the other rows only say where the gap comes from.", "",
             "## Summary", "", markdown_table(p["summary"], SUMMARY), "",
             "## The clean estimate", "",
             "The selector's data-free clean term against the real relative loss of clean accuracy (ORACLE), over "
             "every candidate of these rows: "
             + (lambda c: f"{c['candidates']} candidates, correlation {c['correlation']}, median absolute error "
                          f"{c['median_abs_error']} points, 90th percentile {c['p90_abs_error']}, mean error (real "
                          f"− estimate) {c['mean_error']:+}. `otbr defend otbr` quotes the first two beside its "
                          "estimate.")(p["clean_estimate"]) if p.get("clean_estimate") else "(not recorded)", "",
             *removal_lines(p), *family_lines(p), *wide_lines(p), "## Per model (largest gap first)", "",
             markdown_table(rows, COLUMNS), ""]
    path.write_text("\n".join(lines))


def removal_lines(p: dict[str, Any]) -> list[str]:
    """The Markdown section of :func:`removal` (none for payloads made before it)."""
    if not p.get("removal"):
        return []
    return ["## The removal reading against what happened (ORACLE)", "",
            "`otbr defend otbr` tells the user, with no data, whether its choice probably removed the backdoor: the "
            f"chosen γ's estimated backdoor drop (`auto_drop_est`) against {100 * REMOVAL_DROP:g} % (one minus the "
            f"{REMOVED:g} % ASR that counts as removed here; not fitted). `removed`/`kept`: the choice's real ASR "
            f"≤ / > {REMOVED:g} % (ORACLE). The notes quote the first thirteen zoos' counts; the fourteenth zoo was "
            "defined with this reading pre-registered.", "", markdown_table(p["removal"], REMOVAL), ""]


def _listed(values: tuple[float | None, ...]) -> str:
    """``none, 10, 20`` (``None`` read as none)."""
    return ", ".join("none" if v is None else f"{v:g}" for v in values)


def wide_lines(p: dict[str, Any]) -> list[str]:
    """The Markdown section of :func:`wide_groups` (none for payloads made before it)."""
    if not p.get("wide"):
        return []
    lozo, shipped = p["wide"]["leave_one_zoo_out"], p["wide"]["groups"][0]
    return ["## A wider family, fitted on these models (ORACLE bound)", "",
            f"Every combination of the clean term's scale ({_listed(WIDE_SCALES)}), the lean "
            f"({_listed(WIDE_LEANS)} points), the collapse limit "
            f"({_listed(WIDE_LIMITS)} %), an evidence floor (when no "
            "kept candidate's estimated backdoor drop reaches it, the smallest γ: "
            f"{_listed(WIDE_EVIDENCE)} %) and a saturation stop (the "
            "lean goes no further than the first γ at or above the best estimate whose estimated drop reaches it: "
            f"{_listed(WIDE_SATURATION)} %), applied to the same stored "
            "estimates (`wide_pick`). `meeting_goal`: rules with mean gap ≤ 1 and worst ≤ 5 on the group. Picking "
            "a rule here reads every model's poisoned test set: the table bounds what these data-free signals allow "
            "on the models they would be fitted to.", "",
            markdown_table(p["wide"]["groups"], WIDE), "",
            "**Out of sample** (`leave_one_zoo_out`): the rule fitted (lowest mean gap) on every other zoo, applied to "
            f"the zoo left out, over all models: mean gap {lozo['mean_gap']}, worst {lozo['worst_gap']}, against the "
            f"shipped rule's {shipped['shipped_mean']} / {shipped['shipped_worst']} on the same models. Re-tuning this "
            "family on the stored zoos is a selection procedure too, and this is what it would give a new zoo.", "",
            markdown_table(lozo["zoos"], ["zoo", "rule", "gaps"]), ""]


def family_lines(p: dict[str, Any]) -> list[str]:
    """The Markdown section of :func:`family` (none for payloads made before it)."""
    if not p.get("family"):
        return []
    best = min(p["family"], key=lambda r: (r["mean_gap"], r["worst_gap"]))
    return ["## The rule's own family, re-tuned on these models (ORACLE fit)", "",
            "The same suspect and stored estimates, with every pair of collapse limit (percent of synthetic "
            "disagreement; `none`: no guard) and lean (estimated-DER points) below; `shipped` marks the default. "
            "Choosing a pair from this table reads the poisoned test set of every model in it: it bounds what "
            f"re-tuning the two constants could do here, no more. Best pair: limit {best['collapse_limit']}, lean "
            f"{best['lean']:g} — mean gap {best['mean_gap']}, worst {best['worst_gap']}.", "",
            markdown_table(p["family"], FAMILY), ""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=RUNS, help="comma-separated result stems in benchmarks/results (OTBR runs)")
    ap.add_argument("--out", default="auto-otbr-shipped-split-fmnist")
    args = ap.parse_args(argv)
    try:
        models = load_runs(args.runs)
        rows = shipped_rows(list(models.values()))
    except ValueError as e:
        ap.error(str(e))
    payload = {"command": "python benchmarks/shipped_split.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip(),
               "runs": args.runs.split(","), "summary": groups(rows), "rows": rows,
               "clean_estimate": clean_estimate(list(models.values())), "removal": removal(rows),
               "family": family(list(models.values())), "wide": wide_groups(list(models.values())),
               "oracle_note": ORACLE_NOTE}
    out = RESULTS / f"{args.out}.json"
    write_json(out, payload)
    write_markdown(payload, out.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
