"""DEVELOPMENT probe (ORACLE): is the repaired model's target class gone, or only its logit held down?

The data-free repair (:func:`otbr.repair.repair`) ends with clean accuracy 0 on the suspected target class on every
zoo model it cleaned. This probe asks whether the class's features survive under a suppressed output: for each
model it prunes at the automatic γ the repair uses (``repair_bench.auto_gammas``: no lean, with the selection's
suspect), runs the default repair, then adds a constant δ to the suspect's logit and measures, on the clean and
the poisoned test sets, ACC, the target class's clean accuracy (acc_t), the ASR and the share of clean non-target
images sent to the target (real FP). Beside them, with no data: the share of the original's inversions of the
other classes that the biased model sends to the suspect (syn FP) — the only signal a data-free rule for δ could
read. Every row is scored on the poisoned test set: reading a δ off this table is an ORACLE choice.

Usage:
    python benchmarks/repair_bias_explore.py --models main:vgg11-badnets,second:vgg11-blended-t5 [--threads 1]

Writes ``benchmarks/results/repair-bias-explore-fmnist.{md,json}`` (repaired models are cached in
``--cache``, default ``/tmp/otbr-repair-bias``).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from explore_cli import heading, model_specs, parser, save, start
from repair_bench import auto_gammas
from zoo import FOLDERS

from otbr.attacks import attack_from_config
from otbr.data import load_dataset
from otbr.defenses.otbr import OTBR
from otbr.metrics import accuracy
from otbr.models import load_model, save_model
from otbr.pixels import as_float
from otbr.pruning import global_topk, prune_neurons
from otbr.repair import repair
from otbr.report import ORACLE_NOTE, environment, markdown_table
from otbr.synthesis import synthesize

log = logging.getLogger("repair_bias_explore")
ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
#: What the committed run shows (written after reading it; ORACLE for its four models).
READING = (
    "Reading (run of 2026-11-23). The class is held down, not gone, and so is the backdoor: on all four models a "
    "shift of the suspect's logit brings the ASR back (VGG BadNets 8.8 % at δ 7, VGG Blended-t5 7.0 % at δ 7, "
    "Blended 19.8 % at δ 12, BadNets 12.2 % at δ 16) — the repair's ASR 0 rests partly on the target logit being "
    "pushed down by 6 to 16 logits, with the trigger's features still in the network. Only on VGG BadNets does the "
    "class come back first (δ 7: ACC 84.00, acc_t 68.05, ASR 8.84 against 78.84 / 0.00 / 0.00 at δ 0); on VGG "
    "Blended-t5 the ASR rises with acc_t, on the two PreAct models before it (acc_t ≤ 2.8 % up to δ 16). The "
    "data-free signal (syn FP) stays at 0 on the three models where the backdoor comes first until far past the "
    "point where it has, so it cannot set δ. No bias is added by the repair."
)
#: where the repaired models are kept between runs (``repair_finetune_explore.py`` shares it)
CACHE = Path("/tmp/otbr-repair-bias")
DELTAS = (0.0, 2.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0, 12.0, 14.0, 16.0)


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(as_float(b)) for b in x.split(512)])


def repaired(zoo: str, name: str, cache: Path) -> tuple[torch.nn.Module, torch.nn.Module, Any, float, int, float]:
    """The original, its default repair at the repair's automatic γ (cached), the meta, γ, suspect, repair seconds."""
    model, meta = load_model(ROOT.parent / FOLDERS[zoo] / f"{name}.safetensors")
    gamma, suspect = auto_gammas()[(zoo, name)]
    path = cache / f"{zoo}-{name}.safetensors"
    if path.is_file():
        fixed, fmeta = load_model(path)
        return model, fixed, meta, gamma, suspect, float(fmeta.history[-1].get("repair_s", float("nan")))
    d = OTBR(gamma=gamma, input_shape=meta.input_shape, num_classes=meta.num_classes, progress=False)
    masks = global_topk(d.scores(model), gamma)
    t0 = time.perf_counter()
    rr = repair(prune_neurons(model, masks), model, input_shape=meta.input_shape, masks=masks,
                num_classes=meta.num_classes, suspect=suspect, progress=False)
    secs = time.perf_counter() - t0
    save_model(rr.model, path, meta.derived({"repair_s": round(secs, 1), "gamma": gamma, "suspect": suspect}))
    return model, rr.model, meta, gamma, suspect, secs


def sweep(zoo: str, name: str, test: Any, cache: Path, limit: int) -> dict[str, Any]:
    original, fixed, meta, gamma, suspect, secs = repaired(zoo, name, cache)
    ps = attack_from_config(meta.attack).poison_test(test)
    target = int(ps.target)
    x, y = test.x[:limit], test.y[:limit]
    lc, lp = logits(fixed, x), logits(fixed, ps.x[:limit])
    syn = synthesize(original, 500, meta.input_shape, num_classes=meta.num_classes, steps=100, seed=7,
                     progress=False)
    ls, other = logits(fixed, syn.x), syn.y != suspect
    rows = []
    for delta in DELTAS:
        shift = torch.zeros(meta.num_classes)
        shift[suspect] = delta
        pc, pp, pss = (lc + shift).argmax(1), (lp + shift).argmax(1), (ls + shift).argmax(1)
        rows.append({"delta": delta, "acc": round(100 * float((pc == y).float().mean()), 2),
                     "acc_t": round(100 * float((pc[y == target] == target).float().mean()), 2),
                     "asr": round(100 * float((pp == target).float().mean()), 2),
                     "real_fp": round(100 * float((pc[y != target] == target).float().mean()), 2),
                     "syn_fp": round(100 * float((pss[other] == suspect).float().mean()), 2)})
    orig_acc = round(100 * accuracy(original, x, y), 2)
    return {"zoo": zoo, "model": name, "gamma": gamma, "suspect": suspect, "target": target,
            "original_acc": orig_acc, "repair_s": round(secs, 1), "rows": rows}


def write_markdown(payload: dict[str, Any], path: Path) -> None:
    lines = [*heading("Is the repaired target class gone, or only held down? (suspect-logit bias, ORACLE probe)",
                      payload, "Every row here is."),
             "Each model: OTBR pruning at the γ the repair uses (no lean) with the selection's suspect, the default "
             "repair (150 steps), then +δ on the suspect's logit. `real FP`: clean non-target images sent to the "
             "target; `syn FP`: the original's inversions of the other classes sent to the suspect (data-free).",
             ""]
    for m in payload["models"]:
        lines += [f"## {m['zoo']}:{m['model']} (γ {m['gamma']}, target {m['target']}, suspect {m['suspect']}, "
                  f"original ACC {m['original_acc']}, repair {m['repair_s']} s)", "",
                  markdown_table(m["rows"], ["delta", "acc", "acc_t", "asr", "real_fp", "syn_fp"]), ""]
    lines += [READING, "", f"Machine: {payload['environment'].get('platform', '')}, {payload['threads']} thread(s)."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--eval-limit", type=int, default=5000)
    ap.add_argument("--cache", type=Path, default=CACHE)
    args = ap.parse_args(argv)
    path = RESULTS / "repair-bias-explore-fmnist.json"
    if start(args, path, write_markdown):
        return 0
    specs = model_specs(ap, args.models)
    args.cache.mkdir(parents=True, exist_ok=True)
    test = load_dataset("fashion-mnist", "test")
    models = [sweep(zoo, name, test, args.cache, args.eval_limit) for zoo, name in specs]
    payload = {"command": "python benchmarks/repair_bias_explore.py " + " ".join(argv or sys.argv[1:]),
               "eval_limit": args.eval_limit, "threads": args.threads, "models": models,
               "environment": environment(), "oracle_note": ORACLE_NOTE}
    save(path, payload, write_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
