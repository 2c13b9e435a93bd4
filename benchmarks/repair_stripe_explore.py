"""DEVELOPMENT probe (ORACLE scoring): once the repair has held the wrong suspect down, does a sinusoid stripe name
the SIG target it missed — and does a second repair that also guards that class remove the backdoor?

Every model the repair leaves above 10 % ASR on the held-out zoos is a SIG model whose suspect is wrong, nearly
always shirt (6) or bag (8) (``repair-heldout-current-cpu-fmnist.md``). The sinusoid scan
(:func:`otbr.scans.sine_scan`) failed as a suspect rule on the *original* models because shirt answers a
stripe of SIG's size from every source class (``sine-scan-explore-fmnist.md``). After a repair that guarded shirt,
shirt can no longer answer, so the stripe's largest contrast may move to the class the trigger really feeds.

Per model (the repair as ``repair_bench.py`` runs it: the recorded automatic γ without the lean, the recorded
suspect, OTBR's default fusion as the fallback): the scan on the original, the fused model and the distilled model
(``--scan-inputs`` of the repair's own transfer set, each model's own classes as the sources; ``--scans`` picks
which of the three); the *stripe class*, the unguarded class with the largest contrast on the distilled model; and,
when its contrast is at least ``--second-at``, a second repair from the same pruned model with that class guarded
too. Nothing here reads data but the scoring: ACC, ASR and the target class's clean accuracy on the test set, the
real target from the model's metadata (ORACLE).

Usage:
    python benchmarks/repair_stripe_explore.py --models main:sig,fourth:sig-t6,... [--second-at 0.2] [--out STEM]
    python benchmarks/repair_stripe_explore.py --merge STEM_A,STEM_B [--out STEM]

Writes ``benchmarks/results/repair-stripe-explore-fmnist.{md,json}`` (or ``STEM.{md,json}``).
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from explore_cli import heading, parser, run_models
from repair_bench import ZOOS, auto_choices, pct

from otbr.attacks import attack_from_config
from otbr.data import load_dataset
from otbr.defenses.otbr import OTBR
from otbr.fusion import fuse
from otbr.metrics import accuracy, der, evaluate, predict
from otbr.models import load_model
from otbr.pruning import global_topk, prune_neurons
from otbr.repair import repair
from otbr.report import markdown_table
from otbr.scans import sine_scan, unguarded_class
from otbr.synthesis import synthesize

log = logging.getLogger("repair_stripe_explore")
STEM = "repair-stripe-explore-fmnist"


@functools.cache
def _test():
    return load_dataset("fashion-mnist", "test")


def explore(args: Any, zoo: str, name: str) -> dict[str, Any]:
    model, meta = load_model(ZOOS[zoo] / f"{name}.safetensors")
    model.eval()
    nc, shape = meta.num_classes, meta.input_shape
    test = _test()
    ps = attack_from_config(meta.attack).poison_test(test)
    n = args.eval_limit
    target = int(ps.target)
    on_t = test.y[:n] == target
    sets = ((test.x[:n], test.y[:n]), (ps.x[:n], ps.y_true[:n], target))
    base = evaluate(model, *sets)

    def score(m: torch.nn.Module) -> dict[str, Any]:
        r = evaluate(m, *sets)
        return {"acc": pct(r.acc), "acc_t": pct(accuracy(m, test.x[:n][on_t], test.y[:n][on_t])), "asr": pct(r.asr),
                "der": pct(der(base.acc, base.asr, r.acc, r.asr))}

    gamma, suspect, _ = auto_choices()[(zoo, name)]
    t0 = time.perf_counter()
    scores = OTBR(gamma=gamma, input_shape=shape, num_classes=nc, progress=False).scores(model)
    scores.unlearn = None
    masks = global_topk(scores, gamma)
    pruned = prune_neurons(model, masks)
    fused = fuse(pruned, model, scores, masks=masks, variant="default").model
    syn = synthesize(model, 512, shape, num_classes=nc, steps=100, seed=0, progress=False)  # the repair's own set
    rr = repair(pruned, model, input_shape=shape, masks=masks, num_classes=nc, suspect=suspect, transfer=syn,
                fallback=fused, progress=False)
    t_repair = time.perf_counter() - t0
    guarded = rr.info["guarded"]
    scans, t1 = {}, time.perf_counter()
    xs = syn.x[torch.randperm(len(syn.x), generator=torch.Generator().manual_seed(0))[:args.scan_inputs]]
    for label, m in (("original", model), ("fused", fused), ("distilled", rr.distilled)):
        if label in args.scans:
            scans[label] = sine_scan(m, xs, predict(m, xs), nc, phases=args.phases)["contrast"]
    t_scan = time.perf_counter() - t1
    stripe = unguarded_class(scans["distilled"], guarded, float("-inf"))  # the top unguarded class, any contrast
    row = {"zoo": zoo, "model": name, "attack": meta.attack.get("name", ""), "target": target, "gamma": gamma,
           "suspect": suspect, "guarded": guarded, "original": {"acc": pct(base.acc), "asr": pct(base.asr)},
           "fused": score(fused), "repair": {**score(rr.model), "returned": rr.info["returned"]},
           "distilled": score(rr.distilled), "contrast": scans, "stripe class": stripe,
           "stripe contrast": scans["distilled"][stripe], "second": None,
           "seconds": {"prune, fuse, repair": round(t_repair, 1), "scans": round(t_scan, 1)}}
    if scans["distilled"][stripe] >= args.second_at:
        t2 = time.perf_counter()
        rr2 = repair(pruned, model, input_shape=shape, masks=masks, num_classes=nc, suspect=suspect, transfer=syn,
                     fallback=fused, guard=[stripe], progress=False)
        row["second"] = {**score(rr2.model), "returned": rr2.info["returned"], "guarded": rr2.info["guarded"],
                         "distilled": score(rr2.distilled)}
        row["seconds"]["second repair"] = round(time.perf_counter() - t2, 1)
    log.info("%s/%s target %d guarded %s: stripe class %d (%.2f); repair ASR %s, second %s", zoo, name, target,
             guarded, stripe, row["stripe contrast"], row["repair"]["asr"],
             row["second"] and row["second"]["asr"])
    return row


def fields(args: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"threads": args.threads, "eval_limit": args.eval_limit, "second_at": args.second_at,
            "scan_inputs": args.scan_inputs, "phases": args.phases, "scans": args.scans}


def write_markdown(p: dict[str, Any], path: Path) -> None:
    def fmt(s: dict[str, Any] | None) -> str:
        return "-" if s is None else f"{s['acc']:.2f} / {s['acc_t']:.1f} / {s['asr']:.2f} / {s['der']:.2f}"

    per = [{"zoo": r["zoo"], "model": r["model"], "target": r["target"], "guarded": r["guarded"],
            "stripe class": r["stripe class"], "stripe contrast": r["stripe contrast"],
            "distilled contrast": " ".join(f"{v:.2f}" for v in r["contrast"]["distilled"]),
            "original contrast": " ".join(f"{v:.2f}" for v in r["contrast"].get("original", [])) or "-",
            "fused": fmt(r["fused"]), "repair": fmt(r["repair"]) + f" ({r['repair']['returned']})",
            "second repair": fmt(r["second"]), "s": sum(r["seconds"].values())} for r in p["models"]]
    lines = [*heading("After the repair: a sinusoid stripe toward the class the suspect missed (Fashion-MNIST zoos)",
                      p, "Here: ACC / acc_t (clean accuracy on the target class) / ASR / DER, and the `target` "
                         "column; the scans read no data."),
             f"A second repair (the stripe class guarded too) runs when the stripe contrast is at least "
             f"{p['second_at']}.", "",
             markdown_table(per, list(per[0])) if per else "(none)", "",
             f"Machine: {p['environment'].get('platform', '')}, {p['threads']} thread(s), shared 2-core CPU."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--eval-limit", type=int, default=5000)
    ap.add_argument("--scan-inputs", type=int, default=512, help="transfer-set inputs each scan uses (default 512)")
    ap.add_argument("--phases", type=int, default=8, help="sinusoid phases per frequency (default 8)")
    ap.add_argument("--scans", type=lambda v: tuple(v.split(",")), default=("original", "fused", "distilled"),
                    help="models scanned (default original,fused,distilled; the distilled one is always needed)")
    ap.add_argument("--second-at", type=float, default=0.2,
                    help="stripe contrast from which the second repair runs (default 0.2)")
    return run_models(ap, argv, STEM, "repair_stripe_explore.py", write_markdown, explore, fields)


if __name__ == "__main__":
    sys.exit(main())
