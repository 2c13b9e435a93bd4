"""Why the data-free repair looks the way it does: the design measurements on one zoo model.

DEVELOPMENT RUN, NOT A RESULT: every row is scored on the model's test set, and the repair's defaults
(``otbr.repair.repair``) were chosen from these rows — on this model they are tuned, which is why
``repair_bench.py`` reports the other zoo models as held out.

On the model pruned at its automatic γ (``auto-otbr-fmnist.json``), with one shared transfer set of
BatchNorm inversions of the original (no data):

* how the backdoored teacher reads the inversions, unshifted and shifted by up to 2 pixels
  (fraction classified as the target);
* two cheap repairs without training: BatchNorm re-statistics on the inversions, and replacing each pruned
  channel by its mean output on the inversions (instead of zero);
* distillation variants (``--steps`` each, scored every ``--every`` steps), with the agreement with the
  teacher on held-out inversions (a data-free signal) next to the test ACC/ASR.

Usage:
    python benchmarks/repair_explore.py [--model badnets] [--synthetic 640] [--steps 150] [--every 50]

Writes ``benchmarks/results/repair-explore-fmnist.{md,json}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from otbr.attacks import attack_from_config
from otbr.data import load_dataset
from otbr.defenses.otbr import OTBR
from otbr.metrics import der, evaluate, predict
from otbr.models import load_model
from otbr.models.normalize import unwrap
from otbr.pruning import global_topk, prune_neurons
from otbr.repair import repair
from otbr.report import environment, markdown_table, write_json
from otbr.scans import augment
from otbr.synthesis import Synthetic, bn_layers, synthesize

log = logging.getLogger("repair_explore")
ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"

#: distillation variants: name → keyword arguments of otbr.repair.repair
VARIANTS: dict[str, dict[str, Any]] = {
    "old default: lr 1e-3, shift 2, guards on": {"lr": 1e-3, "shift": 2},
    "lr 1e-4, shift 2, guards on": {"lr": 1e-4, "shift": 2},
    "lr 1e-4, shift 0, guards OFF (keep_suspect)": {"lr": 1e-4, "shift": 0, "keep_suspect": True},
    "new default: lr 1e-4, shift 0, guards on": {"lr": 1e-4, "shift": 0},
}


def recalibrated(model: nn.Module, x: torch.Tensor, batch: int = 128) -> nn.Module:
    """A copy whose BatchNorm running statistics are re-estimated (cumulative average) on ``x``."""
    out = copy.deepcopy(model)
    for b in bn_layers(out):
        b.reset_running_stats()
        b.momentum = None
    out.train()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out(x[i:i + batch])
    return out.eval()


@torch.no_grad()
def mean_replaced(original: nn.Module, pruned: nn.Module, masks: dict[str, torch.Tensor],
                  x: torch.Tensor) -> nn.Module:
    """A copy of ``pruned`` whose pruned channels output their mean output in ``original`` on ``x``."""
    sums: dict[str, torch.Tensor] = {}
    handles = []
    mods = dict(unwrap(original).named_modules())
    for name, m in masks.items():
        if bool(m.any()):
            handles.append(mods[name].register_forward_hook(
                lambda _m, _i, o, name=name: sums.__setitem__(
                    name, sums.get(name, 0) + (o.mean((2, 3)) if o.dim() == 4 else o).double().sum(0))))
    original.eval()
    for i in range(0, len(x), 256):
        original(x[i:i + 256])
    for h in handles:
        h.remove()
    out = copy.deepcopy(pruned)
    omods = dict(unwrap(out).named_modules())
    for name, total in sums.items():
        mu, sel = (total / len(x)).float(), masks[name]

        def hook(_m: nn.Module, _i: Any, o: torch.Tensor, sel: torch.Tensor = sel, mu: torch.Tensor = mu):
            o = o.clone()
            o[:, sel] = (mu[sel][:, None, None] if o.dim() == 4 else mu[sel]).to(o.dtype)
            return o

        omods[name].register_forward_hook(hook)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="badnets")
    ap.add_argument("--synthetic", type=int, default=640, help="inversions: 5/6 transfer set, 1/6 held out")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--eval-limit", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    model, meta = load_model(ROOT / "zoo" / f"{args.model}.safetensors")
    test = load_dataset("fashion-mnist", "test")
    ps = attack_from_config(meta.attack).poison_test(test)
    n = args.eval_limit
    sets = ((test.x[:n], test.y[:n]), (ps.x[:n], ps.y_true[:n], int(ps.target)))
    base = evaluate(model, *sets)
    auto = {m["model"]: m for m in json.loads((RESULTS / "auto-otbr-fmnist.json").read_text())["models"]
            if m["zoo"] == "main"}[args.model]
    gamma, suspect = auto["auto"]["value"], auto["suspected_target"]
    scores = OTBR(gamma=gamma, input_shape=meta.input_shape, num_classes=meta.num_classes, progress=False).scores(model)
    masks = global_topk(scores, gamma)
    pruned = prune_neurons(model, masks)
    syn = synthesize(model, args.synthetic, meta.input_shape, num_classes=meta.num_classes, progress=False)
    cut = args.synthetic * 5 // 6
    train = Synthetic(syn.x[:cut], syn.y[:cut], syn.info)
    held = syn.x[cut:]
    teacher_held = predict(model, held)
    rows: list[dict[str, Any]] = []

    def score(series: str, m: nn.Module, step: int | None = None, **extra: Any) -> None:
        r = evaluate(m, *sets)
        rows.append({"series": series, "step": step, "acc": round(100 * r.acc, 2), "asr": round(100 * r.asr, 2),
                     "der": round(100 * der(base.acc, base.asr, r.acc, r.asr), 2),
                     "heldout_agreement": round(100 * float((predict(m, held) == teacher_held).float().mean()), 2),
                     **extra})
        log.info("%s step %s: %s", series, step, rows[-1])

    score("original", model)
    score("pruned", pruned)
    score("BN re-statistics on the inversions", recalibrated(pruned, train.x))
    score("pruned channels replaced by their mean on the inversions", mean_replaced(model, pruned, masks, train.x))
    gen = torch.Generator().manual_seed(0)
    shifted = augment(train.x, gen, shift=2, noise=0.0)
    reading = {"unshifted": float((predict(model, train.x) == int(ps.target)).float().mean()),
               "shifted by up to 2 px": float((predict(model, shifted) == int(ps.target)).float().mean()),
               "share of the target class among the inversions": float((train.y == int(ps.target)).float().mean())}
    for name, kw in VARIANTS.items():
        t0 = time.perf_counter()

        def watch(step: int, student: nn.Module, name: str = name, t0: float = t0) -> None:
            if step % args.every == 0:
                score(name, student, step, seconds=round(time.perf_counter() - t0, 1))

        repair(pruned, model, input_shape=meta.input_shape, masks=masks, num_classes=meta.num_classes,
               suspect=suspect, transfer=train, steps=args.steps, progress=False, on_step=watch, **kw)
    payload = {"command": "python benchmarks/repair_explore.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "model": args.model, "gamma": gamma, "suspect": suspect, "target": int(ps.target),
               "synthetic": args.synthetic, "transfer": cut, "held_out": len(held), "eval_limit": n,
               "teacher_reads_target": reading, "rows": rows, "variants": VARIANTS,
               "wall_s": round(time.perf_counter() - t_start, 1), "environment": environment()}
    write_json(RESULTS / "repair-explore-fmnist.json", payload)
    lines = ["# Data-free repair: design measurements (DEVELOPMENT, one model)", "",
             f"Generated by `{payload['command'].strip()}` in {payload['wall_s'] / 60:.1f} min, 1 thread.", "",
             f"**ORACLE — development run, not a result:** every row is scored on the (poisoned) test set of "
             f"`{args.model}` (first {n} "
             "clean and triggered non-target images), and `otbr.repair.repair`'s defaults were chosen from such "
             "rows. [repair-fmnist.md](repair-fmnist.md) reports the other zoo models as held out.", "",
             f"Model `{args.model}` pruned at its automatic γ = {gamma:g} (no data), suspected target {suspect} "
             f"(real target {int(ps.target)}). Transfer set: {cut} BatchNorm inversions of the original, "
             f"{len(held)} more held out; `heldout_agreement`: agreement with the original on those (data-free).",
             "", "## How the backdoored original reads its own inversions", "",
             *[f"- {k}: {100 * v:.1f} % classified as the target" if k != "share of the target class among the "
               "inversions" else f"- {k}: {100 * v:.1f} %" for k, v in reading.items()], "",
             "## Rows", "",
             f"Distillation: {args.steps} steps per variant (Adam, batch 128, T = 4), scored every {args.every}; "
             "`guards on` = the suspected class's inversions left out, its soft label capped, no hard label "
             "toward it; pruned neurons are held at zero in every variant.", "",
             markdown_table(rows, ["series", "step", "acc", "asr", "der", "heldout_agreement", "seconds"]), "",
             f"Machine: {payload['environment'].get('platform', '')}."]
    (RESULTS / "repair-explore-fmnist.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
