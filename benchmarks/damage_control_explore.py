"""DEVELOPMENT probe (ORACLE): is the automatic γ's backdoor drop a backdoor drop, or damage to the whole model?

OTBR's automatic γ estimates each candidate's backdoor drop as the relative fall of a trigger reverse-engineered
toward the suspected target (:func:`otbr.selection.probe_drops`). Pruning a model hard enough damages everything,
and a damaged model follows *any* small patch less. Where no γ of the grid removes the backdoor (SIG, some blended
triggers), the rule then reads that damage as a backdoor drop and over-prunes: SIG-t4 in the eleventh zoo took
γ 0.2 at ACC 33 % while the backdoor stayed (``auto-otbr-shipped-split-fmnist.md``).

A control tells the two apart. For every class c, a patch trigger toward c is reverse-engineered on the original
(the probe's own settings: synthetic sources of the other classes, 5 % area) and its rate measured on each fused
candidate. The suspect's drop beyond the median drop of the other classes is the part pruning did to the suspect
alone. This probe prints, per model and γ, the suspect's drop, the control, the real target's drop (ORACLE), and
the choice the shipped rule would make from its stored estimates (``auto-otbr-stratified*-fmnist.json``) with the
backdoor term replaced by the suspect's drop beyond the control (one synthetic set here, three in the stored
terms; for reading only). Every measured column is scored on the poisoned test set: reading a rule off it is an
ORACLE choice for these models.

Usage:
    python benchmarks/damage_control_explore.py --models eleventh:sig-t4,main:badnets [--threads 1] [--out STEM]

Writes ``benchmarks/results/damage-control-explore-fmnist.{md,json}``.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from auto_bench import COLLAPSE_LIMIT, guarded_choice, guarded_pick
from explore_cli import heading, parser, run_probe, stored_rows_build
from zoo import FOLDERS

from otbr.defenses.otbr import GAMMA_GRID, OTBR
from otbr.metrics import predict
from otbr.models import load_model
from otbr.report import markdown_table
from otbr.scans import reverse_trigger, trigger_rate
from otbr.selection import PROBE_MIN_RATE
from otbr.synthesis import synthesize

ROOT = Path(__file__).resolve().parent
COLUMNS = ["gamma", "suspect_drop", "control_drop", "target_drop", "stored_backdoor_drop", "clean_drop",
           "estimated_der", "controlled_estimate", "der", "acc", "asr", "pick"]


def class_drops(original: torch.nn.Module, candidates: dict[float, torch.nn.Module], x: torch.Tensor,
                ref: torch.Tensor, num_classes: int) -> dict[int, dict[float, float] | None]:
    """Per class: the relative fall of its patch trigger's rate on each candidate (``None`` when the original
    follows it on fewer than PROBE_MIN_RATE of the sources, as the probe's own rule)."""
    out: dict[int, dict[float, float] | None] = {}
    for c in range(num_classes):
        src = x[ref != c]
        mask, pattern = reverse_trigger(original, src, c, kind="patch", budget=0.05, alpha=0.05, steps=100, seed=0)
        base = trigger_rate(original, src, mask, pattern, c)
        out[c] = None if base < PROBE_MIN_RATE else {
            g: 1.0 - trigger_rate(m, src, mask, pattern, c) / base for g, m in candidates.items()}
    return out


def probe(zoo: str, name: str, stored: dict[str, Any]) -> dict[str, Any]:
    model, meta = load_model(ROOT.parent / FOLDERS[zoo] / f"{name}.safetensors")
    model.eval()
    candidates = {g: fused for g, _, fused in OTBR(input_shape=meta.input_shape, num_classes=meta.num_classes,
                                                   progress=False).sweep(model, GAMMA_GRID)}
    syn = synthesize(model, 256, meta.input_shape, num_classes=meta.num_classes, steps=100, seed=0, progress=False)
    drops = class_drops(model, candidates, syn.x, predict(model, syn.x), meta.num_classes)
    suspect, target = stored["suspected_target"], stored["target"]
    rows = []
    for cand in stored["candidates"]:
        g = float(cand["value"])
        others = [d[g] for c, d in drops.items() if c != suspect and d is not None]
        control = 100 * statistics.median(others) if others else 0.0
        own = drops.get(suspect)
        adjusted = max(cand["backdoor_drop_est"] - control, 0.0)
        rows.append({"gamma": g, "suspect_drop": None if own is None else round(100 * own[g], 2),
                     "control_drop": round(control, 2),
                     "target_drop": None if drops.get(target) is None else round(100 * drops[target][g], 2),
                     "stored_backdoor_drop": cand["backdoor_drop_est"], "clean_drop": cand["clean_drop_est"],
                     "clean_disagreement_est": cand["clean_disagreement_est"],
                     "estimated_der": cand["estimated_der"],
                     "controlled_estimate": round((100 + adjusted - max(cand["clean_drop_est"], 0.0)) / 2, 2),
                     "der": cand["der"], "acc": cand["acc"], "asr": cand["asr"]})
    lean = 100 * stored.get("lean", 0.0)
    shipped = guarded_choice(stored)["value"]
    controlled = guarded_pick([{**r, "value": r["gamma"], "estimated_der": r["controlled_estimate"]} for r in rows],
                              COLLAPSE_LIMIT, lean)["value"]
    oracle = stored["oracle"]["value"]
    for r in rows:
        r["pick"] = " ".join(k for k, v in (("shipped", shipped), ("controlled", controlled), ("oracle", oracle))
                             if v == r["gamma"])
    der = {r["gamma"]: r["der"] for r in rows}
    return {"zoo": zoo, "model": name, "suspect": suspect, "target": target, "rows": rows,
            "classes_followed": sum(d is not None for d in drops.values()),
            "gap_shipped": round(der[oracle] - der[shipped], 2),
            "gap_controlled": round(der[oracle] - der[controlled], 2)}


def write_markdown(p: dict[str, Any], path: Path) -> None:
    lines = [*heading("Backdoor drop or damage? A control for the automatic γ's probe (ORACLE probe)", p,
                      "Every measured column (der, acc, asr, target_drop) and every gap here is."),
             "Drops are relative falls of a patch trigger's rate (%), reverse-engineered on the original toward the "
             "suspect, toward every other class (`control_drop`: their median) and toward the real target "
             "(`target_drop`, ORACLE). `stored_*`, `clean_drop` and `estimated_der`: the shipped rule's stored "
             "three-set estimates. `controlled_estimate`: the same with the backdoor term reduced by the control. "
             "`pick`: the shipped rule's choice (with its lean and guard), the controlled one's, and the oracle's.",
             "", markdown_table([{k: m[k] for k in ("zoo", "model", "suspect", "target", "classes_followed",
                                                    "gap_shipped", "gap_controlled")} for m in p["models"]],
                                ["zoo", "model", "suspect", "target", "classes_followed", "gap_shipped",
                                 "gap_controlled"]), ""]
    for m in p["models"]:
        lines += [f"## {m['zoo']}:{m['model']} (suspect {m['suspect']}, target {m['target']})", "",
                  markdown_table(m["rows"], COLUMNS), ""]
    lines += [f"Machine: {p['environment'].get('platform', '')}, {p['threads']} thread(s)."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)

    # the stored rows' DER, ACC and ASR were scored on the first 5000 test images
    return run_probe(ap, argv, "damage-control-explore-fmnist", "damage_control_explore.py", write_markdown,
                     stored_rows_build(ap, probe), eval_limit=5000)


if __name__ == "__main__":
    sys.exit(main())
