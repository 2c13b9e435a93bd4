"""DEVELOPMENT probe (ORACLE): can a data-free gate give the repaired model its lost target class back?

The data-free repair (:func:`otbr.repair.repair`) cleans a model by giving up its suspected target class: the
repaired model never answers it (acc_t 0), and every attempt to teach the class back inside the network taught the
backdoor back with it (``repair-gpu-explore``, ``repair-bias-explore``, ``repair-uncap-explore``). This probe asks
whether the two models *together* can tell the cases apart at inference. An input the original calls the suspect is
either a clean image of that class or a triggered image of another class. The repaired model ignores the trigger,
so on a triggered image it should see the other class plainly; on a clean image of the suspect, a class it was
never taught, it should be unsure. The gate answers the suspect when the original does *and* the repaired model's
score says "unsure", else the repaired model's answer.

Two scores, each thresholded with no data at the ``q``-quantile of its values on the original's inversions of the
*other* classes (what the repaired model does on inputs of classes it knows): ``conf`` — the repaired model's top
softmax probability (gate when below the threshold); ``guard`` — its softmax probability of the suspect (gate when
above). Per model and score: the AUROC between the suspect's clean test images and triggered test images that the
original sends to the suspect (how separable the two are at all — ORACLE), then ACC, acc_t and ASR of the gated
pair at each data-free ``q``. Reading a ``q`` off these rows is an ORACLE choice.

Usage:
    python benchmarks/repair_gate_explore.py --models main:badnets,main:blended [--threads 1] [--out STEM]

Writes ``benchmarks/results/repair-gate-explore-fmnist.{md,json}`` (repaired models cached like
``repair_bias_explore.py``'s, in ``/tmp/otbr-repair-bias``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from explore_cli import heading, model_specs, parser, run_probe
from repair_bias_explore import CACHE, logits, repaired

from otbr.attacks import attack_from_config
from otbr.data import load_dataset
from otbr.report import markdown_table
from otbr.synthesis import synthesize

QUANTILES = (0.01, 0.02, 0.05, 0.1, 0.2)
SCORES = ("conf", "guard")


def auroc(pos: torch.Tensor, neg: torch.Tensor) -> float | None:
    """P(score of a positive > score of a negative), ties counted half; ``None`` when a side is empty."""
    if len(pos) == 0 or len(neg) == 0:
        return None
    d = pos[:, None] - neg[None, :]
    return float((d > 0).float().mean() + 0.5 * (d == 0).float().mean())


def scores(lg: torch.Tensor, suspect: int) -> dict[str, torch.Tensor]:
    """Per score, values oriented so that *higher* means "gate to the suspect"."""
    p = lg.softmax(1)
    return {"conf": -p.max(1).values, "guard": p[:, suspect]}


def probe(zoo: str, name: str, test: Any, cache: Path, limit: int) -> dict[str, Any]:
    original, fixed, meta, gamma, suspect, secs = repaired(zoo, name, cache)
    ps = attack_from_config(meta.attack).poison_test(test)
    target = int(ps.target)
    x, y = test.x[:limit], test.y[:limit]
    xp = ps.x[:limit]
    oc, op = logits(original, x).argmax(1), logits(original, xp).argmax(1)
    fc, fp = logits(fixed, x), logits(fixed, xp)
    syn = synthesize(original, 500, meta.input_shape, num_classes=meta.num_classes, steps=100, seed=7,
                     progress=False)
    fs = logits(fixed, syn.x)[syn.y != suspect]  # the repaired model on classes it was taught (data-free)
    sc, sp, ss = scores(fc, suspect), scores(fp, suspect), scores(fs, suspect)
    base_c, base_p = fc.argmax(1), fp.argmax(1)
    out: dict[str, Any] = {"zoo": zoo, "model": name, "gamma": gamma, "suspect": suspect, "target": target,
                           "repair_s": round(secs, 1), "rows": []}
    tgt = y == target

    def row(score: str, q: float | None, gate_c: torch.Tensor, gate_p: torch.Tensor) -> dict[str, Any]:
        pc = torch.where(gate_c & (oc == suspect), torch.tensor(suspect), base_c)
        pp = torch.where(gate_p & (op == suspect), torch.tensor(suspect), base_p)
        return {"score": score, "q": q, "acc": round(100 * float((pc == y).float().mean()), 2),
                "acc_t": round(100 * float((pc[tgt] == target).float().mean()), 2),
                "asr": round(100 * float((pp == target).float().mean()), 2)}

    out["rows"].append(row("repaired", None, torch.zeros_like(tgt), torch.zeros(len(xp), dtype=torch.bool)))
    out["rows"].append(row("always", None, torch.ones_like(tgt), torch.ones(len(xp), dtype=torch.bool)))
    out["original"] = {"acc": round(100 * float((oc == y).float().mean()), 2),
                       "acc_t": round(100 * float((oc[tgt] == target).float().mean()), 2),
                       "asr": round(100 * float((op == target).float().mean()), 2)}
    out["auroc"] = {}
    for s in SCORES:
        # ORACLE: the suspect's clean images the original gets right against triggered ones it sends there
        out["auroc"][s] = auroc(sc[s][tgt & (oc == suspect)], sp[s][op == suspect])
        for q in QUANTILES:
            thr = torch.quantile(ss[s], 1 - q)  # the top q of the taught classes' inversions would be gated
            out["rows"].append(row(s, q, sc[s] > thr, sp[s] > thr))
    return out


def write_markdown(p: dict[str, Any], path: Path) -> None:
    lines = [*heading("Can a data-free gate give the repaired model its target class back? (ORACLE probe)", p,
                      "Every row here is."),
             "Per model: the repair's default run at its automatic γ (no lean, the selection's suspect), then the "
             "gated pair (original + repaired): the suspect when the original answers it and the repaired model's "
             "score passes a threshold set, with no data, at the top `q` of its scores on the original's inversions "
             "of the other classes. `conf`: gate when the repaired model's top probability is low; `guard`: when its "
             "probability of the suspect is high. `auroc`: how well each score separates the suspect's clean "
             "images from triggered ones that the original sends to it (ORACLE). `repaired`: the repaired model alone; "
             "`always`: the suspect whenever the original answers it (the gate's ceiling on acc_t and its worst "
             "ASR).", ""]
    for m in p["models"]:
        o = m["original"]
        au = ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} -" for k, v in m["auroc"].items())
        lines += [f"## {m['zoo']}:{m['model']} (γ {m['gamma']}, target {m['target']}, suspect {m['suspect']}; "
                  f"original ACC {o['acc']} / acc_t {o['acc_t']} / ASR {o['asr']}; auroc {au})", "",
                  markdown_table(m["rows"], ["score", "q", "acc", "acc_t", "asr"]), ""]
    lines += [f"Machine: {p['environment'].get('platform', '')}, {p['threads']} thread(s)."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--eval-limit", type=int, default=5000)
    ap.add_argument("--cache", type=Path, default=CACHE)

    def build(args: Any) -> list[dict[str, Any]]:
        specs = model_specs(ap, args.models)
        args.cache.mkdir(parents=True, exist_ok=True)
        test = load_dataset("fashion-mnist", "test")
        return [probe(z, n, test, args.cache, args.eval_limit) for z, n in specs]

    return run_probe(ap, argv, "repair-gate-explore-fmnist", "repair_gate_explore.py", write_markdown, build)


if __name__ == "__main__":
    sys.exit(main())
