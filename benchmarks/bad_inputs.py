"""Run the real ``otbr`` command on each bad input and write the table of what the user sees.

Every case runs in a fresh scratch folder (relative paths, so the table does not depend on where it ran) and
records the exit status, the one error line (log lines aside), whether a traceback appeared, and whether any
output file was left behind. The table goes into ``docs/hardening.md``; ``tests/test_hardening.py`` checks
every row.

Usage:
    python benchmarks/bad_inputs.py [--out docs/hardening.md] [--otbr PATH/TO/otbr]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from otbr.attacks import create_attack
from otbr.models import ModelMeta, create_model, save_model

log = logging.getLogger("bad_inputs")

ROOT = Path(__file__).resolve().parents[1]
_LOG_LINE = re.compile(r"^[DIW] otbr[.\w]*: ")


@dataclasses.dataclass
class Case:
    """One bad input: what is tried, the command's arguments, and the files that must not appear."""

    what: str
    args: list[str]
    outputs: list[str] = dataclasses.field(default_factory=lambda: ["out.safetensors"])
    setup: str | None = None


class _Payload:
    """Unpickling calls ``open("PWNED", "w")``: proof that code ran, without a shell."""

    def __reduce__(self):
        return (open, ("PWNED", "w"))


def make_fixtures(d: Path) -> None:
    """A tiny model and dataset, and every bad variant the cases use (in folder ``d``)."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(40, 1, 8, 8, generator=g) * 255).to(torch.uint8).numpy()
    y = (torch.arange(40) % 4).numpy()
    np.savez(d / "tiny.npz", x=x, y=y)
    np.savez(d / "empty.npz", x=np.zeros((0, 1, 8, 8), np.uint8), y=np.zeros(0, np.int64))
    np.savez(d / "rgb.npz", x=np.zeros((8, 3, 8, 8), np.uint8), y=np.arange(8) % 4)
    np.savez(d / "ten-classes.npz", x=x, y=np.arange(40) % 10)
    torch.manual_seed(0)
    meta = ModelMeta(arch="tinycnn", arch_kwargs={"num_classes": 4, "in_channels": 1}, num_classes=4,
                     input_shape=(1, 8, 8), mean=(0.5,), std=(0.5,), dataset="npz:tiny.npz",
                     attack=create_attack("badnets", target=0).config())
    model = save_model(create_model("tinycnn", num_classes=4, in_channels=1), d / "model.safetensors", meta)
    raw = model.read_bytes()
    (d / "empty.safetensors").write_bytes(b"")
    (d / "truncated.safetensors").write_bytes(raw[: len(raw) // 2])
    (d / "corrupt.safetensors").write_bytes(bytes(range(256)) * 4)
    with safe_open(str(model), "pt") as fh:
        metadata = fh.metadata()
    state = load_file(str(model))
    for name, key, value in (("nan", "conv1.weight", float("nan")), ("inf", "fc.weight", float("inf"))):
        bad = dict(state)
        bad[key] = state[key].clone()
        bad[key].view(-1)[0] = value
        save_file(bad, str(d / f"{name}.safetensors"), metadata=metadata)
    mism = {k: v for k, v in state.items() if k != "fc.bias"}
    mism["extra.weight"] = torch.zeros(2)
    mism["conv1.weight"] = torch.zeros(3, 1, 3, 3)
    save_file(mism, str(d / "mismatch.safetensors"), metadata=metadata)
    doc = json.loads(metadata["otbr"])
    doc["arch"] = "resnet5000"
    save_file(state, str(d / "unknown-arch.safetensors"), metadata={"otbr": json.dumps(doc)})
    torch.save(create_model("tinycnn", num_classes=4, in_channels=1, width=8).state_dict(), d / "width8.pt")
    torch.save({"state_dict": _Payload()}, d / "evil.pt")
    good_pt = (d / "width8.pt").read_bytes()
    (d / "truncated.pt").write_bytes(good_pt[: len(good_pt) // 2])
    (d / "existing.safetensors").write_bytes(b"precious")
    (d / "evil_arch.py").write_text("open('PWNED', 'w').close()\ndef Net(**kw):\n    raise SystemExit\n")
    torch.save({"model": state, "model_name": "evil_arch.py:Net", "num_classes": 4}, d / "attack_result.pt")
    np.savez(d / "poisoned-float.npz", x=np.full((4, 1, 8, 8), 2.0, np.float32), y=np.array([1, 2, 3, 1]),
             target=np.int64(0))
    np.savez(d / "poisoned-labels.npz", x=np.zeros((4, 1, 8, 8), np.uint8), y=np.array([1, 2, 3, 9]),
             target=np.int64(0))
    neg = {k: v.clone() for k, v in state.items()}
    neg["bn1.running_var"][0] = -1.0
    save_file(neg, str(d / "negative-var.safetensors"), metadata=metadata)
    (d / "ro").mkdir()
    (d / "ro").chmod(0o500)


def cases(unwritable: str) -> list[Case]:
    """The bad inputs, in the order of the table."""
    defend = ["defend", "otbr", "model.safetensors"]
    return [
        Case("crafted pickle (payload writes a file), no --allow-pickle",
             ["defend", "otbr", "evil.pt", "--arch", "tinycnn", "--input-shape", "1,8,8", "-o", "out.safetensors"],
             ["out.safetensors", "PWNED"]),
        Case("unknown architecture in the file", ["evaluate", "unknown-arch.safetensors"]),
        Case("weights of another architecture (missing/unexpected keys, shapes)",
             ["defend", "otbr", "mismatch.safetensors", "-o", "out.safetensors"]),
        Case("wrong --arch-kwargs for a .pt state dict",
             ["evaluate", "width8.pt", "--arch", "tinycnn", "--input-shape", "1,8,8", "--arch-kwargs",
              '{"width": 4}', "--mean", "0.5", "--std", "0.5"]),
        Case("input shape the model cannot take",
             ["evaluate", "model.safetensors", "--input-shape", "3,8,8", "--mean", "0.5,0.5,0.5",
              "--std", "0.5,0.5,0.5"]),
        Case("dataset with other channels than the model", ["evaluate", "model.safetensors", "--data", "npz:rgb.npz"]),
        Case("dataset with more classes than the model outputs",
             ["evaluate", "model.safetensors", "--data", "npz:ten-classes.npz"]),
        Case("missing model file", ["defend", "otbr", "nope.safetensors", "-o", "out.safetensors"]),
        Case("empty (0 bytes) model file", ["defend", "otbr", "empty.safetensors", "-o", "out.safetensors"]),
        Case("truncated model file (first half)", ["defend", "otbr", "truncated.safetensors", "-o", "out.safetensors"]),
        Case("truncated .pt file", ["evaluate", "truncated.pt", "--arch", "tinycnn", "--input-shape", "1,8,8"]),
        Case("corrupt model file (random bytes)", ["evaluate", "corrupt.safetensors"]),
        Case("NaN in the weights", ["defend", "otbr", "nan.safetensors", "-o", "out.safetensors"]),
        Case("Inf in the weights", ["evaluate", "inf.safetensors"]),
        Case("empty dataset (npz with 0 images)", [*defend, "--eval-data", "npz:empty.npz", "-o", "out.safetensors"]),
        Case("missing dataset file", ["evaluate", "model.safetensors", "--data", "npz:missing.npz"]),
        Case("unknown dataset name", ["evaluate", "model.safetensors", "--data", "imagenet-99"]),
        Case("clean ratio 0", ["nwc", "model.safetensors", "--mode", "clean", "--data", "npz:tiny.npz",
                               "--clean-ratio", "0", "-o", "out.csv"], ["out.csv"]),
        Case("clean ratio above 1", ["defend", "ulrl", "model.safetensors", "--data", "npz:tiny.npz",
                                     "--clean-ratio", "1.5", "-o", "out.safetensors"]),
        Case("γ out of range", [*defend, "--gamma", "1.5", "-o", "out.safetensors"]),
        Case("λ out of range", [*defend, "--lam", "-0.1", "-o", "out.safetensors"]),
        Case("output folder missing", [*defend, "-o", "no-such-folder/out.safetensors"]),
        Case("output folder not writable", [*defend, "-o", f"{unwritable}/out.safetensors"]),
        Case("output path equal to the input", [*defend, "-o", "model.safetensors", "--force"], []),
        Case("report path equal to the input", [*defend, "-o", "out.safetensors", "--report", "model.safetensors",
                                                "--force"]),
        Case("existing output without --force", [*defend, "-o", "existing.safetensors"], []),
        Case("BackdoorBench file naming code as its architecture",
             ["evaluate", "attack_result.pt"], ["PWNED"]),
        Case("poisoned set with float images outside [0, 1]",
             ["evaluate", "model.safetensors", "--poisoned", "poisoned-float.npz"], []),
        Case("poisoned set with labels the model does not have",
             ["evaluate", "model.safetensors", "--poisoned", "poisoned-labels.npz"], []),
        Case("negative BatchNorm running variance", ["evaluate", "negative-var.safetensors"], []),
        Case("non-finite --std", ["evaluate", "model.safetensors", "--std", "nan"], []),
        Case("clean data of another shape than the model's", ["defend", "ft", "model.safetensors", "--data",
                                                               "npz:rgb.npz", "--no-eval", "-o", "out.safetensors"]),
        Case("clean data with labels beyond the model's classes",
             ["defend", "ft", "model.safetensors", "--data", "npz:ten-classes.npz", "--no-eval", "-o",
              "out.safetensors"]),
        Case("output path equal to a data file", ["poison", "--attack", "badnets", "--data", "npz:tiny.npz", "-o",
                                                  "tiny.npz", "--force"], []),
        Case("fuse output equal to PRUNED", ["fuse", "existing.safetensors", "model.safetensors", "--no-eval", "-o",
                                             "existing.safetensors", "--force"], []),
        Case("existing output of `otbr train` without --force",
             ["train", "--data", "npz:tiny.npz", "--arch", "tinycnn", "--epochs", "1", "-o", "existing.safetensors"],
             []),
        Case("an automatic-γ option beside a fixed γ", [*defend, "--gamma", "0.1", "--lean", "0.1", "-o",
                                                       "out.safetensors"]),
        Case("--clean-ratio beside --clean-count", ["defend", "ft", "model.safetensors", "--data", "npz:tiny.npz",
                                                    "--clean-count", "8", "--clean-ratio", "0.5", "-o",
                                                    "out.safetensors"]),
        Case("evaluation options with --no-eval", [*defend, "--no-eval", "--poisoned", "poisoned-labels.npz", "-o",
                                                   "out.safetensors"]),
        Case("seed past 2^32", [*defend, "--seed", str(2**64), "-o", "out.safetensors"]),
    ]


def _unwritable(d: Path) -> str:
    """``ro`` (a read-only folder) unless this process ignores permissions (root): then ``/sys``."""
    try:
        probe = d / "ro" / ".probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError:
        return "ro"
    return "/sys"


def run_case(otbr: str, case: Case, d: Path) -> dict[str, object]:
    """Run one case in ``d``; return its row."""
    before = {p.name for p in d.iterdir()}
    t0 = time.perf_counter()
    proc = subprocess.run([otbr, *case.args], cwd=d, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip() and not _LOG_LINE.match(ln)]
    created = sorted({p.name for p in d.iterdir()} - before)
    left = [o for o in case.outputs if (d / o).exists()] + [c for c in created if c not in case.outputs]
    return {"what": case.what, "command": "otbr " + " ".join(_quote(a) for a in case.args),
            "exit": proc.returncode, "lines": lines, "traceback": "Traceback" in proc.stderr,
            "left": left, "seconds": time.perf_counter() - t0}


def _quote(arg: str) -> str:
    return f"'{arg}'" if any(ch in arg for ch in " {}\"") else arg


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def write_table(rows: list[dict[str, object]], out: Path) -> None:
    """Write ``docs/hardening.md`` with the table of ``rows``."""
    lines = [
        "# Hardening: what the user sees on bad input",
        "",
        _INTRO.strip(),
        "",
        "Produced by `python benchmarks/bad_inputs.py` (real `otbr` processes, relative paths in a scratch folder);",
        "checked row by row in `tests/test_hardening.py`. *Lines* counts the non-log lines printed; *left* lists",
        "output files found afterwards (none expected).",
        "",
        "| bad input | command | exit | lines | traceback | left | what the user sees |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        shown = r["lines"][0] if r["lines"] else ""  # type: ignore[index]
        lines.append(f"| {_cell(str(r['what']))} | `{_cell(str(r['command']))}` | {r['exit']} | "
                     f"{len(r['lines'])} | {'yes' if r['traceback'] else 'no'} | "  # type: ignore[arg-type]
                     f"{', '.join(r['left']) or '-'} | {_cell(shown)} |")  # type: ignore[arg-type]
    lines += ["", _NOTES.strip(), ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))


_INTRO = """
People who run a backdoor defense hold a model they do not trust. `otbr` never executes code hidden in a
model file, fails on bad input with one line that names the problem and the fix (exit status 2, no
traceback unless `otbr --debug …`), and never leaves a partial or overwritten result behind.
"""

_NOTES = """
## Guarantees behind the table

* **No code from model files.** `.pt`/`.pth` files are read with `torch.load(weights_only=True)`; a file that
  needs other globals is refused and the message names the global (`io.open` above). `--allow-pickle` is the
  only way to unpickle it. A file whose content is safetensors is read as safetensors whatever its name;
  safetensors metadata, or a BackdoorBench file's `model_name`, naming a `file.py:Factory` architecture is not
  imported without `--arch`.
* **Checked at load**: file present and non-empty, header and data complete, every floating tensor finite,
  BatchNorm running variances not negative, the input normalisation finite with positive stds, metadata of the
  right types (anything else is one line naming the file), keys and shapes equal to the architecture's (the
  message lists missing, unexpected and mismatched keys, five of each at most), one forward pass on zeros of the
  recorded input shape giving the recorded number of classes. Evaluation data must have the model's input shape
  and class count and at least one image; a `--poisoned` set is read with the checks of `npz:` datasets (uint8
  images, or float ones in [0, 1]; one integer label each, within the model's classes; one integer target).
  Clean data for a data-dependent defense must go through the model and carry labels it outputs.
* **Outputs** (models, poisoned sets, JSON reports, NWC CSVs) are written to a temporary file beside the
  target and renamed into place; Ctrl-C or SIGTERM (turned into Ctrl-C by the command line) removes the
  temporary file and exits with status 130. Output paths are checked before any work: writable folder, not an
  input — model files, PRUNED, `npz:` data files (symlinks and hard links included) —, not existing unless
  `--force`. Non-finite weights are never
  written.
* **Reproducible**: the same seed and inputs give bit-identical defended weights on CPU and, since model files
  carry no timestamp, the same file bytes (sha256). The `--report` JSON records `seed`, `created`, `argv`,
  versions (`environment`: otbr, torch, python, platform, device, threads; `environment.packages`: numpy, pot,
  safetensors, scipy, click), `input.sha256`, `output.sha256` and `output.weights_sha256`.
* **Unexpected errors** (bugs) print one line `Error: unexpected <Type>: <message> (re-run with 'otbr --debug …'
  …)` and exit with status 1; `otbr --debug` (or `OTBR_DEBUG=1`) shows the traceback of any error.
"""


def main() -> int:
    """Build fixtures, run every case, write the table; non-zero if a case misbehaves."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "hardening.md")
    parser.add_argument("--otbr", default=shutil.which("otbr") or str(Path(sys.executable).with_name("otbr")))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = []
    with tempfile.TemporaryDirectory(prefix="otbr-bad-inputs-") as tmp:
        base = Path(tmp) / "fixtures"
        base.mkdir()
        make_fixtures(base)
        for i, case in enumerate(cases(_unwritable(base))):
            d = Path(tmp) / f"case{i:02d}"
            shutil.copytree(base, d, symlinks=True)
            row = run_case(args.otbr, case, d)
            rows.append(row)
            log.info("%-60s exit %s  %s", case.what, row["exit"], row["lines"][0] if row["lines"] else "")
            (d / "ro").chmod(0o700)
        (base / "ro").chmod(0o700)
    write_table(rows, args.out)
    log.info("table written to %s", args.out)
    bad = [r for r in rows if r["exit"] != 2 or len(r["lines"]) != 1 or r["traceback"] or r["left"]]
    for r in bad:
        log.error("misbehaving case: %s", r)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
