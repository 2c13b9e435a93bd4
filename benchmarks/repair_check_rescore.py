"""Re-score the repair's backdoor check with other easy-class margins, from the check rates the repair runs stored.

``otbr.repair.backdoor_check`` flags a class the pruning suppressed (its trigger rate fell by the tolerance, 0.25,
from the original to the pruned model) when the repair made it easier to trigger again (rose by the tolerance); a
class other than the suspect only when it also ends a margin above its rate on the original — the exception for
naturally easy classes, whose ease the distillation restores. The margin was the tolerance itself, 0.25, until
2026-11-24; 0.15 (``otbr.repair.EASY_MARGIN``) since it met the rule pre-registered with the fifteenth zoo. A flagged
repair returns the pruned model. Every stored repair row records the three scans' per-class rates, so another
margin can be applied with no model run: where it flags, the outcome is the stored pruned model's (what a flagged
repair returned when the margin was chosen; since 2026-11-25 OTBR returns its fused model instead, which
``repair_join.py --fused-fallback`` reads). The scores read
the poisoned test set (ORACLE); nothing here is chosen from them except under the rule pre-registered with the
fifteenth zoo (``benchmarks/zoo.py``).

Usage:
    python benchmarks/repair_check_rescore.py [--files repair-gpu-fmnist,...]

Writes ``benchmarks/results/repair-check-rescore-fmnist.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from otbr.repair import check_flags
from otbr.report import ORACLE_NOTE, markdown_table, write_json

RESULTS = Path(__file__).resolve().parent / "results"
FILES = "repair-gpu-fmnist,repair-heldout-shipped-cpu-fmnist,repair-heldout2-shipped-cpu-fmnist"
#: the margin the stored runs were made with first, then the one pre-registered with the fifteenth zoo (now the
#: default), then two more for reading
MARGINS = (0.25, 0.15, 0.10, 0.0)
SHIPPED, PRE_REGISTERED = 0.25, 0.15
#: a stored check without a ``margin`` entry was made before it existed, with the tolerance as its margin
AS_RUN_DEFAULT = 0.25
#: ASR (%) above which a model counts as still backdoored (the issue's 10 %)
REMOVED = 10.0
SUMMARY = ["runs", "margin", "models", "mean_der", "mean_acc_loss", "above_10", "flipped"]


def flags(check: dict[str, Any], margin: float) -> list[int]:
    """The classes ``backdoor_check`` flags on its stored rates with this easy-class margin (its tolerance kept):
    :func:`otbr.repair.check_flags`, the check's own decision.

    Example:
        >>> c = {"tolerance": 0.25, "suspect": 2, "rate_original": [0.34, 0.6, 0.0], "rate_before": [0.0, 0.1, 0.0],
        ...      "rate_after": [0.53, 0.9, 0.0]}
        >>> flags(c, 0.25), flags(c, 0.15)
        ([1], [0, 1])
    """
    sus = check.get("suspect")
    return check_flags(check["rate_before"], check["rate_after"], tolerance=check["tolerance"],
                       rate_original=check["rate_original"],
                       suspects=[] if sus is None else [sus] if isinstance(sus, int) else sus, margin=margin)


def model_rows(files: list[str]) -> list[dict[str, Any]]:
    """One row per repaired model of the files: its stored repair and pruning results and the check's rates."""
    rows = []
    for name in files:
        path = RESULTS / f"{name}.json"
        if not path.is_file():
            raise ValueError(f"no result file {path.name} in benchmarks/results")
        series: dict[tuple[str, str], dict[str, Any]] = {}
        for r in json.loads(path.read_text())["rows"]:
            series.setdefault((r.get("zoo", "main"), r["model"]), {})[r["series"]] = r
        for (zoo, model), s in series.items():
            rep, pruned = s.get("repair"), s.get("prune")
            check = ((rep or {}).get("repair_info") or {}).get("check")
            if rep is None or pruned is None or not check or "rate_original" not in check:
                continue
            rows.append({"file": name, "zoo": zoo, "model": model, "repair": rep, "prune": pruned, "check": check,
                         "reverted": bool(rep["repair_info"].get("reverted"))})
    return rows


def outcome(row: dict[str, Any], margin: float) -> dict[str, Any]:
    """The model a margin would return: the stored repair's, or the pruned model's where the check would flag (a
    repair the check reverted as run stays reverted: its stored row already is the pruned model's)."""
    if row["reverted"] or not flags(row["check"], margin):
        return row["repair"]
    return row["prune"]


def summarise(rows: list[dict[str, Any]], label: str) -> list[dict[str, Any]]:
    out = []
    for m in MARGINS:
        res = [outcome(r, m) for r in rows]
        flipped = [r["model"] for r, o in zip(rows, res, strict=True) if o is not r["repair"]]
        out.append({"runs": label, "margin": m, "models": len(rows),
                    "mean_der": round(statistics.fmean(o["der"] for o in res), 2),
                    "mean_acc_loss": round(statistics.fmean(o["acc_loss"] for o in res), 2),
                    "above_10": sum(o["asr"] > REMOVED for o in res), "flipped": ", ".join(flipped) or "-"})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", default=FILES, help="comma-separated repair result stems in benchmarks/results")
    args = ap.parse_args(argv)
    try:
        rows = model_rows(args.files.split(","))
    except ValueError as e:
        ap.error(str(e))
    # each run's own margin must give back its stored decision, or the re-scoring is not the check's
    mismatch = [f"{r['zoo']}:{r['model']}" for r in rows
                if flags(r["check"], r["check"].get("margin", AS_RUN_DEFAULT)) != r["check"]["flagged"]]
    if mismatch:
        raise SystemExit(f"the re-scoring disagrees with the stored check on {mismatch}")
    groups = [("all stored runs", rows),
              *((f"`{f}`", [r for r in rows if r["file"] == f]) for f in args.files.split(",")),
              ("fifteenth zoo (the pre-registered test)", [r for r in rows if r["zoo"] == "fifteenth"])]
    summary = [s for label, g in groups if g for s in summarise(g, label)]
    changes = [{"file": r["file"], "zoo": r["zoo"], "model": r["model"], "target": r["repair"].get("target"),
                "suspect": r["repair"].get("suspect"), "margin": m, "flags": str(flags(r["check"], m)),
                "der_shipped": r["repair"]["der"], "der": outcome(r, m)["der"], "asr": outcome(r, m)["asr"]}
               for r in rows for m in MARGINS[1:] if outcome(r, m) is not outcome(r, SHIPPED)]
    payload = {"command": "python benchmarks/repair_check_rescore.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip(),
               "files": args.files.split(","), "summary": summary, "changes": changes, "oracle_note": ORACLE_NOTE}
    out = RESULTS / "repair-check-rescore-fmnist.json"
    write_json(out, payload)
    lines = ["# The repair's backdoor check re-scored with other easy-class margins (Fashion-MNIST zoos)", "",
             f"Generated by `{payload['command']}` from the stored repair runs "
             f"{', '.join(f'`{f}`' for f in payload['files'])} (no model run here).", "",
             f"**{ORACLE_NOTE}** DER, ACC loss and ASR read the poisoned test set. The stored runs were made with the "
             f"margin {SHIPPED:g} (the check's tolerance); at it the re-scoring gives back every stored flag "
             "(checked). "
             "`flipped`: models whose outcome changes from the stored repair to its pruned model. The fifteenth zoo "
             f"was defined with a pre-registered rule: the margin {PRE_REGISTERED:g} replaces {SHIPPED:g} if no model "
             "of that zoo scores a lower DER under it. Outcome: no outcome of that zoo changes, the rule is met, and "
             f"{PRE_REGISTERED:g} is the default since (`otbr.repair.EASY_MARGIN`).", "", "## Summary", "",
             markdown_table(summary, SUMMARY), "",
             "## Changed outcomes", "",
             markdown_table(changes, list(changes[0])) if changes else "(none)", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
