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
from otbr.selection import OTBR_LEAN, REMOVAL_DROP

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
             *removal_lines(p), *family_lines(p), "## Per model (largest gap first)", "",
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
               "family": family(list(models.values())),
               "oracle_note": ORACLE_NOTE}
    out = RESULTS / f"{args.out}.json"
    write_json(out, payload)
    write_markdown(payload, out.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
