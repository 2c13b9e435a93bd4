"""DEVELOPMENT (ORACLE) runs of the repair's invariance phase on one zoo model; prints, writes nothing.

Every line it prints is scored on the model's *poisoned* test set: use it to study the repair, never to pick
settings you then report as held out. The runs behind ``otbr.repair.repair``'s invariance defaults and their
output are in ``benchmarks/results/repair-invariance-explore-fmnist.md``.

Prunes the zoo model at its automatic γ (from ``results/auto-otbr-fmnist.json``; ``--gamma`` overrides), inverts
512 BatchNorm images from it (both cached under ``--cache``), runs :func:`otbr.repair.repair` with the given
invariance weight / radius for ``--steps`` steps (all of them in the invariance phase), then ``--then`` plain
distillation steps, scoring ACC / ASR / DER on the first ``--n`` test images every ``--every`` steps.

Usage:
    python benchmarks/repair_invariance_explore.py blended --adv 0.5 --radius 1.5 --steps 50 --then 100
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from repair_bench import auto_gammas
from zoo import FOLDERS

from otbr.attacks import attack_from_config
from otbr.data import load_dataset
from otbr.defenses.otbr import OTBR
from otbr.metrics import der, evaluate
from otbr.models import load_model
from otbr.pruning import global_topk, prune_neurons
from otbr.repair import repair
from otbr.synthesis import synthesize

ROOT = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--zoo", default="main", choices=sorted(FOLDERS))
    ap.add_argument("--gamma", type=float, default=None, help="default: the automatic choice")
    ap.add_argument("--adv", type=float, default=0.5, help="invariance weight")
    ap.add_argument("--radius", type=float, default=1.5)
    ap.add_argument("--steps", type=int, default=100, help="steps with the invariance term")
    ap.add_argument("--then", type=int, default=0, help="plain distillation steps after them")
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--n", type=int, default=2000, help="test images scored")
    ap.add_argument("--tag", default="")
    ap.add_argument("--cache", default="/tmp/otbr-repair-explore")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    model, meta = load_model(ROOT.parent / FOLDERS[a.zoo] / f"{a.model}.safetensors")
    test = load_dataset("fashion-mnist", "test")
    ps = attack_from_config(meta.attack).poison_test(test)
    sets = ((test.x[: a.n], test.y[: a.n]), (ps.x[: a.n], ps.y_true[: a.n], int(ps.target)))
    base = evaluate(model, *sets)
    g_auto, suspect = auto_gammas()[(a.zoo, a.model)]
    gamma = g_auto if a.gamma is None else a.gamma
    mpath = cache / f"{a.zoo}-{a.model}-g{gamma}.pt"
    if mpath.exists():
        masks = torch.load(mpath)["masks"]
    else:
        d = OTBR(gamma=gamma, input_shape=meta.input_shape, num_classes=meta.num_classes, progress=False)
        masks = global_topk(d.scores(model), gamma)
        torch.save({"masks": masks}, mpath)
    pruned = prune_neurons(model, masks)
    spath = cache / f"{a.zoo}-{a.model}-syn.pt"
    if spath.exists():
        syn = torch.load(spath, weights_only=False)
    else:
        syn = synthesize(model, 512, meta.input_shape, num_classes=meta.num_classes, steps=100, seed=0, progress=False)
        torch.save(syn, spath)
    pr = evaluate(pruned, *sets)
    print(f"{a.model} γ={gamma} target={int(ps.target)} suspect={suspect} original ACC {base.acc * 100:.2f} "
          f"ASR {base.asr * 100:.2f}; pruned ACC {pr.acc * 100:.2f} ASR {pr.asr * 100:.2f}", flush=True)
    t0, tag = time.perf_counter(), a.tag

    def on_step(i: int, s: torch.nn.Module) -> None:
        if i % a.every == 0:
            r = evaluate(s, *sets)
            print(f"  {tag} step {i}: ACC {r.acc * 100:.2f} ASR {r.asr * 100:.2f} "
                  f"DER {der(base.acc, base.asr, r.acc, r.asr) * 100:.2f} ({time.perf_counter() - t0:.0f}s)",
                  flush=True)

    kw = {"input_shape": meta.input_shape, "masks": masks, "num_classes": meta.num_classes, "suspect": suspect,
          "transfer": syn, "progress": False, "on_step": on_step, "check": False}
    rr = repair(pruned, model, steps=a.steps, adversarial=a.adv, adv_radius=a.radius, adv_fraction=1.0, **kw)
    if a.then:
        t0, tag = time.perf_counter(), a.tag + "+plain"
        repair(rr.distilled, model, steps=a.then, adversarial=0.0, **kw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
