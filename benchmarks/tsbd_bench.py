"""TSBD on the Fashion-MNIST zoo: the default setting, the neuron-ratio grid (ORACLE), the paper's ablation,
and timings (activeness-aware vs vanilla epoch; TSBD end to end vs the published procedure).

Every number comes from the zoo models in ``benchmarks/zoo/`` (train them with
``python benchmarks/zoo.py``); missing models are skipped with a warning. Each model
gets a 5 % seeded (seed 0) clean subset of the Fashion-MNIST training split and
**one** clean-unlearning run, shared by all rows of that model:

* TSBD at the published fixed n = 0.1 (m = 0.7, activeness-aware fine-tuning, ``--ft-epochs``) — no oracle
  (the toolkit's default is now ``neuron_ratio="auto"``, measured by ``benchmarks/auto_bench.py --method tsbd``);
* the stage-1 (zero-reinitialised) model at every n of ``--grid`` — ORACLE rows except n = 0.1;
* with ``--grid-ft MODELS``: full TSBD at every n of the grid for those models — ORACLE rows;
* the ablation on ``--ablation MODELS``: stage 1 only / stage 1 + vanilla fine-tuning / stage 1 +
  activeness-aware fine-tuning (= the default row), plus vanilla fine-tuning of the ORIGINAL backdoored
  model (the plain-FT baseline), all with ``--ft-epochs`` epochs;
* on the first model: per-epoch timings, interleaved (vanilla, activeness, copy-per-batch activeness)
  ``--timing-repeats`` times on copies of the stage-1 model, and the end-to-end comparison with a
  re-enactment of the published procedure (a deep copy of the model per batch for the perturbation, the
  full published ratio sweep n ∈ {0.01, 0.05, 0.1, 0.2, …, 0.9} each with a test evaluation); the
  re-enactment is measured on one epoch per repeat and scaled to ``--ft-epochs`` × 11 ratios (stated in the
  report).

Budget. Unit costs per model (width-16 PreAct-ResNet18, 3 000 clean images): U = clean unlearning (tens of epochs
at the ≤ 10 % stop; the field notes measured 38 epochs ≈ 160 s on 2 free cores), A / V = one activeness-aware /
vanilla epoch (A ≈ 2 V, V ≈ 4–5 s at that speed), E = one evaluation (10 000 clean + 9 000 triggered images,
≈ 10 s). The default plan costs per model U + 20 A + 6 E, plus 2 × 20 V + 2 E on each ablation model and
3 × (V + 2 A) of timing on the first model: ≈ 50 min for the 7 models at field-note speed, so the requested
25 min does **not** hold with the published 20 fine-tuning epochs. ``--ft-epochs 5 --ablation badnets`` brings it
to ≈ 28 min; unlearning alone (≈ 15 min for 7 models) cannot be cut without changing the method (a lower
``--unlearn-cap`` is reported as ``hit_cap``). On a CPU shared with other jobs everything is several times
slower; the log prints the projected remaining time after each model.

Usage:
    python benchmarks/tsbd_bench.py [--only badnets,blended] [--ft-epochs 20] [--grid 0.01,0.05,0.1,0.2]
                                    [--ablation badnets,blended,wanet] [--grid-ft badnets] [--quick]

``--quick`` (smoke run: 256 clean images, 1 fine-tuning epoch, unlearning cap 3 epochs, 1 000 test images)
writes ``tsbd-fmnist-quick.{md,json}`` so it never overwrites the real results ``tsbd-fmnist.{md,json}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from otbr.activeness import finetune
from otbr.attacks import attack_from_config
from otbr.data import load_dataset, sample_subset
from otbr.defenses.tsbd import TSBD
from otbr.metrics import der, evaluate
from otbr.models import load_model
from otbr.report import ORACLE_NOTE, environment, markdown_table, write_json

log = logging.getLogger("tsbd_bench")

ROOT = Path(__file__).resolve().parent
ZOO = ROOT / "zoo"
RESULTS = ROOT / "results"
MODELS = ["badnets", "blended", "sig", "wanet", "lf", "trojan", "vgg11-badnets"]
GRID = [0.01, 0.05, 0.1, 0.2]
ABLATION = ["badnets", "blended", "wanet"]
DEFAULT_N = 0.1
PUBLISHED_SWEEP = [0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
COLUMNS = ["model", "series", "neuron_ratio", "ft_epochs", "acc", "asr", "ra", "der", "oracle"]


def pct(v: float | None) -> float | None:
    return None if v is None else 100 * v


class Scorer:
    """Evaluates models of one zoo entry against its clean and poisoned test sets."""

    def __init__(self, name: str, sets: tuple, base) -> None:
        self.name, self.sets, self.base = name, sets, base
        self.seconds: list[float] = []

    def row(self, series: str, net, *, n: float | None, ft_epochs: int, oracle: bool, **extra: Any) -> dict:
        t0 = time.perf_counter()
        m = evaluate(net, *self.sets)
        self.seconds.append(time.perf_counter() - t0)
        b = self.base
        return {"model": self.name, "series": series, "neuron_ratio": n, "ft_epochs": ft_epochs, "acc": pct(m.acc),
                "asr": pct(m.asr), "ra": pct(m.ra), "der": None if series == "original" else
                pct(der(b.acc, b.asr, m.acc, m.asr)), "oracle": oracle, **extra}


def epoch_timing(stage1, x, y, ft_kw: dict[str, Any], repeats: int) -> dict[str, Any]:
    """Interleaved single-epoch timings of vanilla, activeness (in place) and copy-per-batch activeness FT."""
    times: dict[str, list[float]] = {"vanilla": [], "activeness": [], "copy_per_batch": []}
    for _ in range(repeats):
        for label, mode, copy_pb in (("vanilla", "vanilla", False), ("activeness", "activeness", False),
                                     ("copy_per_batch", "activeness", True)):
            m = copy.deepcopy(stage1)
            rep = finetune(m, x, y, mode=mode, epochs=1, _copy_per_batch=copy_pb, progress=False, **ft_kw)
            times[label].append(rep.epoch_seconds[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"repeats": repeats, "epoch_s": times, "median_epoch_s": med,
            "ratio_activeness_vs_vanilla": med["activeness"] / med["vanilla"],
            "ratio_copy_per_batch_vs_in_place": med["copy_per_batch"] / med["activeness"]}


def end_to_end(res, epochs: int, timing: dict[str, Any], eval_s: float) -> dict[str, Any]:
    """TSBD (measured) vs the published procedure (scaled from measured per-epoch and per-stage times)."""
    t = res.timings
    ours = t["unlearn"] + t["score"] + t["reinit"] + t["finetune"]
    k = len(PUBLISHED_SWEEP)
    published = (t["unlearn"] + t["score"]
                 + k * (t["reinit"] + epochs * timing["median_epoch_s"]["copy_per_batch"] + eval_s))
    published_no_eval = published - k * eval_s
    return {"tsbd_s": ours, "published_estimate_s": published, "published_without_evaluations_s": published_no_eval,
            "ratio": published / ours, "ratio_without_evaluations": published_no_eval / ours,
            "published_sweep": PUBLISHED_SWEEP, "eval_s": eval_s,
            "method": (f"published = unlearning + {k} ratios × (reinit + {epochs} copy-per-batch activeness epochs "
                       f"+ one test evaluation); the copy-per-batch epoch is the median of "
                       f"{timing['repeats']} measured single epochs, scaled to {epochs} epochs and {k} ratios")}


def run_model(name: str, args, subset, test, plan: dict[str, Any], rows: list, extra: dict) -> None:
    path = args.zoo / f"{name}.safetensors"
    model, meta = load_model(path, device="cpu")
    ps = attack_from_config(meta.attack).poison_test(test)
    lim = args.eval_limit
    pois = ps.as_tuple()
    sets = ((test.x[:lim], test.y[:lim]), (pois[0][:lim], pois[1][:lim], pois[2]))
    base = evaluate(model, *sets)
    sc = Scorer(name, sets, base)
    rows.append(sc.row("original", model, n=None, ft_epochs=0, oracle=False))
    x, y = subset.x, subset.y
    tsbd = TSBD(ft_epochs=args.ft_epochs, unlearn_max_epochs=args.unlearn_cap, seed=0, progress=args.progress)
    grid = sorted(set(args.grid) | {DEFAULT_N})
    ft_ratios = grid if name in args.grid_ft else [DEFAULT_N]
    default_res = stage1_default = None
    for n, stage1, res in tsbd.sweep(model, subset, grid, finetune_ratios=ft_ratios):
        oracle = n != DEFAULT_N
        rows.append(sc.row("stage1", stage1, n=n, ft_epochs=0, oracle=oracle))
        if res.info["finetune"] != "none":
            rows.append(sc.row("tsbd", res.model, n=n, ft_epochs=args.ft_epochs, oracle=oracle))
        if n == DEFAULT_N:
            default_res, stage1_default = res, stage1
        log.info("%s: n=%.2f done (%d zeroed sub-weights)", name, n, res.info["zeroed_subweights"])
    assert default_res is not None and stage1_default is not None
    info = default_res.info
    extra["stage1"][name] = {k: info[k] for k in ("unlearn_epochs", "unlearn_accuracy", "hit_cap", "selected_neurons",
                                                  "num_neurons", "selected_subweights", "zeroed_subweights", "notes")}
    extra["stage1"][name]["timings_s"] = {k: round(v, 2) for k, v in default_res.timings.items()}
    ft_kw = {"lr": tsbd.ft_lr, "weight_decay": tsbd.weight_decay, "batch_size": tsbd.batch_size, "r": tsbd.r,
             "alpha": tsbd.alpha, "seed": 0}
    if name in args.ablation:
        m = copy.deepcopy(stage1_default)
        rep_v = finetune(m, x, y, mode="vanilla", epochs=args.ft_epochs, progress=args.progress, **ft_kw)
        rows.append(sc.row("stage1+vanilla", m, n=DEFAULT_N, ft_epochs=args.ft_epochs, oracle=False))
        m = copy.deepcopy(model)
        finetune(m, x, y, mode="vanilla", epochs=args.ft_epochs, progress=args.progress, **ft_kw)
        rows.append(sc.row("plain-ft", m, n=None, ft_epochs=args.ft_epochs, oracle=False))
        extra["ablation_epoch_s"][name] = {"activeness": statistics.median(info["finetune_epoch_s"]),
                                           "vanilla": statistics.median(rep_v.epoch_seconds)}
        log.info("%s: ablation done", name)
    if not extra["timing"]:
        timing = epoch_timing(stage1_default, x, y, ft_kw, args.timing_repeats)
        eval_s = statistics.median(sc.seconds)
        extra["timing"] = {"model": name, **timing, "end_to_end": end_to_end(default_res, args.ft_epochs, timing,
                                                                              eval_s)}
        log.info("%s: activeness/vanilla epoch %.2f×", name, timing["ratio_activeness_vs_vanilla"])
    plan["done"] += 1


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over models: default-n rows (no oracle) and each series' best-DER n per model (ORACLE)."""
    out = []
    models = sorted({r["model"] for r in rows})
    for series in ("stage1", "tsbd"):
        at_default = [r for r in rows if r["series"] == series and r["neuron_ratio"] == DEFAULT_N]
        best = []
        for m in models:
            cand = [r for r in rows if r["series"] == series and r["model"] == m]
            if len(cand) > 1:
                best.append(max(cand, key=lambda r: r["der"]))
        for label, sel in ((f"n = {DEFAULT_N} (no oracle)", at_default), ("best n per model (ORACLE)", best)):
            if sel:
                out.append({"series": series, "selection": label, "models": len(sel),
                            "acc": statistics.fmean(r["acc"] for r in sel),
                            "asr": statistics.fmean(r["asr"] for r in sel),
                            "ra": statistics.fmean(r["ra"] for r in sel),
                            "der": statistics.fmean(r["der"] for r in sel), "max_asr": max(r["asr"] for r in sel)})
    return out


def write_markdown(p: dict[str, Any], path: Path) -> None:
    t = p.get("timing") or {}
    e2e = t.get("end_to_end", {})
    rows = p["rows"]
    ablation = [r for r in rows if r["model"] in p["ablation_models"] and (
        r["series"] in ("original", "plain-ft", "stage1+vanilla") or
        (r["series"] in ("stage1", "tsbd") and r["neuron_ratio"] == DEFAULT_N))]
    default = [r for r in rows if r["series"] == "original" or
               (r["series"] == "tsbd" and r["neuron_ratio"] == DEFAULT_N)]
    lines = [
        "# TSBD on the Fashion-MNIST zoo",
        "",
        f"Generated by `{p['command']}` in {p['wall_s'] / 60:.1f} min (zoo from `python benchmarks/zoo.py`).",
        f"Clean subset: {p['clean_images']} images = {p['clean_ratio']:.1%} of the training split (seed 0). "
        f"Test: {p['n_test']} clean images; ASR/RA on the triggered non-target images. "
        f"TSBD settings: the published fixed n = {DEFAULT_N} (the toolkit's default n = auto is measured in "
        "[auto-tsbd-fmnist.md](auto-tsbd-fmnist.md)), m = 0.7, clean unlearning lr 1e-4 to ≤ 10 % subset accuracy "
        f"(cap {p['unlearn_cap']} epochs), activeness-aware fine-tuning {p['ft_epochs']} epochs (SGD 0.01, "
        "momentum 0.9, wd 5e-4, cosine, random crop 2 px), r = 0.05, α = 0.7, batch 128.",
        "Series: `stage1` = zero-reinitialised model (no fine-tuning); `tsbd` = stage 1 + activeness-aware FT; "
        "`stage1+vanilla` = stage 1 + plain SGD FT; `plain-ft` = plain SGD FT of the ORIGINAL backdoored model.",
        "",
        f"**{ORACLE_NOTE}** Rows with `oracle = True` (every n other than {DEFAULT_N}) are such rows; the "
        f"n = {DEFAULT_N} rows are fixed in advance.",
        "",
        "## Fixed n = 0.1, per model (no oracle)",
        "",
        markdown_table(default, COLUMNS),
        "",
        "## Mean over the zoo",
        "",
        markdown_table(p["summary"], ["series", "selection", "models", "acc", "asr", "ra", "der", "max_asr"]),
        "",
        "## Ablation (n = 0.1): does vanilla fine-tuning bring the backdoor back?",
        "",
        markdown_table(ablation, COLUMNS) if ablation else "(no ablation model ran)",
        "",
        "## Stage 1 facts",
        "",
        markdown_table([{"model": k, **{kk: vv for kk, vv in v.items() if kk != "timings_s"},
                         "unlearn_s": v["timings_s"].get("unlearn"), "finetune_s": v["timings_s"].get("finetune")}
                        for k, v in p["stage1"].items()],
                       ["model", "unlearn_epochs", "unlearn_accuracy", "hit_cap", "selected_neurons", "num_neurons",
                        "zeroed_subweights", "unlearn_s", "finetune_s"]),
        "",
        "## Timing",
        "",
    ]
    if t:
        med = t["median_epoch_s"]
        lines += [
            f"Model `{t['model']}`, one epoch on the clean subset, interleaved {t['repeats']}× (median): vanilla "
            f"{med['vanilla']:.2f} s, activeness-aware (in place) {med['activeness']:.2f} s, activeness-aware with a "
            f"deep copy per batch {med['copy_per_batch']:.2f} s. **Activeness / vanilla = "
            f"{t['ratio_activeness_vs_vanilla']:.2f}×** (goal ≤ 2.2×); copy-per-batch / in-place = "
            f"{t['ratio_copy_per_batch_vs_in_place']:.2f}×.",
            "",
            f"End to end: TSBD {e2e['tsbd_s']:.0f} s (measured: unlearning + scoring + reinit + fine-tuning) vs the "
            f"published procedure ≈ {e2e['published_estimate_s']:.0f} s (**{e2e['ratio']:.1f}×**; "
            f"{e2e['ratio_without_evaluations']:.1f}× without its per-ratio test evaluations). Estimated, not run: "
            f"{e2e['method']}.",
            "",
        ]
        if p["ablation_epoch_s"]:
            lines += ["Per-epoch medians inside the ablation runs (activeness from the default TSBD run, vanilla "
                      "from the stage1+vanilla run):", "",
                      markdown_table([{"model": k, **v, "ratio": v["activeness"] / v["vanilla"]}
                                      for k, v in p["ablation_epoch_s"].items()],
                                     ["model", "activeness", "vanilla", "ratio"]), ""]
    lines += [
        f"Machine: {p['environment']['platform']}, {p['environment']['threads']} threads, torch "
        f"{p['environment']['torch']} (shared CPU: timings are indicative).",
        "",
        "## All rows (ORACLE where `oracle = True`)",
        "",
        markdown_table(rows, COLUMNS),
        "",
    ]
    if p["skipped"]:
        lines += [f"Skipped (not in the zoo): {', '.join(p['skipped'])}.", ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated zoo model names")
    ap.add_argument("--ft-epochs", type=int, default=20)
    ap.add_argument("--grid", default=",".join(map(str, GRID)), help="neuron ratios of the stage-1 grid")
    ap.add_argument("--ablation", default=",".join(ABLATION), help="models that get the ablation ('' for none)")
    ap.add_argument("--grid-ft", default="", help="models that get full TSBD at every grid ratio")
    ap.add_argument("--unlearn-cap", type=int, default=100)
    ap.add_argument("--clean-ratio", type=float, default=0.05)
    ap.add_argument("--timing-repeats", type=int, default=3)
    ap.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N test images")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--zoo", type=Path, default=ZOO, help="folder of <name>.safetensors zoo models")
    ap.add_argument("--results", type=Path, default=RESULTS, help="output folder")
    ap.add_argument("--quick", action="store_true", help="tiny settings for a smoke run (separate output files)")
    ap.add_argument("--append", action="store_true",
                    help="merge into the existing results (same --ft-epochs, grid and eval limit): other models' rows "
                         "are kept, this run's models replaced")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    args.progress = sys.stderr.isatty()
    args.grid = [float(g) for g in args.grid.split(",") if g]
    args.ablation = [s for s in args.ablation.split(",") if s]
    args.grid_ft = [s for s in args.grid_ft.split(",") if s]
    clean_count = None
    if args.quick:
        args.ft_epochs, args.unlearn_cap, args.timing_repeats = 1, 3, 1
        args.eval_limit = args.eval_limit or 1000
        args.grid = [0.05, 0.1]
        clean_count = 256
    command = "python benchmarks/tsbd_bench.py" + ("" if not sys.argv[1:] else " " + shlex.join(sys.argv[1:]))
    names = args.only.split(",") if args.only else MODELS
    start = time.perf_counter()
    test = load_dataset("fashion-mnist", "test")
    train = load_dataset("fashion-mnist", "train")
    subset = sample_subset(train, count=clean_count, seed=0) if clean_count else \
        sample_subset(train, ratio=args.clean_ratio, seed=0)
    log.info("clean subset: %d images", len(subset))
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {"stage1": {}, "ablation_epoch_s": {}, "timing": {}}
    present = [n for n in names if (args.zoo / f"{n}.safetensors").is_file()]
    skipped = [n for n in names if n not in present]
    for n in skipped:
        log.warning("%s missing: run python benchmarks/zoo.py first; skipped", args.zoo / f"{n}.safetensors")
    plan = {"done": 0}
    prev_json = args.results / ("tsbd-fmnist-quick.json" if args.quick else "tsbd-fmnist.json")
    if args.append and prev_json.is_file():  # keep the measured timings; they are taken once, on one model
        extra["timing"] = json.loads(prev_json.read_text()).get("timing", {})
    for name in present:
        t0 = time.perf_counter()
        run_model(name, args, subset, test, plan, rows, extra)
        elapsed = time.perf_counter() - start
        left = len(present) - plan["done"]
        log.info("%s: %.0f s; projected remaining ≈ %.0f min", name, time.perf_counter() - t0,
                 elapsed / plan["done"] * left / 60)
    wall = time.perf_counter() - start
    ablation_models = [m for m in args.ablation if m in present]
    stem = "tsbd-fmnist-quick" if args.quick else "tsbd-fmnist"
    old_path = args.results / f"{stem}.json"
    if args.append and old_path.is_file():
        old = json.loads(old_path.read_text())
        if (old["ft_epochs"], old["grid"], old["n_test"]) != (args.ft_epochs, args.grid, len(test.y[:args.eval_limit])):
            raise SystemExit("--append: the existing results used other --ft-epochs, grid or eval limit")
        rows = [r for r in old["rows"] if r["model"] not in present] + rows
        for key in ("stage1", "ablation_epoch_s"):
            extra[key] = {**{k: v for k, v in old.get(key, {}).items() if k not in present}, **extra[key]}
        extra["timing"] = extra["timing"] or old.get("timing", {})
        ablation_models = [m for m in old.get("ablation_models", []) if m not in present] + ablation_models
        command = f"{old['command']}, then {command}"
        wall += old["wall_s"]
    payload = {"command": command, "wall_s": wall, "clean_images": len(subset),
               "clean_ratio": len(subset) / len(train), "n_test": len(test.y[:args.eval_limit]),
               "ft_epochs": args.ft_epochs, "unlearn_cap": args.unlearn_cap, "grid": args.grid,
               "default_neuron_ratio": DEFAULT_N, "ablation_models": ablation_models,
               "grid_ft_models": args.grid_ft, "rows": rows, "summary": summarise(rows), **extra,
               "skipped": skipped, "quick": args.quick, "environment": environment(), "oracle_note": ORACLE_NOTE}
    args.results.mkdir(parents=True, exist_ok=True)
    write_json(args.results / f"{stem}.json", payload)
    write_markdown(payload, args.results / f"{stem}.md")
    log.info("wrote %s.{md,json} in %.1f min", args.results / stem, payload["wall_s"] / 60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
