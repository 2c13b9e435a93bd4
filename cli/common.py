"""Options and helpers shared by the ``otbr`` commands."""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from otbr.errors import OtbrError


def parse_json_kwargs(text: str | None, what: str) -> dict[str, Any]:
    """``--arch-kwargs '{"width": 16}'`` → dict (one-line error otherwise)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OtbrError(f"{what} must be a JSON object, e.g. '{{\"width\": 16}}' ({exc.msg})") from exc
    if not isinstance(value, dict):
        raise OtbrError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def parse_floats(text: str | None, what: str, n: int | None = None) -> tuple[float, ...] | None:
    """``"0.5,0.5,0.5"`` → tuple of floats."""
    if text is None:
        return None
    try:
        vals = tuple(float(t) for t in text.split(","))
    except ValueError:
        raise OtbrError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if n is not None and len(vals) != n:
        raise OtbrError(f"{what} needs {n} numbers, got {len(vals)}")
    return vals


class FiniteFloatRange(click.FloatRange):
    """A :class:`click.FloatRange` that also refuses NaN and ±inf (which compare false with any bound).

    Example:
        >>> FiniteFloatRange(0, 1).convert("0.5", None, None)
        0.5
    """

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        out = super().convert(value, param, ctx)
        if not math.isfinite(out):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return out


class FiniteFloat(click.ParamType):
    """A float that is not NaN or ±inf.

    Example:
        >>> FINITE.convert("1e-3", None, None)
        0.001
    """

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            out = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number.", param, ctx)
        if not math.isfinite(out):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return out


FINITE = FiniteFloat()


class AutoFraction(click.ParamType):
    """A fraction in [0, 1] or the word ``auto`` (the defense then chooses it without poisoned data)."""

    name = "auto|fraction"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float | str:
        if isinstance(value, float) or value == "auto":
            return value
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither 'auto' nor a number", param, ctx)
        if not 0.0 <= v <= 1.0:
            self.fail(f"{v:g} is not in the range 0<=x<=1 (or 'auto')", param, ctx)
        return v


#: ``--seed``: a whole number every seeded generator of the toolkit accepts (numpy's and torch's, plus offsets)
SEED = click.IntRange(0, 2**32 - 1)


def refuse_moot(moot: Mapping[str, str | None]) -> None:
    """A one-line error when an option given on the command line has no effect with the others given.

    ``moot`` maps a parameter name to the reason it would be ignored, or to ``None`` where it is used. Options
    left at their defaults are never refused. Call inside a command, before any work.

    Example (``--lam`` refused when the variant does no fusion)::

        refuse_moot({"lam": "with --variant prune (no fusion)" if variant == "prune" else None})
    """
    ctx = click.get_current_context()
    given = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    for name, why in moot.items():
        if why is not None and ctx.get_parameter_source(name) in given:
            param = next(p for p in ctx.command.params if p.name == name)
            raise OtbrError(f"{max(param.opts, key=len)} has no effect {why}; leave it out")


def check_writable(path: str | Path, what: str = "-o") -> Path:
    """Fail early, with one line, if ``path`` cannot be written: a folder, a missing or read-only parent.

    The check creates and removes a temporary file in the parent folder, so it also catches read-only
    file systems and permission rules that ``os.access`` misses.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OtbrError(f"{what} {path} is a folder; give a file name")
    if not parent.exists():
        raise OtbrError(f"output folder does not exist: {parent}; create it or choose another {what}")
    if not parent.is_dir():
        raise OtbrError(f"{parent} is not a folder; choose another {what}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".otbr-write-check.", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OtbrError(f"cannot write to folder {parent} ({exc.strerror}); choose a writable {what}") from None
    return path


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when both paths exist and name the same file (symlinks and hard links included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def overwrites(path: str | Path, src: str | Path | None) -> bool:
    """Whether writing ``path`` would replace the input ``src`` (the same path, or a link to the same file)."""
    return src is not None and (same_file(path, src) or Path(path).resolve() == Path(src).resolve())


def data_files(*specs: str | None) -> list[Path]:
    """The files named by dataset specs (``npz:FILE``), so that no output replaces them; registered names and
    folders (``imagefolder:PATH``) give none.

    Example:
        >>> data_files("npz:a.npz", "fashion-mnist", None, "imagefolder:imgs")
        [PosixPath('a.npz')]
    """
    return [Path(s.split(":", 1)[1]) for s in specs if s and s.startswith("npz:")]


#: the figure formats ``--plot`` writes (matplotlib's, by suffix)
PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def check_plot(plot: str | None, force: bool, inputs: Iterable[str | Path | None], needed: bool = True) -> None:
    """Before any work: ``--plot`` is used by the command (``needed``), names a known figure format, and is a new
    output like ``-o`` (:func:`check_new_output`)."""
    if plot is None:
        return
    if not needed:
        raise OtbrError("--plot draws a sweep: pass --sweep with it")
    if Path(plot).suffix.lower() not in PLOT_SUFFIXES:
        raise OtbrError(f"--plot must end in {', '.join(PLOT_SUFFIXES)}, got {Path(plot).name}")
    check_new_output(plot, force, inputs, what="--plot")


def check_new_output(path: str | Path, force: bool, inputs: Iterable[str | Path | None] = (), what: str = "-o") -> Path:
    """An output path that is writable, is none of ``inputs``, and exists only if ``force`` allows overwriting."""
    path = Path(path)
    for src in inputs:
        if overwrites(path, src):
            raise OtbrError(f"{what} {path} would overwrite the input {src}; choose another {what}")
    check_writable(path, what)
    if path.exists() and not force:
        raise OtbrError(f"{path} exists; pass --force to overwrite it")
    return path


def model_options(fn: Callable) -> Callable:
    """Options that tell how to read a model file lacking otbr metadata."""
    options = [
        click.option("--arch", help="Architecture (registered name or file.py:Factory) for files without metadata."),
        click.option("--arch-kwargs", help="JSON keyword arguments of the architecture."),
        click.option("--input-shape", help="C,H,W of one input, for files without metadata."),
        click.option("--mean", help="Per-channel input mean, comma-separated."),
        click.option("--std", help="Per-channel input std, comma-separated."),
        click.option("--allow-pickle", is_flag=True, help="Permit full unpickling of .pt files (runs code!)."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def load_model_from_options(path: str, kw: dict[str, Any]):
    """Load MODEL with the :func:`model_options` values in ``kw`` (which it pops)."""
    from otbr.device import resolve_device
    from otbr.models import load_model

    shape = parse_floats(kw.pop("input_shape", None), "--input-shape", 3)
    if shape and not all(math.isfinite(s) and s == int(s) and s >= 1 for s in shape):
        raise OtbrError(f"--input-shape needs three positive whole numbers C,H,W, got {shape}")
    arch = kw.pop("arch", None)
    return load_model(
        path,
        arch=arch,
        arch_kwargs=parse_json_kwargs(kw.pop("arch_kwargs", None), "--arch-kwargs"),
        input_shape=tuple(int(s) for s in shape) if shape else None,
        mean=parse_floats(kw.pop("mean", None), "--mean"),
        std=parse_floats(kw.pop("std", None), "--std"),
        allow_pickle=kw.pop("allow_pickle", False),
        trust_arch_code=arch is not None,
        device=resolve_device(kw.pop("device", "auto")),
    )


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain fixed-width text table (numbers already formatted as strings)."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


def pct(value: float | None) -> str:
    """0.9312 → '93.12' ('-' for None)."""
    return "-" if value is None else f"{100 * value:.2f}"


def progress_enabled(ctx: click.Context) -> bool:
    """Progress bars only for a terminal and without --quiet."""
    return bool((ctx.obj or {}).get("progress", False))


def pass_progress(fn: Callable) -> Callable:
    """Inject ``progress: bool`` from the group context."""

    @functools.wraps(fn)
    @click.pass_context
    def wrapper(ctx: click.Context, *args: Any, **kwargs: Any) -> Any:
        return ctx.invoke(fn, *args, progress=progress_enabled(ctx), **kwargs)

    return wrapper
