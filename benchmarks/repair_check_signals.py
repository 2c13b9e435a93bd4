"""DEVELOPMENT tool: what separates a revived backdoor from a false alarm of the repair's backdoor check.

For one zoo model: OTBR pruning at the automatic γ (recorded in ``auto-otbr-fmnist.json``), the default repair,
then per class, on the original, the pruned and the distilled model: the agreement with the original on the
repair's transfer set, and the success rate of :func:`otbr.scans.target_scan` at trigger budgets of 5, 2.5 and
1.25 % of the image. It also prints ACC / ASR on the poisoned test set, so every choice made from its output
is an ORACLE choice for the models it ran on.

Usage:
    python benchmarks/repair_check_signals.py ZOO MODEL OUT.json [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from repair_bench import auto_gammas
from zoo import FOLDERS

from otbr.attacks import attack_from_config
from otbr.data import load_dataset
from otbr.defenses.otbr import OTBR
from otbr.metrics import evaluate, predict
from otbr.models import load_model
from otbr.pruning import global_topk, prune_neurons
from otbr.repair import repair
from otbr.scans import target_scan
from otbr.selection import class_agreement
from otbr.synthesis import synthesize

ROOT = Path(__file__).resolve().parent
BUDGETS = (0.05, 0.025, 0.0125)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("zoo", choices=sorted(FOLDERS))
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    model, meta = load_model(ROOT.parent / FOLDERS[a.zoo] / f"{a.model}.safetensors", device=a.device)
    test = load_dataset("fashion-mnist", "test")
    ps = attack_from_config(meta.attack).poison_test(test)
    sets = ((test.x[:5000], test.y[:5000]), (ps.x[:5000], ps.y_true[:5000], int(ps.target)))
    gamma, suspect = auto_gammas()[(a.zoo, a.model)]
    d = OTBR(gamma=gamma, input_shape=meta.input_shape, num_classes=meta.num_classes, progress=False)
    masks = global_topk(d.scores(model), gamma)
    pruned = prune_neurons(model, masks)
    # the repair's default transfer set (512 inversions, 100 steps, seed 0), made once for the repair and the scans
    syn = synthesize(model, 512, meta.input_shape, num_classes=meta.num_classes, steps=100, seed=0, progress=False)
    rr = repair(pruned, model, input_shape=meta.input_shape, masks=masks, num_classes=meta.num_classes,
                suspect=suspect, transfer=syn, progress=False)
    ref = predict(model, syn.x)
    res = {"zoo": a.zoo, "model": a.model, "gamma": gamma, "suspect": suspect, "target": int(ps.target),
           "flagged": rr.info["check"]["flagged"]}
    for tag, m in (("original", model), ("pruned", pruned), ("distilled", rr.distilled)):
        r = evaluate(m, *sets)
        res[tag] = {"acc": r.acc, "asr": r.asr,
                    "agree": class_agreement(predict(m, syn.x), ref, meta.num_classes).tolist()}
        for b in BUDGETS:
            res[tag][f"rate{b}"] = target_scan(m, syn.x, ref, meta.num_classes, budget=b).tolist()
    Path(a.out).write_text(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
