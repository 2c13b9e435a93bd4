"""DEVELOPMENT probe (ORACLE): read the automatic γ's probe only on the inputs a candidate still gets right.

OTBR's automatic γ estimates each candidate's backdoor drop as the relative fall of a trigger reverse-engineered on
the original toward the suspected target (:func:`otbr.selection.probe_drops`), measured on every synthetic source.
A candidate pruned hard enough damages everything: it no longer answers the sources as the original did, and a
damaged model sends a triggered input to the suspect less often for that reason alone. Where no γ of the grid
removes the backdoor, the rule then reads damage as a backdoor drop and over-prunes (SIG-t4: γ 0.2 at ACC 33 %,
``auto-otbr-shipped-split-fmnist.md``). The damage control tried before (``damage_control_explore.py``, the median
drop of other classes' patches) was too noisy to use.

The *conditional* reading asks the probe's question only where the candidate still works: among the sources on
which the candidate agrees with the original (un-triggered, after the probe's fixed augmentation), the share the
trigger sends to the suspect. A removed backdoor leaves that share near 0; a model that is merely damaged keeps it
where it was. The backdoor term becomes ``1 − conditional rate / rate on the original``; nothing else changes.

Per model this script rebuilds the fused candidates, inverts **one** synthetic set (seed 0, the selector's first),
reverse-engineers the selector's probe toward the stored suspect (patch 5 % and blend 0.1, the one the original
follows better, as :func:`otbr.selection.choose_for` does), and makes two single-set choices from the same set,
suspect and clean term (synthetic disagreement × 0.7), each with the shipped lean and collapse guard: the shipped
backdoor term and the conditional one. Their DER gaps are scored against the stored rows' oracle
(``auto-otbr-stratified*-fmnist.json``, first 5000 test images): ORACLE, for reading only.

**Reading rule, written before the run (2026-11-24).** Over every stored model, if the conditional choice's mean gap
is at least 0.3 below the shipped single-set choice's and its worst gap no higher, a twelfth zoo is defined with the
conditional term as the one alternative, to be adopted only if it wins there held out (three sets, product code);
otherwise it is dropped.

Usage:
    python benchmarks/conditional_probe_explore.py --models eleventh:sig-t4,main:badnets [--threads 1] [--out STEM]

Writes ``benchmarks/results/conditional-probe-explore-fmnist.{md,json}``.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from auto_bench import COLLAPSE_LIMIT, guarded_pick
from explore_cli import heading, parser, run_probe, stored_rows_build
from zoo import FOLDERS

from otbr.defenses.otbr import GAMMA_GRID, OTBR
from otbr.metrics import predict
from otbr.models import load_model
from otbr.report import markdown_table
from otbr.scans import augment, reverse_trigger, trigger_rate
from otbr.selection import OTBR_LEAN, PROBE_MIN_RATE, SYNTHETIC_CLEAN_SCALE
from otbr.synthesis import synthesize

ROOT = Path(__file__).resolve().parent
#: the probe's fixed augmentation seed and sizes, as :func:`otbr.selection.choose_for` uses them (set 0)
RATE_SEED = 12345
SIZES = {"patch": 0.05, "blend": 0.1}
COLUMNS = ["gamma", "clean_disagreement", "kept", "rate", "rate_conditional", "stored_rate", "estimated_der",
           "conditional_estimate", "der", "acc", "asr", "pick"]


def outcomes(model: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor,
             batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's classes on ``x`` (already augmented) without and with the trigger."""
    clean = predict(model, x, batch_size=batch_size)
    return clean, predict(model, (1 - mask) * x + mask * pattern, batch_size=batch_size)


def conditional_rate(clean: torch.Tensor, triggered: torch.Tensor, reference: torch.Tensor, suspect: int
                     ) -> tuple[float, float]:
    """The share of the sources on which ``clean`` agrees with ``reference`` (the original's classes) and, among
    them, the share the trigger sends to ``suspect`` (NaN when the candidate agrees on none).

    Example:
        >>> conditional_rate(torch.tensor([1, 2, 3, 3]), torch.tensor([0, 2, 0, 0]), torch.tensor([1, 2, 3, 1]), 0)
        (0.75, 0.6666666666666666)
    """
    kept = clean == reference
    if not bool(kept.any()):
        return 0.0, float("nan")
    return float(kept.double().mean()), float((triggered[kept] == suspect).double().mean())


def estimate(backdoor_drop: float, clean_drop: float) -> float:
    """The estimated DER in points (:func:`otbr.selection.estimated_der`, both terms in fractions)."""
    return round(100 * (1 + max(backdoor_drop, 0.0) - max(clean_drop, 0.0)) / 2, 2)


def probe(zoo: str, name: str, stored: dict[str, Any]) -> dict[str, Any]:
    model, meta = load_model(ROOT.parent / FOLDERS[zoo] / f"{name}.safetensors")
    model.eval()
    candidates = {g: fused for g, _, fused in OTBR(input_shape=meta.input_shape, num_classes=meta.num_classes,
                                                   progress=False).sweep(model, GAMMA_GRID)}
    syn = synthesize(model, 256, meta.input_shape, num_classes=meta.num_classes, steps=100, seed=0, progress=False)
    ref = predict(model, syn.x)
    suspect = stored["suspected_target"]
    src = syn.x[ref != suspect]
    triggers = {k: reverse_trigger(model, src, suspect, kind=k, budget=s, alpha=s, steps=100, seed=0)
                for k, s in SIZES.items()}
    base = {k: trigger_rate(model, src, *t, suspect, seed=RATE_SEED) for k, t in triggers.items()}
    kind = max(base, key=lambda k: base[k])
    mask, pattern = triggers[kind]
    x = augment(src, torch.Generator().manual_seed(RATE_SEED))  # the fixed view trigger_rate measures on
    ref_src, orig_trig = outcomes(model, x, mask, pattern)
    rate0 = float((orig_trig == suspect).double().mean())
    stored_rates = (stored.get("probe") or {}).get("rate", {})
    rest = ref != suspect
    der = {float(c["value"]): c for c in stored["candidates"]}
    rows = []
    for g, cand in candidates.items():
        clean, trig = outcomes(cand, x, mask, pattern)
        kept, rate_c = conditional_rate(clean, trig, ref_src, suspect)
        rate = float((trig == suspect).double().mean())
        dis = float((predict(cand, syn.x)[rest] != ref[rest]).double().mean())
        cdrop = SYNTHETIC_CLEAN_SCALE * dis
        found = rate0 >= PROBE_MIN_RATE
        bd = 1 - rate / rate0 if found else 0.0
        bd_c = (1 - rate_c / rate0) if found and rate_c == rate_c else bd
        rows.append({"gamma": g, "clean_disagreement": round(100 * dis, 2), "kept": round(100 * kept, 2),
                     "rate": round(rate, 4), "rate_conditional": round(rate_c, 4),
                     "stored_rate": stored_rates.get(str(g)), "estimated_der": estimate(bd, cdrop),
                     "conditional_estimate": estimate(bd_c, cdrop), "der": der[g]["der"], "acc": der[g]["acc"],
                     "asr": der[g]["asr"]})
    lean = 100 * OTBR_LEAN

    def choice(key: str) -> float:
        return guarded_pick([{**r, "value": r["gamma"], "estimated_der": r[key],
                              "clean_disagreement_est": r["clean_disagreement"]} for r in rows],
                            COLLAPSE_LIMIT, lean)["value"]

    shipped, conditional, oracle = choice("estimated_der"), choice("conditional_estimate"), stored["oracle"]["value"]
    for r in rows:
        r["pick"] = " ".join(k for k, v in (("shipped", shipped), ("conditional", conditional), ("oracle", oracle))
                             if v == r["gamma"])
    d = {r["gamma"]: r["der"] for r in rows}
    return {"zoo": zoo, "model": name, "suspect": suspect, "target": stored["target"], "kind": kind,
            "rate_original": round(rate0, 4), "stored_kind": (stored.get("probe") or {}).get("kind"),
            "rows": rows, "gap_shipped_one_set": round(d[oracle] - d[shipped], 2),
            "gap_conditional_one_set": round(d[oracle] - d[conditional], 2),
            "gap_shipped_three_sets": round(stored["oracle"]["der"] - guarded_pick(
                stored["candidates"], COLLAPSE_LIMIT, 100 * stored.get("lean", 0.0))["der"], 2)}


def summary(models: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and worst single-set gap of both readings, and the reading rule's verdict (see the docstring)."""
    if not models:
        return {}
    ship = [m["gap_shipped_one_set"] for m in models]
    cond = [m["gap_conditional_one_set"] for m in models]
    out = {"models": len(models), "shipped_mean": round(statistics.fmean(ship), 2), "shipped_worst": max(ship),
           "conditional_mean": round(statistics.fmean(cond), 2), "conditional_worst": max(cond),
           "changed": sum(a != b for a, b in zip(ship, cond, strict=True))}
    out["rule_met"] = out["conditional_mean"] <= out["shipped_mean"] - 0.3 and out["conditional_worst"] <= max(ship)
    return out


def write_markdown(p: dict[str, Any], path: Path) -> None:
    s = p.get("summary") or summary(p["models"])
    keys = ["zoo", "model", "suspect", "target", "kind", "rate_original", "gap_shipped_one_set",
            "gap_conditional_one_set", "gap_shipped_three_sets"]
    lines = [*heading("The automatic γ's probe read only where the candidate still works (ORACLE probe)", p,
                      "Every measured column (der, acc, asr) and every gap here is."),
             "Rates: the share of one synthetic set's other-class sources the probe trigger sends to the suspect "
             "(`rate`, the shipped reading; `stored_rate`: the stored run's set 0, for checking the rebuild) and, "
             "among the sources the candidate still answers as the original does (`kept`, %), the same share "
             "(`rate_conditional`). `estimated_der` / `conditional_estimate`: one set's estimate with the shipped "
             "and the conditional backdoor term. `pick`: each single-set choice (shipped lean and guard) and the "
             "oracle's. `gap_shipped_three_sets`: the stored three-set choice's gap.", "",
             f"**Summary:** {s.get('models')} models; single-set shipped reading mean gap {s.get('shipped_mean')}, "
             f"worst {s.get('shipped_worst')}; conditional {s.get('conditional_mean')}, worst "
             f"{s.get('conditional_worst')}; choices changed on {s.get('changed')}. Reading rule (docstring) "
             f"{'met' if s.get('rule_met') else 'not met'}.", "",
             markdown_table([{k: m[k] for k in keys} for m in p["models"]], keys), ""]
    for m in p["models"]:
        lines += [f"## {m['zoo']}:{m['model']} (suspect {m['suspect']}, target {m['target']}, probe {m['kind']})", "",
                  markdown_table(m["rows"], COLUMNS), ""]
    lines += [f"Machine: {p['environment'].get('platform', '')}, {p['threads']} thread(s)."]
    path.write_text("\n".join(lines) + "\n")


def render(p: dict[str, Any], path: Path) -> None:
    """Markdown with the summary re-computed from the rows (so merged parts summarise together)."""
    write_markdown({**p, "summary": summary(p["models"])}, path)


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)

    # the stored rows' DER, ACC and ASR were scored on the first 5000 test images
    return run_probe(ap, argv, "conditional-probe-explore-fmnist", "conditional_probe_explore.py", render,
                     stored_rows_build(ap, probe), eval_limit=5000)


if __name__ == "__main__":
    sys.exit(main())
