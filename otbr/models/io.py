"""Reading and writing model files.

safetensors is the native format: the weights plus a JSON metadata block
(architecture and its arguments, classes, input shape and normalisation, how
the model was made, the attack it carries if known, toolkit version, seed), so
later commands need no flags. ``.pt``/``.pth`` state dicts and BackdoorBench
``attack_result.pt`` files are read with ``torch.load(weights_only=True)``; a
file that would need arbitrary unpickling is refused unless the caller passes
``allow_pickle=True``.

Example:
    >>> from otbr.models import create_model, ModelMeta, save_model, load_model
    >>> net = create_model("tinycnn", num_classes=4, in_channels=1)
    >>> meta = ModelMeta(arch="tinycnn", arch_kwargs={"num_classes": 4, "in_channels": 1},
    ...                  num_classes=4, input_shape=(1, 8, 8), mean=(0.5,), std=(0.5,))
    >>> save_model(net, "/tmp/tiny.safetensors", meta)  # doctest: +SKIP
    >>> model, meta = load_model("/tmp/tiny.safetensors")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import torch
from torch import nn

from otbr.atomic import atomic_path
from otbr.errors import OtbrError
from otbr.models.normalize import Normalized, unwrap
from otbr.models.registry import arch_source_sha256, create_model, is_custom_arch, output_classes

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

META_KEY = "otbr"
FORMAT_VERSION = 1
_PREFIXES = ("module.", "_orig_mod.")

# BackdoorBench's num_classes → (input shape, mean, std) of its datasets.
_BACKDOORBENCH_DATA: dict[int, tuple[tuple[int, int, int], tuple[float, ...], tuple[float, ...], str]] = {
    10: ((3, 32, 32), (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261), "cifar10"),
    100: ((3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "cifar100"),
    43: ((3, 32, 32), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "gtsrb"),
    200: ((3, 64, 64), (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262), "tiny-imagenet"),
}


@dataclasses.dataclass
class ModelMeta:
    """What a model file says about its model.

    Attributes:
        arch: registered architecture name or ``file.py:Factory``.
        arch_kwargs: keyword arguments of the architecture factory.
        num_classes: number of classes.
        input_shape: (C, H, W) of one input image.
        mean, std: per-channel input normalisation applied to [0, 1] images.
        classes: class names, if known.
        dataset: the dataset the model was trained on, if known.
        attack: the attack configuration the model carries (for evaluation), if known.
        history: the steps that made this file (training, defenses), oldest first.
        seed: seed of the step that wrote the file.
        source_sha256: sha256 of the architecture's source file, for ``file.py:Factory`` archs.
        otbr_version: toolkit version that wrote the file.
    """

    arch: str
    arch_kwargs: dict[str, Any]
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str] | None = None
    dataset: str | None = None
    attack: dict[str, Any] | None = None
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    seed: int | None = None
    source_sha256: str | None = None
    otbr_version: str | None = None

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["format_version"] = FORMAT_VERSION
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelMeta:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise OtbrError(f"model metadata is not valid JSON: {exc}") from exc
        d.pop("format_version", None)
        known = {f.name for f in dataclasses.fields(cls)}
        missing = {"arch", "arch_kwargs", "num_classes", "input_shape", "mean", "std"} - d.keys()
        if missing:
            raise OtbrError(f"model metadata lacks {sorted(missing)}")
        d = {k: v for k, v in d.items() if k in known}
        d["input_shape"] = tuple(d["input_shape"])
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)

    def derived(self, step: dict[str, Any], seed: int | None = None) -> ModelMeta:
        """A copy for a model derived from this one by ``step`` (appended to the history)."""
        return dataclasses.replace(self, history=[*self.history, step], seed=seed)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_model(meta: ModelMeta) -> Normalized:
    """A freshly initialised model, wrapped with the normalisation of ``meta``."""
    return Normalized(create_model(meta.arch, **meta.arch_kwargs), meta.mean, meta.std)


def save_model(model: nn.Module, path: str | Path, meta: ModelMeta) -> Path:
    """Write ``model`` (bare or :class:`Normalized`) and ``meta`` to a safetensors file.

    The write is atomic: a temporary file in the same folder is renamed into
    place, so a failure or Ctrl-C never leaves a half-written model. The file
    holds no timestamp, so the same weights and metadata give the same bytes.
    Weights with NaN or Inf values are refused (nothing is written).
    """
    from safetensors.torch import save_file

    from otbr import __version__

    path = Path(path)
    if path.suffix != ".safetensors":
        raise OtbrError(f"model files are written as .safetensors, got {path.name}")
    meta = dataclasses.replace(meta, otbr_version=__version__)
    if meta.source_sha256 is None and is_custom_arch(meta.arch):
        meta.source_sha256 = arch_source_sha256(meta.arch)
    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    bad = non_finite(state)
    if bad:
        raise OtbrError(f"refusing to write {path}: the weights hold {bad}; the run diverged "
                        "(try a smaller learning rate or another seed)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={META_KEY: meta.to_json()})
    return path


def non_finite(state: dict[str, torch.Tensor], limit: int = 3) -> str:
    """``"conv1.weight: 2 NaN, fc.bias: 1 Inf"`` for the floating tensors with NaN/Inf entries ('' if none)."""
    parts = []
    for k, v in state.items():
        if not v.is_floating_point() or bool(torch.isfinite(v).all()):
            continue
        nan, inf = int(torch.isnan(v).sum()), int(torch.isinf(v).sum())
        parts.append(f"{k}: " + ", ".join(f"{n} {w}" for n, w in ((nan, "NaN"), (inf, "Inf")) if n))
    if len(parts) > limit:
        parts = [*parts[:limit], f"… {len(parts) - limit} more tensors"]
    return "; ".join(parts)


def weights_sha256(model: nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes in key order): equal iff the weights are equal."""
    h = hashlib.sha256()
    for k, v in unwrap(model).state_dict().items():
        t = v.detach().cpu()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def read_meta(path: str | Path) -> ModelMeta | None:
    """The metadata of a safetensors model file (``None`` if it has none of ours)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except Exception as exc:  # safetensors raises its own error types
        raise OtbrError(f"{path}: not a readable safetensors file ({exc}); it is truncated or corrupt — "
                        "copy or export it again") from exc
    return ModelMeta.from_json(raw) if raw else None


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


_GLOBAL_RE = re.compile(r"GLOBAL (\S+) was not an allowed global")


def _torch_load(path: Path, allow_pickle: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Unsupported global" not in text and "Unsupported class" not in text:
            raise OtbrError(f"{path}: not a readable PyTorch file (corrupt, truncated or another format); "
                            "copy or export it again") from exc
        if not allow_pickle:
            found = _GLOBAL_RE.search(text)
            what = f" (it references {found.group(1)})" if found else ""
            raise OtbrError(
                f"{path} needs arbitrary unpickling, which can run code{what}; "
                "re-run with --allow-pickle only if you trust its source"
            ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise OtbrError(f"{path}: not a readable PyTorch file ({type(exc).__name__}: {str(exc)[:120] or 'empty'}); "
                        "it is truncated or corrupt — copy or export it again") from exc
    log.warning("loading %s with full unpickling (--allow-pickle)", path)
    return torch.load(path, map_location="cpu", weights_only=False)


def _state_from_object(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Find the state dict inside a loaded .pt object; also return BackdoorBench facts."""
    facts: dict[str, Any] = {}
    if isinstance(obj, nn.Module):
        return obj.state_dict(), facts
    if not isinstance(obj, dict):
        raise OtbrError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    if "model" in obj and isinstance(obj["model"], dict) and "model_name" in obj:  # BackdoorBench
        facts = {"model_name": obj["model_name"], "num_classes": obj.get("num_classes"),
                 "img_size": obj.get("img_size")}
        obj = obj["model"]
    for key in ("state_dict", "model_state_dict", "model"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise OtbrError(f"{path}: no tensor state dict found")
    return _strip_prefixes(obj), facts


def _meta_for_foreign(
    state: dict[str, torch.Tensor], facts: dict[str, Any], arch: str | None, arch_kwargs: dict[str, Any] | None,
    input_shape: tuple[int, int, int] | None, mean: tuple[float, ...] | None, std: tuple[float, ...] | None,
    path: Path,
) -> ModelMeta:
    kwargs = dict(arch_kwargs or {})
    dataset = None
    if arch is None and facts:
        arch = str(facts["model_name"])
        if is_custom_arch(arch):
            raise OtbrError(f"{path} names the custom architecture {arch!r}, which would import code; "
                            "pass --arch with it to confirm")
        if facts.get("num_classes") is not None:
            kwargs.setdefault("num_classes", int(facts["num_classes"]))
    if arch is None:
        raise OtbrError(f"{path} carries no architecture; pass --arch NAME (and --arch-kwargs) to read it")
    num_classes = kwargs.get("num_classes")
    if num_classes is None:
        last_weight = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
        if not last_weight:
            raise OtbrError(f"{path}: cannot infer num_classes; pass --arch-kwargs '{{\"num_classes\": N}}'")
        num_classes = int(last_weight[-1].shape[0])
        kwargs["num_classes"] = num_classes
    known = _BACKDOORBENCH_DATA.get(int(num_classes))
    if input_shape is None and facts and known:
        input_shape = known[0]
        if facts.get("img_size"):
            size = tuple(int(s) for s in facts["img_size"])
            input_shape = (size[2], size[0], size[1]) if len(size) == 3 else input_shape
    if input_shape is None:
        raise OtbrError(f"{path}: input shape unknown; pass --input-shape C,H,W")
    if mean is None or std is None:
        if facts and known:
            mean, std, dataset = known[1], known[2], known[3]
        else:
            mean, std = (0.0,) * input_shape[0], (1.0,) * input_shape[0]
            log.warning("%s: no normalisation given; using mean 0, std 1 (pass --mean/--std)", path)
    if not is_custom_arch(arch):  # every registered architecture takes in_channels
        kwargs.setdefault("in_channels", input_shape[0])
    step = {"step": "import", "source": str(path), "source_sha256": file_sha256(path)}
    if facts:
        step["backdoorbench"] = {k: v for k, v in facts.items() if k != "img_size"}
    return ModelMeta(arch=arch, arch_kwargs=kwargs, num_classes=int(num_classes), input_shape=tuple(input_shape),
                     mean=tuple(mean), std=tuple(std), dataset=dataset, history=[step])


def _is_safetensors(path: Path) -> bool:
    """Content sniffing: an 8-byte little-endian header length followed by a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000


def _names(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … (+{len(keys) - limit} more)" if len(keys) > limit else "")


def state_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str:
    """Why ``found`` does not load into a model whose state is ``expected`` ('' when it does).

    Example:
        >>> state_mismatch({"a": torch.zeros(2), "b": torch.zeros(1)}, {"a": torch.zeros(3), "c": torch.zeros(1)})
        'missing: b; unexpected: c; shape mismatch: a (file (3,) vs model (2,))'
    """
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [f"{k} (file {tuple(found[k].shape)} vs model {tuple(v.shape)})"
              for k, v in expected.items() if k in found and tuple(found[k].shape) != tuple(v.shape)]
    parts = [f"{label}: {_names(keys, 5 if label != 'shape mismatch' else 3)}"
             for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if keys]
    return "; ".join(parts)


def _check_io(model: Normalized, meta: ModelMeta, path: Path) -> None:
    """One forward pass on zeros: the model must take ``meta.input_shape`` and give ``meta.num_classes`` logits."""
    try:
        n = output_classes(model, tuple(meta.input_shape))
    except (RuntimeError, ValueError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise OtbrError(f"{path}: the {meta.arch!r} model does not accept inputs of shape {tuple(meta.input_shape)} "
                        f"({first}); pass the right --input-shape C,H,W") from exc
    if n != meta.num_classes:
        raise OtbrError(f"{path}: the model outputs {n} classes but its metadata says {meta.num_classes}; "
                        "pass --arch-kwargs with the right num_classes")


def _file_errors(fn: Callable[P, T]) -> Callable[P, T]:
    """Turn what a malformed file's content raises deep inside the loader (a list where a number belongs in the
    metadata, an unreadable pickle) into an :class:`OtbrError` naming the file, like every other unusable input."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        path = args[0] if args else kwargs.get("path")
        try:
            return fn(*args, **kwargs)
        except OtbrError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError) as exc:
            raise OtbrError(f"{path}: malformed model file or metadata ({type(exc).__name__}: {exc}); export it "
                            "again, or pass --arch/--arch-kwargs/--input-shape/--mean/--std for it") from exc

    return wrapper


@_file_errors
def load_model(
    path: str | Path,
    *,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    input_shape: tuple[int, int, int] | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    allow_pickle: bool = False,
    trust_arch_code: bool = False,
    device: str | torch.device | None = None,
) -> tuple[Normalized, ModelMeta]:
    """Load a model file into a :class:`Normalized` module (inputs in [0, 1]) in eval mode.

    Args:
        path: ``.safetensors`` (metadata makes the other arguments unnecessary),
            ``.pt``/``.pth``/``.bin`` state dict, or a BackdoorBench ``attack_result.pt``.
        arch, arch_kwargs: architecture, required for plain state dicts; override the file's.
        input_shape, mean, std: input facts for files that do not carry them.
        allow_pickle: permit full unpickling of ``.pt`` files (runs code from the file).
        trust_arch_code: permit a safetensors file whose metadata names a ``file.py:Factory``
            architecture to import that code (otherwise pass ``arch`` yourself).
        device: where to put the model (default CPU).

    Returns:
        ``(model, meta)``.

    Raises:
        OtbrError: missing file, unreadable or unsafe content, metadata of the wrong types or values (see
            :func:`_file_errors`), weights not matching the architecture.
    """
    path = Path(path)
    if not path.is_file():
        hint = "it is a folder" if path.is_dir() else "check the path"
        raise OtbrError(f"model file not found: {path} ({hint})")
    if path.stat().st_size == 0:
        raise OtbrError(f"model file is empty (0 bytes): {path}; the copy or download did not finish — fetch it again")
    if path.suffix == ".safetensors" or _is_safetensors(path):
        from safetensors.torch import load_file

        meta = read_meta(path)
        try:
            state = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise OtbrError(f"{path}: not a readable safetensors file ({exc}); it is truncated or corrupt — "
                            "copy or export it again") from exc
        if meta is None:
            meta = _meta_for_foreign(_strip_prefixes(state), {}, arch, arch_kwargs, input_shape, mean, std, path)
        else:
            if is_custom_arch(meta.arch) and arch is None and not trust_arch_code:
                raise OtbrError(
                    f"{path} names the custom architecture {meta.arch!r}, which would import code; "
                    "pass --arch with it to confirm"
                )
            if arch is not None:
                meta.arch = arch
            meta.arch_kwargs.update(arch_kwargs or {})
            for name, value in (("input_shape", input_shape), ("mean", mean), ("std", std)):
                if value is not None:
                    setattr(meta, name, tuple(value))
        state = _strip_prefixes(state)
    else:
        obj = _torch_load(path, allow_pickle)
        state, facts = _state_from_object(obj, path)
        meta = _meta_for_foreign(state, facts, arch, arch_kwargs, input_shape, mean, std, path)
    negative = [k for k, v in state.items() if k.endswith("running_var") and v.is_floating_point()
                and bool((v < 0).any())]
    if negative:
        raise OtbrError(f"{path}: negative BatchNorm running variances in {', '.join(negative[:3])}; the file is "
                        "corrupt")
    if not all(math.isfinite(float(m)) for m in meta.mean) or not all(
            math.isfinite(float(s)) and float(s) > 0 for s in meta.std):
        raise OtbrError(f"{path}: the input normalisation must be finite with positive stds, got mean "
                        f"{list(meta.mean)}, std {list(meta.std)}; pass --mean/--std")
    bad = non_finite(state)
    if bad:
        raise OtbrError(f"{path}: the weights hold {bad}; the file is corrupt or its training diverged — "
                        "use a checkpoint with finite weights")
    if len(meta.input_shape) != 3 or min(meta.input_shape) < 1:
        raise OtbrError(f"{path}: input shape must be C,H,W with positive sizes, got {meta.input_shape}")
    if len(meta.mean) != meta.input_shape[0] or len(meta.std) != meta.input_shape[0]:
        raise OtbrError(f"{path}: {meta.input_shape[0]} input channels but {len(meta.mean)} means and "
                        f"{len(meta.std)} stds; pass --mean/--std with one value per channel")
    try:
        model = build_model(meta)
    except OtbrError as exc:
        raise OtbrError(f"{path}: {exc}; pass --arch NAME (and --arch-kwargs) to read it as another one") from exc
    mismatch = state_mismatch(model.net.state_dict(), state)
    if mismatch:
        raise OtbrError(f"{path}: weights do not fit architecture {meta.arch!r} {json.dumps(meta.arch_kwargs)}: "
                        f"{mismatch}; pass the --arch/--arch-kwargs (width, num_classes, in_channels …) "
                        "of the model that was saved")
    model.net.load_state_dict(state, strict=True)
    model.eval()
    _check_io(model, meta, path)
    if device is not None:
        model.to(device)
    return model, meta
