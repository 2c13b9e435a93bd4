"""DEVELOPMENT probe (ORACLE scoring): among the scan's top classes, is the backdoor target the one whose
reverse-engineered trigger the original model follows best?

OTBR's data-free selection suspects the arg-max of a cheap target scan (:func:`otbr.scans.target_scan`: one
small patch per class, 50 steps, 32 synthetic sources) and then reverse-engineers a stronger trigger toward that
one class (:func:`otbr.scans.reverse_trigger`: patch of area 5 % and blend of weight 0.1, 100 steps, every
other-class synthetic input, robust to shifts and noise). On the stored three-set selection
(``benchmarks/results/auto-otbr-repeats3-fmnist.md``) that stronger trigger reaches 93–100 % of the sources on
the original for 14 of the 20 right suspects, and 42–88 % for each of the 7 wrong ones (class 6, shirt, or 8,
bag): a natural neighbour can be reached with a small trigger, but not as completely as a backdoor target.
Neural Cleanse reverse-engineers a trigger toward *every* class and flags the outlier; this probe does it for
the scan's top ``--top`` classes only, reading no data:

* **probe-rate suspect** (the signal fixed before the run): the class, among the ``--top`` classes with the
  highest scan rate, whose reverse-engineered trigger the original follows on the most sources (the larger of
  the two forms' rates, each measured through one fixed augmentation, as the selection's probe does); ties go
  to the higher scan rate.

The idea came from the stored probe rates of these same 27 models, so this run is not a held-out test of it: a
rule that passes here still needs models it was not drawn from.

It is compared with the scan's arg-max on the same synthetic set (seed 0, the first of the three sets the shipped
selection uses). The real target, from the model file's metadata, is used only to score which suspect is right —
an ORACLE evaluation of the signal.

Pre-registered reading (written before the run): the probe-rate suspect is worth building into the selection
only if, over the models run, it names the real target on more models than the scan's arg-max and loses at most
one of the scan's hits. In that case, also written before the run: the selection would take the top classes of
its averaged scan, average each class's probe rate over its synthetic sets, be re-run (``auto_bench --repeats 3``)
on every zoo model whose suspect changes (the others keep their stored rows: their γ does not read the scan
beyond the suspect), and the new suspect would be shipped only if the mean DER gap over all 27 models is lower
than the shipped 4.48 and the worst gap no higher than 36.91.

Usage:
    python benchmarks/probe_suspect_explore.py --models fifth:blended-t4,main:sig,... [--top 3] [--out STEM]
    python benchmarks/probe_suspect_explore.py --merge STEM_A,STEM_B

Writes ``benchmarks/results/probe-suspect-explore-fmnist.{md,json}`` (or ``STEM.{md,json}``).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from explore_cli import parser, run_models
from scan_explore import SUMMARY_COLUMNS, signal_order, summary
from zoo import FOLDERS

from otbr.metrics import predict
from otbr.models import load_model
from otbr.report import ORACLE_NOTE, markdown_table
from otbr.scans import reverse_trigger, target_scan, trigger_rate
from otbr.synthesis import synthesize

log = logging.getLogger("probe_suspect_explore")
ROOT = Path(__file__).resolve().parent
STEM = "probe-suspect-explore-fmnist"
#: the selection's probe forms: (kind, size), as :func:`otbr.selection._probe` without its ladder
FORMS = (("patch", 0.05), ("blend", 0.1))


def probe_rate(model: torch.nn.Module, synthetic: torch.Tensor, reference: torch.Tensor, target: int,
               seed: int = 0) -> dict[str, float]:
    """Per form, the rate at which ``model`` follows a trigger reverse-engineered toward ``target`` (the
    selection's probe: same sources, steps, seeds and augmentation)."""
    src = synthetic[reference != target]
    out = {}
    for kind, size in FORMS:
        mask, pattern = reverse_trigger(model, src, target, kind=kind, budget=size, alpha=size, steps=100, seed=seed)
        out[kind] = round(trigger_rate(model, src, mask, pattern, target, seed=12345 + seed), 4)
    return out


def explore(zoo: str, name: str, *, top: int, seed: int = 0) -> dict[str, Any]:
    model, meta = load_model(ROOT.parent / FOLDERS[zoo] / f"{name}.safetensors")
    model.eval()
    nc = meta.num_classes
    t0 = time.perf_counter()
    syn = synthesize(model, 256, meta.input_shape, num_classes=nc, steps=100, seed=seed, progress=False)
    ref = predict(model, syn.x)
    scan = target_scan(model, syn.x, ref, nc, seed=seed)
    order = sorted(range(nc), key=lambda c: (-float(scan[c]), c))[:top]  # stable: ties to the lower class
    rates = {c: probe_rate(model, syn.x, ref, c, seed=seed) for c in order}
    best = max(order, key=lambda c: (max(rates[c].values()), float(scan[c]), -c))
    target = int(meta.attack["target"])
    suspects = {"shipped scan": order[0], "probe-rate suspect": best}
    row = {"zoo": zoo, "model": name, "attack": meta.attack.get("name", ""), "target": target, "seed": seed,
           "suspects": suspects, "right": {k: v == target for k, v in suspects.items()},
           "target_in_top": target in order, "scan": [round(float(x), 4) for x in scan],
           "probe_rates": {str(c): r for c, r in rates.items()}, "seconds": round(time.perf_counter() - t0, 1)}
    log.info("%s/%s target %d: %s, rates %s (%.0f s)", zoo, name, target, suspects, rates, row["seconds"])
    return row


def write_markdown(p: dict[str, Any], path: Path) -> None:
    ordered = sorted(p["summary"], key=lambda row: signal_order(row["signal"]))
    per = [{"zoo": r["zoo"], "model": r["model"], "attack": r["attack"], "target": r["target"], **r["suspects"],
            "target in top": r["target_in_top"],
            "probe rates (class: patch / blend)": "; ".join(f"{c}: {v['patch']:.2f} / {v['blend']:.2f}"
                                                           for c, v in r["probe_rates"].items()),
            "s": r["seconds"]} for r in p["models"]]
    lines = [f"# Suspected target: scan arg-max vs the best-followed probe among the scan's top {p['top']} classes "
             "(Fashion-MNIST zoos)", "",
             f"Generated by `{p['command']}`. {ORACLE_NOTE} Here: the `target` column and every right/wrong count; "
             "the signals themselves read no data (see the script's docstring). Synthetic set seed 0.", "",
             *([f"**Reading:** {p['reading']}", ""] if p.get("reading") else []),
             "## Summary", "", markdown_table(ordered, SUMMARY_COLUMNS) if ordered else "(none)", "",
             "`names_target`: models on which the signal names the real target; `keeps_shipped_hits`: of the models "
             "the scan's arg-max gets right, those the signal also gets right.", "",
             "## Per model", "", markdown_table(per, list(per[0])) if per else "", "",
             f"Machine: {p['environment'].get('platform', '')}, {p['threads']} thread(s), shared 2-core CPU."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--top", type=int, default=3, help="scan classes whose probe is run (default 3)")
    return run_models(ap, argv, STEM, "probe_suspect_explore.py", write_markdown,
                      lambda args, zoo, name: explore(zoo, name, top=args.top),
                      lambda args, rows: {"threads": args.threads, "top": args.top, "summary": summary(rows)})


if __name__ == "__main__":
    sys.exit(main())
