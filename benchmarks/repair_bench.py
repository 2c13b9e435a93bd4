"""Data-free repair after OTBR pruning, against pruning alone and the published / default fusion.

For every model: one random-unlearning run (no data), pruning at γ (the automatic choice recorded in
``auto-otbr-fmnist.json`` when present, else ``--gamma``), then four data-free models — pruning alone, the
published fusion (λ = 0.5), otbr's default fusion, and the repair (:func:`otbr.repair.repair`: distillation
of the original on BatchNorm-inverted inputs, pruned neurons held at zero, the suspected target capped) —
each scored on the test set (the only use of data). Wall times are of this machine (2 shared CPU cores).

Usage:
    python benchmarks/repair_bench.py [--zoo main|second|third|fourth] [--only NAME,...] [--steps 150] [--synthetic 512]
                                      [--eval-limit 5000] [--threads 1] [--workers 1] [--append]

Writes ``benchmarks/results/repair-fmnist.{md,json}``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import inspect
import json
import logging
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from auto_bench import collapse_limit_arg
from zoo import FOLDERS

from otbr.attacks import attack_from_config
from otbr.data import load_dataset
from otbr.defenses.otbr import GAMMA_GRID, OTBR
from otbr.fusion import fuse
from otbr.metrics import accuracy, der, evaluate
from otbr.models import load_model
from otbr.pruning import global_topk, prune_neurons
from otbr.repair import repair
from otbr.report import environment, markdown_table, write_json
from otbr.scans import unguarded_class
from otbr.selection import COLLAPSE_LIMIT, pick, within_collapse_limit

log = logging.getLogger("repair_bench")

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
#: zoo name → model folder, from the zoo definitions in ``benchmarks/zoo.py``
ZOOS = {z: ROOT.parent / folder for z, folder in FOLDERS.items()}
COLUMNS = ["model", "gamma", "gamma_from", "series", "acc", "acc_t", "asr", "ra", "der", "acc_loss", "wall_s",
           "suspect", "target", "check", "stripe"]
SERIES = ("prune", "fusion-paper", "fusion-default", "distilled", "repair")


def pct(v: float | None) -> float | None:
    return None if v is None else round(100 * v, 2)


#: where the recorded automatic choices are read, in order: the single-set run first (the repair runs before
#: 2026-11-23 used it), then the three-set default's rows for the models it lacks (the fifth and sixth zoos)
AUTO_FILES = ("auto-otbr-fmnist.json", "auto-otbr-repeats3-fmnist.json")


def auto_choices(rule: str = "no-lean", files: tuple[str, ...] | None = None,
                 collapse_limit: float | None = COLLAPSE_LIMIT) -> dict[tuple[str, str], tuple[float, int, str]]:
    """Per zoo model, the automatic γ recorded in the first of ``files`` (default :data:`AUTO_FILES`) that has
    it, the selection's suspect and the file: with ``rule="no-lean"`` (the default) the choice without the lean
    toward pruning — what ``OTBR(repair_steps=…)`` picks — with ``rule="lean"`` the fused output's
    (``otbr.selection.OTBR_LEAN``). Where the collapse guard (``collapse_limit``, OTBR's default; ``None``: none)
    leaves a candidate out, the choice is re-made among the others from the stored estimates, as the selector
    makes it; rows without stored disagreement are read as recorded."""
    out: dict[tuple[str, str], tuple[float, int, str]] = {}
    for name in files or AUTO_FILES:
        path = RESULTS / name
        if not path.is_file():
            continue
        for m in json.loads(path.read_text())["models"]:
            if (m["zoo"], m["model"]) in out:
                continue
            if rule == "lean":
                value = m["auto"]["value"]
            elif "repeats" in m:  # three-set rows: the averaged estimates' choice with no lean
                value = pick(m["candidates"], 0.0)["value"]
            else:
                value = (m.get("before_lean") or m["auto"])["value"]
            rows = m.get("candidates") or []
            if collapse_limit is not None and rows and all(r.get("clean_disagreement_est") is not None for r in rows):
                kept = within_collapse_limit(rows, 100 * collapse_limit, key="clean_disagreement_est")
                if len(kept) < len(rows):
                    value = pick(kept, 100 * m.get("lean", 0.0) if rule == "lean" else 0.0)["value"]
            out[(m["zoo"], m["model"])] = (value, m["suspected_target"], name)
    return out


def auto_gammas(rule: str = "no-lean") -> dict[tuple[str, str], tuple[float, int]]:
    """:func:`auto_choices` without the file and without the collapse guard (as the explore scripts that read it
    ran, before the guard): per zoo model, ``(γ, suspect)``."""
    return {k: v[:2] for k, v in auto_choices(rule, collapse_limit=None).items()}


def stepped(gamma: float, up: int) -> float:
    """``up`` steps above ``gamma`` on the automatic selection's grid (its top at most): "prune harder, then
    repair" — a rule fixed before looking at a model, not a choice made with its poisoned test set."""
    grid = sorted(GAMMA_GRID)
    return grid[min(grid.index(gamma) + up, len(grid) - 1)]


def run_model(zoo: str, name: str, args, test, chosen) -> list[dict[str, Any]]:
    model, meta = load_model(ZOOS[zoo] / f"{name}.safetensors", device=args.device)
    ps = attack_from_config(meta.attack).poison_test(test)
    n = args.eval_limit or None
    sets = ((test.x[:n], test.y[:n]), (ps.x[:n], ps.y_true[:n], int(ps.target)))
    base = evaluate(model, *sets)
    on_t = test.y[:n] == int(ps.target)  # the target class's clean images: how much of that class a defense keeps
    xt, yt = test.x[:n][on_t], test.y[:n][on_t]
    gamma, suspect, source = chosen.get((zoo, name), (args.gamma, None, None))
    src = f"auto ({args.auto_rule}, {source})" if (zoo, name) in chosen else "--gamma"
    if args.step_up and (zoo, name) in chosen:
        gamma, src = stepped(gamma, args.step_up), f"auto +{args.step_up} step(s)"
    if args.gamma_cap is not None and (zoo, name) in chosen and gamma > args.gamma_cap:
        gamma, src = args.gamma_cap, f"{src}, capped at {args.gamma_cap:g}"
    if args.start_gamma is not None:  # one point of the γ grid, whatever the automatic choice (repair_grid.py)
        gamma, src = args.start_gamma, f"grid point {args.start_gamma:g} (not a choice)"
    t0 = time.perf_counter()
    d = OTBR(gamma=gamma, input_shape=meta.input_shape, num_classes=meta.num_classes, progress=False)
    scores = d.scores(model)
    scores.unlearn = None
    masks = global_topk(scores, gamma)
    pruned = prune_neurons(model, masks)
    t_prune = time.perf_counter() - t0
    out = {"prune": (pruned, t_prune)}
    for variant in ("paper", "default"):
        t1 = time.perf_counter()
        out[f"fusion-{variant}"] = (fuse(pruned, model, scores, masks=masks, variant=variant).model,
                                    t_prune + time.perf_counter() - t1)
    t1 = time.perf_counter()
    rr = repair(pruned, model, input_shape=meta.input_shape, masks=masks, num_classes=meta.num_classes,
                suspect=suspect, synthetic=args.synthetic, steps=args.steps, time_budget=args.time_budget,
                fallback=out["fusion-default"][0],  # as OTBR(repair_steps=…) does since 2026-11-25
                adversarial=args.adversarial, scan_guard=not args.no_scan_guard, rebuild=args.rebuild, lr=args.lr,
                rebuild_teacher=args.rebuild_teacher, stripe_pass=args.stripe_pass,
                progress=False)
    t_repair = t_prune + time.perf_counter() - t1
    out["distilled"] = (rr.distilled, t_repair)  # the distillation without the backdoor check
    out["repair"] = (rr.model, t_repair)
    rows = [{"zoo": zoo, "model": name, "gamma": 0.0, "gamma_from": "-", "series": "original", "acc": pct(base.acc),
             "acc_t": pct(accuracy(model, xt, yt)), "asr": pct(base.asr), "ra": pct(base.ra), "der": None,
             "acc_loss": 0.0, "wall_s": None}]
    for series, (m, wall) in out.items():
        r = evaluate(m, *sets)
        rows.append({"zoo": zoo, "model": name, "gamma": gamma, "gamma_from": src, "series": series,
                     "acc": pct(r.acc), "acc_t": pct(accuracy(m, xt, yt)), "asr": pct(r.asr), "ra": pct(r.ra),
                     "der": pct(der(base.acc, base.asr, r.acc, r.asr)), "acc_loss": pct(base.acc - r.acc),
                     "wall_s": round(wall, 1)})
        log.info("%s %s: ACC %.2f ASR %.2f DER %.2f (%.0f s)", name, series, rows[-1]["acc"], rows[-1]["asr"],
                 rows[-1]["der"], wall)
    rows[-1]["repair_info"] = {k: v for k, v in rr.info.items() if k != "synthetic"}
    rows[-1]["suspect"], rows[-1]["target"] = rr.info["suspect"], int(ps.target)  # target: for reading only
    rows[-1]["check"] = check_text(rr.info["check"], kept="fused")
    rows[-1]["stripe"] = stripe_text(rr.info.get("stripe"))
    return rows


def stripe_text(stripe: dict[str, Any] | None) -> str:
    """The repair's stripe pass in a few words: ``off``; ``not run (patch reach 0.72)``; ``none (top 6: 0.12)``
    (scanned, nothing named); ``guarded 3 (0.41)`` (a second distillation with class 3 guarded too).

    Example:
        >>> stripe_text({"patch_reach": 0.3, "below": 0.5, "class": 2, "contrast": [0.0, 0.1, 0.41], "guarded": [6]})
        'guarded 2 (0.41)'
    """
    if stripe is None:
        return "off"
    if "contrast" not in stripe:
        return f"not run (patch reach {stripe['patch_reach']:.2f})"
    c = stripe["class"]
    if c is not None:
        return f"guarded {c} ({stripe['contrast'][c]:.2f})"
    top = unguarded_class(stripe["contrast"], stripe["guarded"], float("-inf"))  # the best unguarded, any contrast
    return "none" if top is None else f"none (top {top}: {stripe['contrast'][top]:.2f})"


def check_text(check: dict[str, Any] | None, kept: str = "pruned") -> str:
    """``kept fused: 0 (0.97→0.00→0.59)`` (original → pruned → distilled rate) when the check flagged classes
    (``kept``: the model returned instead; runs before 2026-11-25 kept the pruned one), else
    ``passed (max rise +0.08; suppressed: 0)``.

    Example:
        >>> check_text({"flagged": [0], "rate_before": [0.0], "rate_after": [0.59], "rate_original": [0.97]})
        'kept pruned: 0 (0.97→0.00→0.59)'
    """
    if check is None:
        return "off"
    before, after, orig = check["rate_before"], check["rate_after"], check.get("rate_original")

    def rates(c: int) -> str:
        return (f"{orig[c]:.2f}→" if orig else "") + f"{before[c]:.2f}→{after[c]:.2f}"

    if check["flagged"]:
        return f"kept {kept}: " + ", ".join(f"{c} ({rates(c)})" for c in check["flagged"])
    rise = max(range(len(after)), key=lambda c: after[c] - before[c])
    watched = "" if orig is None else "; suppressed: " + (", ".join(map(str, check["suppressed"])) or "none")
    return f"passed (max rise {after[rise] - before[rise]:+.2f} on {rise}{watched})"


def _work(zoo: str, name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One model in a worker process (its own torch threads and test set)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    chosen = auto_choices(args.auto_rule, args.auto_files, args.collapse_limit)
    return run_model(zoo, name, args, load_dataset("fashion-mnist", "test"), chosen)


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def mean(g: list[dict[str, Any]], key: str) -> float | None:
        vals = [r.get(key) for r in g]
        return None if any(v is None for v in vals) else statistics.fmean(vals)

    out = []
    for series in ("original", *SERIES):
        g = [r for r in rows if r["series"] == series]
        if g:
            out.append({"series": series, "models": len(g), "acc": mean(g, "acc"), "acc_t": mean(g, "acc_t"),
                        "asr": mean(g, "asr"), "der": mean(g, "der"), "acc_loss": mean(g, "acc_loss"),
                        "max_asr": max(r["asr"] for r in g), "mean_wall_s": mean(g, "wall_s")})
    return out


def _compared(path: str, models: set[tuple[str, str]]) -> list[str]:
    """The mean rows of an earlier result file over the same (zoo, model) pairs, for reading beside this run's."""
    prev = json.loads((ROOT.parent / path).read_text())  # relative paths are read from the repository root
    rows = [r for r in prev["rows"] if (r["zoo"], r["model"]) in models]
    name = Path(path).name
    if not rows:
        return ["", f"({name}, given as the earlier run to compare with, holds none of these models.)"]
    return ["", f"Earlier run over the same models ({name}, invariance weight {prev.get('adversarial', 0)}):", "",
            markdown_table(summary(rows), ["series", "models", "acc", "acc_t", "asr", "der", "acc_loss", "max_asr",
                                           "mean_wall_s"])]


def _wall_text(env: dict[str, Any]) -> str:
    if str(env.get("device", "cpu")).startswith("cuda"):
        return (f"Wall times include the shared unlearning and pruning and are of one {env.get('gpu', 'GPU')} "
                "(not the 2-core CPU of the other result files; the GPU's arithmetic also differs in rounding).")
    return ("Wall times include the shared unlearning and pruning; this machine's 2 CPU cores were shared with "
            "other jobs.")


def write_markdown(p: dict[str, Any], path: Path) -> None:
    lines = ["# Data-free repair after OTBR pruning (Fashion-MNIST)", "",
             f"Generated by `{p['command']}`. Evaluated on the first {p['eval_limit'] or 'all'} clean and triggered "
             "non-target test images (the only use of data; the defenses read none).",
             f"Repair: {p['steps']} distillation steps, {p['synthetic']} BatchNorm-inverted inputs, invariance phase "
             f"weight {p.get('adversarial', 0)} (`otbr.repair.repair(adversarial=…)`; 0 = plain distillation). "
             "γ per model: "
             "the automatic choice (no oracle) where "
             + " or ".join(f"`{f}`" for f in p.get("auto_files") or ("auto-otbr-fmnist.json",)) + " has one"
             + (f", then {p['step_up']} grid step(s) up ({', '.join(map(str, sorted(GAMMA_GRID)))}; "
                "`--step-up`: prune harder, then repair)" if p.get("step_up") else "")
             + (f", at most {p['gamma_cap']:g} (`--gamma-cap`: prune lighter, then repair)"
                if p.get("gamma_cap") is not None else "")
             + (", the scan guard on (`repair(scan_guard=True)`: the class the original's trigger scan reaches "
                "most easily is guarded as well as the suspect)" if p.get("scan_guard") else "")
             + (f", {p['rebuild']} images per guarded class inverted from the student after the invariance phase "
                "(`repair(rebuild=…)`)" if p.get("rebuild") else "")
             + ". " + _wall_text(p["environment"]), "",
             f"Repair settings (Adam lr {p.get('lr', 1e-4):g}, no input jitter, the suspected class's inversions "
             "left out, the rest of `otbr.repair.repair`'s defaults) were chosen on the BadNets model while "
             "watching its poisoned test set (see [repair-explore-fmnist.md](repair-explore-fmnist.md)): an "
             "ORACLE choice for `badnets`, every other model is held out. `suspect`: the class the repair guards "
             "(from the automatic γ selection when recorded); `target`: the real one, shown for reading only; "
             "`acc_t`: clean accuracy on the target class's test images (for reading: how much of that class a "
             "defense keeps).",
             *([" The invariance phase's settings (weight 0.5, radius 1.5, the first sixth of the steps) were chosen "
                "on `blended`, `badnets` and `sig` while watching their poisoned test sets (see "
                "[repair-invariance-explore-fmnist.md](repair-invariance-explore-fmnist.md)): ORACLE for those "
                "three; the other models are held out for it."] if p.get("adversarial") else []), "",
             "`distilled`: the distillation alone; `repair`: the same run with its data-free backdoor check "
             "(`otbr.repair.backdoor_check`: per class, the success rate of a small reverse-engineered trigger on "
             "the original, the pruned and the distilled model; a class the pruning suppressed (original → "
             "pruned down by ≥ 0.25) that rose again by ≥ 0.25 → the fused model (`fusion-default`, what OTBR "
             "returns then) is kept — before 2026-11-25 the pruned one, as the `check` column says; rows without an "
             "original's rate ran the earlier rule, any class up by ≥ 0.25). The `check` column shows the flagged "
             "classes with their rates (original→pruned→distilled), or the largest rise and the suppressed "
             "classes.", "",
             "Goal (issue 9): mean DER ≥ 95, mean ACC loss ≤ 2 points, no model above 10 % ASR, ≤ 10 min per model.",
             *(["", "Notes on this run:", ""] + [f"- {n}" for n in p["notes"]] if p.get("notes") else []),
             "", "## Mean", "",
             markdown_table(p["summary"], ["series", "models", "acc", "acc_t", "asr", "der", "acc_loss", "max_asr",
                                           "mean_wall_s"]),
             *(_compared(p["compare"], {(r["zoo"], r["model"]) for r in p["rows"]}) if p.get("compare") else []),
             "", "## Per model", "", markdown_table(p["rows"], COLUMNS), "",
             f"Machine: {p['environment'].get('platform', '')}, {p['threads']} thread(s), device "
             f"{p['environment'].get('gpu', p['environment'].get('device', 'cpu'))}."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", choices=sorted(ZOOS), default="main")
    ap.add_argument("--only", default="badnets,blended,trojan",
                    help="model names of --zoo, or ZOO:NAME (e.g. second:badnets-t3), comma-separated")
    ap.add_argument("--gamma", type=float, default=0.1, help="γ where no automatic choice is recorded")
    ap.add_argument("--steps", type=int, default=inspect.signature(repair).parameters["steps"].default,
                    help="distillation steps (default: the library's)")
    ap.add_argument("--synthetic", type=int, default=512)
    ap.add_argument("--time-budget", type=float, default=None)
    ap.add_argument("--adversarial", type=float, default=inspect.signature(repair).parameters["adversarial"].default,
                    help="weight of the repair's invariance phase (0: plain distillation; default: the library's)")
    ap.add_argument("--compare", default=None,
                    help="an earlier result file whose mean rows are shown beside this run's (for reading)")
    ap.add_argument("--eval-limit", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--auto-rule", choices=("no-lean", "lean"), default="no-lean",
                    help="which recorded automatic γ to start from: without the lean toward pruning (what OTBR "
                         "picks when the repair replaces the fusion; the default) or with it (the fused output's)")
    ap.add_argument("--auto-files", type=lambda v: tuple(v.split(",")), default=None,
                    help="comma-separated auto_bench result files (in benchmarks/results) to read the automatic γ and "
                    f"suspect from, the first that has a model winning (default {','.join(AUTO_FILES)})")
    ap.add_argument("--collapse-limit", type=collapse_limit_arg, default=COLLAPSE_LIMIT,
                    help=f"the selector's collapse guard, re-applied to the stored estimates (default: OTBR's, "
                    f"{COLLAPSE_LIMIT:g}; 1: none, as the runs before the guard)")
    ap.add_argument("--step-up", type=int, default=0,
                    help="prune this many grid steps above the automatic γ (0: the automatic γ itself)")
    ap.add_argument("--gamma-cap", type=float, default=None,
                    help="prune at most this γ (the automatic choice where it is lower): 'prune lighter, then "
                         "repair', a rule fixed before looking at a model")
    ap.add_argument("--start-gamma", type=float, default=None,
                    help="prune (and start the repair) at this γ on every model, whatever its automatic choice: one "
                         "point of the grid, for reading the repair's γ-grid oracle (benchmarks/repair_grid.py)")
    ap.add_argument("--stripe-pass", action=argparse.BooleanOptionalAction,
                    default=inspect.signature(repair).parameters["stripe_pass"].default,
                    help="the repair's stripe pass (otbr.repair.repair(stripe_pass=…)); default: the repair's")
    ap.add_argument("--no-scan-guard", action="store_true",
                    help="do not also guard the class the original's trigger scan reaches most easily")
    ap.add_argument("--rebuild", type=int, default=inspect.signature(repair).parameters["rebuild"].default,
                    help="images per guarded class inverted from the student after the invariance phase "
                         "(repair(rebuild=…); default: the library's)")
    ap.add_argument("--rebuild-teacher", choices=("original", "self"), default="original",
                    help="who labels the rebuilt images (repair(rebuild_teacher=…))")
    ap.add_argument("--lr", type=float, default=inspect.signature(repair).parameters["lr"].default,
                    help="the distillation's Adam learning rate (default: the library's)")
    ap.add_argument("--device", default="cpu", help="cpu (the default: the wall times are the CPU's), cuda, …")
    ap.add_argument("--workers", type=int, default=1, help="models run in this many processes at once")
    ap.add_argument("--json", default=str(RESULTS / "repair-fmnist.json"), help="result file (the .md goes beside it)")
    ap.add_argument("--append", action="store_true", help="keep other models' rows of an existing result file")
    ap.add_argument("--note", action="append", default=[], help="a remark on this run for the result file")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    jpath = Path(args.json)
    command = "python benchmarks/repair_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows: list[dict[str, Any]] = []
    jobs = [tuple(n.split(":", 1)) if ":" in n else (args.zoo, n) for n in args.only.split(",") if n]
    unknown = [f"{z}:{n}" for z, n in jobs if not (ZOOS.get(z, ROOT / "-") / f"{n}.safetensors").is_file()]
    if unknown:
        log.error("no such zoo model: %s", ", ".join(unknown))
        return 2
    if args.append and jpath.is_file():
        prev = json.loads(jpath.read_text())
        # with --start-gamma a file holds several grid points per model: only this point's rows are replaced
        rows = [r for r in prev["rows"] if (r["zoo"], r["model"]) not in set(jobs)
                or (args.start_gamma is not None and r["series"] != "original" and r["gamma"] != args.start_gamma)]
        args.note = [*prev.get("notes", []), *args.note]
        command = f"{prev['command']}, then {command}"
    order = {job: i for i, job in enumerate(jobs)}
    with cf.ProcessPoolExecutor(max(1, args.workers), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_work, zoo, name, args) for zoo, name in jobs]
        done: list[list[dict[str, Any]]] = []
        for fut in cf.as_completed(futures):
            done.append(fut.result())
            done.sort(key=lambda rs: order[(rs[0]["zoo"], rs[0]["model"])])
            payload = {"command": command.strip(), "steps": args.steps, "synthetic": args.synthetic,
                       "adversarial": args.adversarial, "compare": args.compare, "step_up": args.step_up,
                       "gamma_cap": args.gamma_cap, "start_gamma": args.start_gamma,
                       "scan_guard": not args.no_scan_guard, "auto_rule": args.auto_rule,
                       "collapse_limit": args.collapse_limit,
                       **({"auto_files": list(args.auto_files)} if args.auto_files else {}), "rebuild": args.rebuild,
                       "lr": args.lr, "rebuild_teacher": args.rebuild_teacher,
                       "eval_limit": args.eval_limit, "threads": args.threads, "workers": args.workers,
                       "rows": rows + [r for rs in done for r in rs], "environment": environment(args.device),
                       "notes": args.note}
            payload["summary"] = summary(payload["rows"])
            write_json(jpath, payload)
            write_markdown(payload, jpath.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
