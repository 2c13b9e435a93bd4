"""Dataset registry: names and specs to :class:`~otbr.data.formats.ImageDataset`.

A spec is a registered name (``fashion-mnist``, ``mnist``, ``cifar10``,
``cifar100``, ``gtsrb``, ``tiny-imagenet``; ``_`` and case are forgiven),
``imagefolder:PATH`` or ``npz:FILE``. Nothing is downloaded or cached.

Where the data is looked for, when ``root`` is None: ``$OTBR_DATA_ROOT/<name>``,
then ``$OTBR_DATA_ROOT`` itself, then the dataset's default root (Fashion-MNIST:
``/usr/share/datasets/fashion-mnist`` from the Debian package
``dataset-fashion-mnist``; MNIST: ``/usr/share/datasets/mnist``). Under each
root the usual layouts are recognised, torchvision's included
(``FashionMNIST/raw``, ``cifar-10-batches-py``, ``gtsrb/GTSRB``, ...).

Normalisation: :func:`dataset_info` carries the per-channel mean/std a model
for that dataset is usually trained with (the data layer itself never
normalises; the model wrapper does). Fashion-MNIST, MNIST, CIFAR-10/100 and
Tiny-ImageNet use the customary training-set statistics; GTSRB, image
folders and npz files default to 0.5/0.5 (use :func:`compute_mean_std` to get
the statistics of your own training data).

Example:
    >>> "cifar10" in list_datasets()
    True
    >>> dataset_info("fashion-mnist").mean
    (0.286,)
    >>> ds = load_dataset("fashion-mnist", "test")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from otbr.data.formats import (
    FASHION_MNIST_CLASSES,
    MNIST_CLASSES,
    ImageDataset,
    check_split,
    gtsrb_paths,
    idx_file,
    read_cifar,
    read_gtsrb,
    read_idx_dataset,
    read_image_folder,
    read_npz,
    read_tiny_imagenet,
)
from otbr.errors import OtbrError

log = logging.getLogger(__name__)

ENV_ROOT = "OTBR_DATA_ROOT"

#: ``loader(root, split, image_size)`` returns the dataset, or None when its layout is not under ``root``.
Loader = Callable[[Path, str, int | None], ImageDataset | None]


@dataclass(frozen=True)
class DatasetInfo:
    """What is known about a dataset before loading it (None: known only after loading)."""

    name: str
    num_classes: int | None
    input_shape: tuple[int, int, int] | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    default_root: Path | None
    layout: str
    hint: str


_REGISTRY: dict[str, tuple[DatasetInfo, Loader]] = {}


def register_dataset(
    name: str,
    *,
    num_classes: int | None = None,
    input_shape: tuple[int, int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    default_root: str | Path | None = None,
    layout: str = "",
    hint: str = "",
) -> Callable[[Loader], Loader]:
    """Register ``loader(root, split, image_size) -> ImageDataset | None`` under ``name``.

    ``mean``/``std`` default to 0.5 per channel of ``input_shape`` (3 channels if unknown).

    Example:
        >>> @register_dataset("toy", num_classes=2, input_shape=(1, 4, 4))
        ... def _toy(root, split, image_size):
        ...     return None  # None: "not found under this root"
        >>> dataset_info("toy").std
        (0.5,)
    """
    channels = input_shape[0] if input_shape else 3
    info = DatasetInfo(
        name=name,
        num_classes=num_classes,
        input_shape=input_shape,
        mean=tuple(mean) if mean is not None else (0.5,) * channels,
        std=tuple(std) if std is not None else (0.5,) * channels,
        default_root=Path(default_root) if default_root is not None else None,
        layout=layout,
        hint=hint,
    )

    def decorator(loader: Loader) -> Loader:
        if name in _REGISTRY:
            log.warning("dataset %r registered again; the new loader replaces the old one", name)
        _REGISTRY[name] = (info, loader)
        return loader

    return decorator


def list_datasets() -> list[str]:
    """Registered dataset names, sorted (the ``imagefolder:PATH`` and ``npz:FILE`` specs come on top)."""
    return sorted(_REGISTRY)


def _canonical(spec: str) -> str:
    return spec.strip().lower().replace("_", "-")


def _prefix(spec: str) -> tuple[str, str] | None:
    kind, sep, rest = spec.partition(":")
    if sep and kind.lower() in ("imagefolder", "npz"):
        if not rest:
            raise OtbrError(f"dataset spec {spec!r} needs a path after '{kind}:'")
        return kind.lower(), rest
    return None


def portable_spec(spec: str) -> str:
    """The spec to record in a model's metadata: ``npz:`` and ``imagefolder:`` paths made absolute, so that the
    model evaluates from any working directory; registered names as given.

    Example:
        >>> portable_spec("fashion-mnist"), portable_spec("npz:/data/x.npz")
        ('fashion-mnist', 'npz:/data/x.npz')
    """
    kind = _prefix(spec)
    return spec if kind is None else f"{kind[0]}:{Path(kind[1]).expanduser().resolve()}"


def _lookup(spec: str) -> tuple[DatasetInfo, Loader]:
    try:
        return _REGISTRY[_canonical(spec)]
    except KeyError:
        known = ", ".join(list_datasets())
        raise OtbrError(f"unknown dataset {spec!r}: known are {known}, imagefolder:PATH, npz:FILE") from None


def dataset_info(spec: str) -> DatasetInfo:
    """Default root, class count, input shape and mean/std of a dataset name.

    For ``imagefolder:PATH`` / ``npz:FILE`` only the name is known before
    loading: the other fields are None (use :func:`default_normalization` on the
    loaded data).

    Example:
        >>> dataset_info("cifar10").input_shape
        (3, 32, 32)
    """
    if _prefix(spec) is not None:
        return DatasetInfo(spec, None, None, None, None, None, "", "")
    return _lookup(spec)[0]


def default_normalization(dataset: ImageDataset) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` for a loaded dataset: its registered statistics, else 0.5 per channel.

    Example:
        >>> import torch
        >>> default_normalization(ImageDataset(torch.zeros(1, 3, 2, 2), torch.zeros(1, dtype=torch.long)))
        ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    """
    channels = dataset.input_shape[0]
    entry = _REGISTRY.get(_canonical(dataset.name))
    if entry is not None and entry[0].mean is not None and entry[0].std is not None and len(entry[0].mean) == channels:
        return entry[0].mean, entry[0].std
    return (0.5,) * channels, (0.5,) * channels


def compute_mean_std(dataset: ImageDataset, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of the images (in [0, 1]), in float64, chunk by chunk.

    Example:
        >>> import torch
        >>> compute_mean_std(ImageDataset(torch.tensor([[[[0.0, 1.0]]]]), torch.tensor([0])))
        ((0.5,), (0.5,))
    """
    c = dataset.input_shape[0]
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    count = 0
    for start in range(0, len(dataset), chunk):
        x = dataset.images(slice(start, start + chunk)).double()
        total += x.sum(dim=(0, 2, 3))
        squares += x.square().sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    if count == 0:
        raise OtbrError(f"{dataset.name}: cannot compute statistics of an empty dataset")
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def _roots(name: str, info: DatasetInfo, root: str | Path | None) -> list[Path]:
    if root is not None:
        return [Path(root).expanduser()]
    roots = []
    env = os.environ.get(ENV_ROOT)
    if env:
        roots += [Path(env).expanduser() / name, Path(env).expanduser()]
    if info.default_root is not None:
        roots.append(info.default_root)
    return roots


def _resize(ds: ImageDataset, size: int, chunk: int = 2048) -> ImageDataset:
    """Bilinear (antialiased) resize to ``size x size``, keeping uint8 storage uint8."""
    parts = []
    for start in range(0, len(ds), chunk):
        x = F.interpolate(ds.images(slice(start, start + chunk)), size=(size, size), mode="bilinear", antialias=True)
        x = x.clamp_(0, 1)
        parts.append(x.mul_(255).round_().to(torch.uint8) if ds.x.dtype == torch.uint8 else x)
    x = torch.cat(parts) if parts else ds.x.new_zeros(0, ds.input_shape[0], size, size)
    return ds.with_data(x)


def load_dataset(
    spec: str, split: str = "train", root: str | Path | None = None, image_size: int | None = None
) -> ImageDataset:
    """Load one split (``"train"`` or ``"test"``) of a dataset as uint8/float [0, 1] NCHW images.

    ``root`` overrides where the data is looked for (see the module docstring);
    ``image_size`` resizes to ``image_size x image_size`` (GTSRB defaults to 32).

    Example:
        >>> ds = load_dataset("fashion-mnist", "test")  # doctest: +SKIP
        >>> ds.x.shape, ds.classes[0]  # doctest: +SKIP
        (torch.Size([10000, 1, 28, 28]), 'T-shirt/top')
    """
    check_split(split)
    if image_size is not None and image_size < 1:
        raise OtbrError(f"image size must be positive, got {image_size}")
    prefixed = _prefix(spec)
    if prefixed is not None:
        kind, path_text = prefixed
        path = Path(path_text).expanduser()
        if kind == "imagefolder":
            ds = read_image_folder(path, split, image_size, name=spec)
        else:
            ds = read_npz(path, split, name=spec)
        where = path
    else:
        info, loader = _lookup(spec)
        roots = _roots(info.name, info, root)
        if not roots:
            raise OtbrError(f"no data root for {info.name}: pass a root (--data-root) or set {ENV_ROOT}; {info.hint}")
        found = None
        for where in roots:
            found = loader(where, split, image_size) if where.is_dir() else None
            if found is not None:
                break
        if found is None:
            searched = ", ".join(str(r) for r in roots)
            raise OtbrError(f"{info.name} ({split}) not found under {searched}: expected {info.layout}; {info.hint}")
        ds = found
    if len(ds) == 0:
        raise OtbrError(f"dataset {spec} ({split} split, {where}) holds no images; give a dataset with images")
    if image_size is not None and ds.input_shape[1:] != (image_size, image_size):
        ds = _resize(ds, image_size)
    log.info(
        "loaded %s %s from %s: %d images %s, %d classes", ds.name, split, where, len(ds), ds.input_shape, ds.num_classes
    )
    return ds


# --------------------------------------------------------------------------- built-in datasets


def _find(root: Path, subdirs: Sequence[str], present: Callable[[Path], bool]) -> Path | None:
    """The first ``root/sub`` (``"."`` is root itself) in which ``present`` holds."""
    return next((root / s for s in subdirs if (root / s).is_dir() and present(root / s)), None)


def _idx_loader(name: str, subdirs: Sequence[str], classes: Sequence[str]) -> Loader:
    def loader(root: Path, split: str, image_size: int | None) -> ImageDataset | None:
        d = _find(root, subdirs, lambda p: idx_file(p, split, "images") is not None)
        return None if d is None else read_idx_dataset(d, split, classes, name)

    return loader


_IDX_LAYOUT = "{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]"

register_dataset(
    "fashion-mnist",
    num_classes=10,
    input_shape=(1, 28, 28),
    mean=(0.2860,),
    std=(0.3530,),
    default_root="/usr/share/datasets/fashion-mnist",
    layout=f"ROOT/{_IDX_LAYOUT} (or ROOT/FashionMNIST/raw/...)",
    hint="install the Debian package dataset-fashion-mnist (or see github.com/zalandoresearch/fashion-mnist)",
)(_idx_loader("fashion-mnist", [".", "FashionMNIST/raw", "fashion-mnist", "raw"], FASHION_MNIST_CLASSES))

register_dataset(
    "mnist",
    num_classes=10,
    input_shape=(1, 28, 28),
    mean=(0.1307,),
    std=(0.3081,),
    default_root="/usr/share/datasets/mnist",
    layout=f"ROOT/{_IDX_LAYOUT} (or ROOT/MNIST/raw/...)",
    hint="put the four MNIST IDX files (yann.lecun.com/exdb/mnist) in a folder and pass it as root",
)(_idx_loader("mnist", [".", "MNIST/raw", "mnist", "raw"], MNIST_CLASSES))


_CIFAR_HINT = "extract the python version from https://www.cs.toronto.edu/~kriz/cifar.html into ROOT"


@register_dataset(
    "cifar10",
    num_classes=10,
    input_shape=(3, 32, 32),
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    layout="ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
    hint=_CIFAR_HINT,
)
def _cifar10(root: Path, split: str, image_size: int | None) -> ImageDataset | None:
    first = "data_batch_1" if split == "train" else "test_batch"
    d = _find(root, ["cifar-10-batches-py", "."], lambda p: (p / first).is_file())
    return None if d is None else read_cifar(d, split, fine=False)


@register_dataset(
    "cifar100",
    num_classes=100,
    input_shape=(3, 32, 32),
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    layout="ROOT/cifar-100-python/{train,test,meta}",
    hint=_CIFAR_HINT,
)
def _cifar100(root: Path, split: str, image_size: int | None) -> ImageDataset | None:
    d = _find(root, ["cifar-100-python", "."], lambda p: (p / split).is_file() and (p / "meta").is_file())
    return None if d is None else read_cifar(d, split, fine=True)


@register_dataset(
    "gtsrb",
    num_classes=43,
    input_shape=(3, 32, 32),
    layout="ROOT/GTSRB/{Training/<class>/*.ppm, Final_Test/Images/*.ppm + GT-final_test.csv}",
    hint="get the GTSRB training/test images and test GT zips from https://benchmark.ini.rub.de",
)
def _gtsrb(root: Path, split: str, image_size: int | None) -> ImageDataset | None:
    pick = 0 if split == "train" else 1
    d = _find(root, ["GTSRB", "gtsrb/GTSRB", "."], lambda p: gtsrb_paths(p)[pick] is not None)
    return None if d is None else read_gtsrb(d, split, image_size or 32)


@register_dataset(
    "tiny-imagenet",
    num_classes=200,
    input_shape=(3, 64, 64),
    mean=(0.4802, 0.4481, 0.3975),
    std=(0.2302, 0.2265, 0.2262),
    layout="ROOT/tiny-imagenet-200/{wnids.txt,words.txt,train/<wnid>/images,val/images,val/val_annotations.txt}",
    hint="extract http://cs231n.stanford.edu/tiny-imagenet-200.zip into ROOT",
)
def _tiny_imagenet(root: Path, split: str, image_size: int | None) -> ImageDataset | None:
    d = _find(root, ["tiny-imagenet-200", "."], lambda p: (p / "wnids.txt").is_file())
    return None if d is None else read_tiny_imagenet(d, split, image_size)
