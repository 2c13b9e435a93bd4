"""DEVELOPMENT probe (ORACLE scoring): is a SIG backdoor's answer to a sinusoidal stripe *narrowly tuned* in
frequency, where a natural catch-all's (shirt's) is broad?

Why: :func:`otbr.scans.sine_scan` on the original models failed as a suspect rule because shirt answers stripes
as well as the SIG targets do (``sine-scan-explore-fmnist.md``: shirt named on 17 of the 21 models where the scan
named a class). In the repair's stripe pass (``repair-stripe-heldout-cpu-fmnist.json``) every real SIG target was
named at the frequency the zoo's SIG triggers use (columns, f = 6; f = 5 for SIG-f5-t0), while the three false
flags (shirt) peaked at f = 7, 10 and 12. A trigger is one stripe; a texture class may answer many. If that holds,
a *tuned* contrast (the peak minus what the class gets at frequencies away from the peak) could name SIG targets
without the patch-reach gate of the repair's stripe pass, and could serve OTBR's suspect.

This probe runs :func:`otbr.scans.sine_scan` (amplitude 40/255, f = 1 … 12 along columns and rows, 4 phases, each
against its shuffled control) on the first synthetic set the shipped selection inverts (256 inputs, 100 steps,
seed 0) and stores, per class, the contrast at every axis and frequency (``profile``). No data is read. The real
target (model metadata) and the shipped suspect (``auto-otbr-shipped-split-fmnist.json``) only score the rows:
an ORACLE evaluation. Rules are re-scored from the stored profiles (``--render``), nothing is re-run.

**Development** (the first nine zoos, 39 models: ``stripe-tuning-dev-fmnist``, read before the text below was
written). The largest tuned contrast of any class was a SIG target's on the two PreAct SIG models (main SIG 0.44,
fourth SIG-t6 0.42); VGG SIG-t2 (a weak backdoor) reached 0.19. The highest of any other wrong class was shirt's
0.30 (sixth WaNet-t2) and 0.26 (seventh Blended-t2); backdoor targets of other families reach up to 0.28 (WaNet).

**Written before the held-out run (2026-11-25, committed with this text):**

* **rule**: the *stripe-tuned class* is the class with the largest tuned contrast (``BAND`` = 2) when that is at
  least 0.35 (midway between shirt's 0.30 and the SIG targets' 0.42), else none.
* **held out**: the tenth to eighteenth zoos (39 models), whose tuning profiles nobody has computed. Disclosed: their
  *untuned* contrasts (``sine-scan-explore-fmnist``) and, for 15 of them, the repair's stripe scans of their
  distilled models (where the SIG targets peaked at f = 6 and shirt at 7–12, the observation behind this probe) were
  seen before. Their 11 SIG models all have a wrong shipped suspect.
* **met** if the rule names the real target on at least 6 of those 11 SIG models and names a class other than the
  target on none of the 39. Then it is worth building as a suspect aid (the repair's guard, OTBR's suspect), each use
  measured on the models it changes. Not met: recorded, not built.

**Outcome** (``python benchmarks/stripe_tuning_explore.py --models …`` in two processes, merged into
``stripe-tuning-heldout-fmnist``): **not met**. The rule names the target on 3 of the 11 SIG models (VGG SIG-t8,
SIG-d30-t4, SIG-t3) and shirt on 3 models with a right shipped suspect (WaNet-t0 0.58, WaNet-t7 0.40, VGG WaNet-t3
0.38): shirt's answer can be as narrow as a SIG target's. Not built; ``sine_scan`` keeps its ``profile`` output.

Usage:
    python benchmarks/stripe_tuning_explore.py --models main:sig,fourth:sig-t6,... [--out STEM]
    python benchmarks/stripe_tuning_explore.py --merge STEM_A,STEM_B [--out STEM]
    python benchmarks/stripe_tuning_explore.py --render [--out STEM]

Writes ``benchmarks/results/stripe-tuning-explore-fmnist.{md,json}`` (or ``STEM.{md,json}``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from explore_cli import parser, run_models
from warp_scan_explore import shipped_suspects
from zoo import FOLDERS

from otbr.metrics import predict
from otbr.models import load_model
from otbr.report import ORACLE_NOTE, markdown_table
from otbr.scans import sine_scan
from otbr.synthesis import synthesize

log = logging.getLogger("stripe_tuning_explore")
ROOT = Path(__file__).resolve().parent
STEM = "stripe-tuning-explore-fmnist"
PHASES = 4
#: frequencies this close to a class's peak count as the peak's own band (SIG's answer spreads to neighbours)
BAND = 2


def tuned(profile: dict[str, Sequence[Sequence[float]]], band: int = BAND) -> list[dict[str, Any]]:
    """Per class: its peak contrast (axis, frequency) and the largest contrast it gets *outside* the peak's band
    (frequencies more than ``band`` away on the same axis, any frequency on the other axis); ``tuned`` = peak − that.

    Example:
        >>> p = {"columns": [[0.0, 0.6, 0.1, 0.0], [0.3, 0.4, 0.5, 0.4]], "rows": [[0.0] * 4, [0.0, 0.2, 0.0, 0.0]]}
        >>> [(t["peak"], t["off_band"], t["tuned"]) for t in tuned(p, band=1)]
        [(0.6, 0.0, 0.6), (0.5, 0.3, 0.2)]
    """
    axes = list(profile)
    k = len(profile[axes[0]])
    out = []
    for c in range(k):
        best = max(((a, i) for a in axes for i in range(len(profile[a][c]))), key=lambda ai: profile[ai[0]][c][ai[1]])
        a, i = best
        off = [v for b in axes for j, v in enumerate(profile[b][c]) if b != a or abs(j - i) > band]
        peak, rest = float(profile[a][c][i]), max(off, default=0.0)
        out.append({"peak": round(peak, 4), "at": [a, i + 1], "off_band": round(float(rest), 4),
                    "tuned": round(peak - float(rest), 4)})
    return out


def explore(zoo: str, name: str, shipped: int | None, seed: int = 0) -> dict[str, Any]:
    """One synthetic set and the stripe profile on it."""
    model, meta = load_model(ROOT.parent / FOLDERS[zoo] / f"{name}.safetensors")
    model.eval()
    nc = meta.num_classes
    t0 = time.perf_counter()
    syn = synthesize(model, 256, meta.input_shape, num_classes=nc, steps=100, seed=seed, progress=False)
    scan = sine_scan(model, syn.x, predict(model, syn.x), nc, phases=PHASES, seed=seed)
    row = {"zoo": zoo, "model": name, "attack": meta.attack.get("name", ""), "target": int(meta.attack["target"]),
           "shipped": shipped, "contrast": scan["contrast"], "at": scan["at"], "profile": scan["profile"],
           "frequencies": scan["frequencies"], "seconds": round(time.perf_counter() - t0, 1)}
    log.info("%s/%s target %d: contrast %s (%.0f s)", zoo, name, row["target"], row["contrast"], row["seconds"])
    return row


def score(row: dict[str, Any]) -> None:
    """Per-class tuning from the stored profile, and the classes the untuned and tuned contrasts rank first."""
    row["tuning"] = tuned(row["profile"])
    k = len(row["contrast"])
    row["top contrast"] = max(range(k), key=lambda c: (row["contrast"][c], -c))
    row["top tuned"] = max(range(k), key=lambda c: (row["tuning"][c]["tuned"], -c))


def fields(args: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    for r in rows:
        score(r)
    return {"threads": args.threads, "phases": PHASES, "band": BAND}


def write_markdown(p: dict[str, Any], path: Path) -> None:
    for r in p["models"]:
        score(r)
    per = []
    for r in p["models"]:
        t, s = r["target"], r["tuning"]
        other = max((c for c in range(len(s)) if c != t), key=lambda c: s[c]["tuned"])
        per.append({"zoo": r["zoo"], "model": r["model"], "attack": r["attack"], "target": t, "shipped": r["shipped"],
                    "top contrast": r["top contrast"], "top tuned": r["top tuned"],
                    "target peak": s[t]["peak"], "target at": " ".join(map(str, s[t]["at"])),
                    "target off-band": s[t]["off_band"], "target tuned": s[t]["tuned"],
                    "best other (tuned)": other, "its peak": s[other]["peak"],
                    "its at": " ".join(map(str, s[other]["at"])), "its off-band": s[other]["off_band"],
                    "its tuned": s[other]["tuned"], "s": r["seconds"]})
    lines = ["# How narrowly a class answers a sinusoidal stripe, per frequency (Fashion-MNIST zoos)", "",
             f"Generated by `{p['command']}`. **{ORACLE_NOTE}** Here: the `target` and `shipped` columns and every "
             "comparison with them; the scan itself reads no data. Stripes of amplitude 40/255 along the columns and "
             f"the rows, frequencies 1 to 12, {p['phases']} phases, each against its shuffled control, on the first "
             "synthetic set (256 inputs, seed 0). Per class: `peak`, its largest contrast (at axis and frequency); "
             f"`off-band`, its largest contrast more than {p['band']} frequencies from the peak on the same axis or "
             "anywhere on the other; `tuned` = peak − off-band.", "",
             *([f"**Reading:** {p['reading']}", ""] if p.get("reading") else []),
             "## Per model", "", markdown_table(per, list(per[0])) if per else "(none)", "",
             f"Machine: {p['environment'].get('platform', '')}, {p['threads']} thread(s), shared 2-core CPU."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    stored = shipped_suspects()
    return run_models(ap, argv, STEM, "stripe_tuning_explore.py", write_markdown,
                      lambda args, zoo, name: explore(zoo, name, stored.get((zoo, name))), fields)


if __name__ == "__main__":
    sys.exit(main())
