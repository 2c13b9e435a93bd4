"""The dataset type and readers for real on-disk image-classification formats.

Images flow through the toolkit as float tensors in [0, 1] (NCHW). The data
layer never normalises: the per-channel mean/std is applied by the model
wrapper (:class:`otbr.models.normalize.Normalized`). Nothing is downloaded and
nothing is cached on disk; a missing file is an :class:`~otbr.errors.OtbrError`
naming the path.

Readers (each takes the concrete directory or file, and a split):

* :func:`read_idx` / :func:`read_idx_dataset` — MNIST-style IDX files, gzipped or not;
* :func:`read_cifar` — the python pickles of CIFAR-10/100 (restricted unpickler);
* :func:`read_gtsrb` — GTSRB ``.ppm`` folders plus ``GT-final_test.csv``;
* :func:`read_tiny_imagenet` — ``tiny-imagenet-200`` (the test split is ``val``);
* :func:`read_image_folder` — ``PATH/{train,test}/<class>/*.png|jpg|...``;
* :func:`read_npz` — ``x``/``y`` arrays (+ optional ``classes``, ``target``).

Example:
    >>> import torch
    >>> ds = ImageDataset(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]), ["a", "b"])
    >>> ds.input_shape, ds.images().dtype, ds[1][1]
    ((1, 2, 2), torch.float32, 1)
"""

from __future__ import annotations

import codecs
import csv
import gzip
import logging
import os
import pickle
import struct
import warnings
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from otbr.errors import OtbrError
from otbr.pixels import as_float

log = logging.getLogger(__name__)

Index = int | slice | Sequence[int] | torch.Tensor | np.ndarray | None

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff", ".webp")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MNIST_CLASSES = [str(d) for d in range(10)]
GTSRB_CLASSES = [
    "Speed limit (20km/h)", "Speed limit (30km/h)", "Speed limit (50km/h)", "Speed limit (60km/h)",
    "Speed limit (70km/h)", "Speed limit (80km/h)", "End of speed limit (80km/h)", "Speed limit (100km/h)",
    "Speed limit (120km/h)", "No passing", "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection", "Priority road", "Yield", "Stop", "No vehicles",
    "Vehicles over 3.5 metric tons prohibited", "No entry", "General caution", "Dangerous curve to the left",
    "Dangerous curve to the right", "Double curve", "Bumpy road", "Slippery road", "Road narrows on the right",
    "Road work", "Traffic signals", "Pedestrians", "Children crossing", "Bicycles crossing", "Beware of ice/snow",
    "Wild animals crossing", "End of all speed and passing limits", "Turn right ahead", "Turn left ahead",
    "Ahead only", "Go straight or right", "Go straight or left", "Keep right", "Keep left", "Roundabout mandatory",
    "End of no passing", "End of no passing by vehicles over 3.5 metric tons",
]  # fmt: skip


# --------------------------------------------------------------------------- dataset type


class ImageDataset(Dataset):
    """Images ``x`` (uint8 0..255 or float32 in [0, 1], NCHW) with int64 labels ``y``.

    ``ds[i]`` gives ``(float32 CHW image in [0, 1], int label)``; indexing with a
    list, tensor or slice gives a batch ``(float32 NCHW, int64 labels)`` — that is
    what :func:`otbr.data.make_loader` uses to fetch whole batches at once.

    Attributes:
        name: dataset name (e.g. ``"cifar10"``).
        classes: class names; ``num_classes == len(classes)``.
        target: an optional attack target class carried by the file (npz), else None.
        indices: for a subset, the indices into the parent dataset, else None.

    Example:
        >>> import torch
        >>> ds = ImageDataset(torch.full((3, 1, 2, 2), 255, dtype=torch.uint8), torch.tensor([2, 0, 1]), list("abc"))
        >>> ds.subset([2, 0]).y.tolist(), float(ds.images([0]).max())
        ([1, 2], 1.0)
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        classes: Sequence[str] | None = None,
        name: str = "dataset",
        target: int | None = None,
    ) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise OtbrError(f"{name}: images must be a 4-D NCHW tensor, got shape {tuple(getattr(x, 'shape', ()))}")
        if x.dtype != torch.uint8:
            if not x.is_floating_point():
                raise OtbrError(f"{name}: images must be uint8 or float in [0, 1], got {x.dtype}")
            x = x.float()
            if x.numel() and not (bool(torch.isfinite(x).all()) and x.min() >= 0 and x.max() <= 1):
                raise OtbrError(f"{name}: float images must lie in [0, 1]")
        y = torch.as_tensor(y)
        if y.ndim != 1 or len(y) != len(x) or y.is_floating_point() or y.dtype == torch.bool:
            raise OtbrError(f"{name}: labels must be a 1-D integer tensor of length {len(x)}, got {tuple(y.shape)}")
        y = y.long()
        if classes is None:
            classes = [str(i) for i in range(int(y.max()) + 1 if len(y) else 0)]
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
            raise OtbrError(f"{name}: labels must lie in 0..{len(classes) - 1}, got {int(y.min())}..{int(y.max())}")
        if target is not None and not 0 <= target < len(classes):
            raise OtbrError(f"{name}: target class {target} is not in 0..{len(classes) - 1}")
        self.x = x
        self.y = y
        self.classes = [str(c) for c in classes]
        self.num_classes = len(self.classes)
        self.name = name
        self.target = target
        self.indices: torch.Tensor | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.x.shape[1:]
        return int(c), int(h), int(w)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, idx: Index) -> tuple[torch.Tensor, int] | tuple[torch.Tensor, torch.Tensor]:
        if isinstance(idx, int | np.integer) or (isinstance(idx, torch.Tensor) and idx.ndim == 0):
            i = int(idx)
            return as_float(self.x[i]), int(self.y[i])
        sel = _as_index(idx)
        return self.images(sel), self.y[sel]

    def images(self, idx: Index = None) -> torch.Tensor:
        """Float32 images in [0, 1] (NCHW) for ``idx`` (all when None), converted in one go.

        For float storage with ``idx`` None or a slice, the result shares memory with ``x``.
        """
        return as_float(self.x if idx is None else self.x[_as_index(idx)])

    def subset(self, indices: Sequence[int] | torch.Tensor | np.ndarray) -> ImageDataset:
        """A new dataset with the samples at ``indices`` (or a boolean mask); records them in ``.indices``."""
        idx = _as_index(indices)
        if not isinstance(idx, torch.Tensor):
            idx = torch.arange(len(self))[idx]
        out = ImageDataset(self.x[idx], self.y[idx], self.classes, self.name, self.target)
        out.indices = idx
        return out

    def with_data(self, x: torch.Tensor, y: torch.Tensor | None = None) -> ImageDataset:
        """A copy with new images (and labels, default: the current ones); name, classes and target are kept.

        Example:
            >>> import torch
            >>> ds = ImageDataset(torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]), ["a", "b"])
            >>> ds.with_data(torch.ones(2, 1, 2, 2), torch.tensor([1, 1])).y.tolist()
            [1, 1]
        """
        return ImageDataset(x, self.y if y is None else y, self.classes, self.name, self.target)

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, n={len(self)}, shape={self.input_shape}, "
            f"classes={self.num_classes}, dtype={self.x.dtype})"
        )


def _as_index(idx: Index) -> slice | torch.Tensor:
    if isinstance(idx, slice):
        return idx
    t = torch.as_tensor(idx)
    if t.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    if t.dtype == torch.bool:
        return t.nonzero().flatten()
    if t.is_floating_point():
        raise OtbrError("indices must be integers or a boolean mask")
    return t.long().reshape(-1)


# --------------------------------------------------------------------------- helpers


def check_split(split: str) -> str:
    """Validate a split name (``"train"`` or ``"test"``)."""
    if split not in ("train", "test"):
        raise OtbrError(f"unknown split {split!r}: use 'train' or 'test'")
    return split


def _require(path: Path, hint: str) -> Path:
    if not path.exists():
        raise OtbrError(f"missing {path}: {hint}")
    return path


def _first_existing(paths: Sequence[Path]) -> Path | None:
    return next((p for p in paths if p.exists()), None)


def _nhwc_to_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))


def _decode(path: Path, mode: str | None, size: int | None) -> np.ndarray:
    """One image as uint8 HxWxC; ``mode=None`` keeps grayscale as L (C=1) and turns everything else into RGB."""
    try:
        with Image.open(path) as im:
            if im.width * im.height > Image.MAX_IMAGE_PIXELS:  # PIL only warns up to twice this
                raise OtbrError(f"cannot read image {path}: {im.width}x{im.height} pixels is over PIL's limit of "
                                f"{Image.MAX_IMAGE_PIXELS} (a decompression bomb?)")
            if mode is None:
                mode = "L" if im.mode in _GRAY_MODES else "RGB"
            im = im.convert(mode)
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, Image.DecompressionBombError) as exc:  # OSError includes PIL.UnidentifiedImageError
        raise OtbrError(f"cannot read image {path}: {exc}") from exc
    return arr[:, :, None] if arr.ndim == 2 else arr


def load_images(paths: Sequence[Path], mode: str | None = "RGB", size: int | None = None) -> torch.Tensor:
    """Decode image files into one uint8 NCHW tensor (threads; PIL releases the GIL while decoding).

    ``mode`` is a PIL mode (``"RGB"``, ``"L"``) or None: 1 channel if every image is
    grayscale, else RGB. ``size`` resizes to ``size x size`` (bilinear); without it
    all images must share one size.

    Example:
        >>> load_images([]).shape
        torch.Size([0, 3, 0, 0])
    """
    if not paths:
        return torch.zeros(0, 1 if mode == "L" else 3, size or 0, size or 0, dtype=torch.uint8)
    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # _decode refuses those images itself
        arrays = list(pool.map(lambda p: _decode(p, mode, size), paths))
    if any(a.shape[2] == 3 for a in arrays):
        arrays = [np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a for a in arrays]
    first = arrays[0].shape
    for path, a in zip(paths, arrays, strict=True):
        if a.shape != first:
            raise OtbrError(
                f"images differ in size: {paths[0]} is {first[1]}x{first[0]}, {path} is {a.shape[1]}x{a.shape[0]};"
                " pass an image size to resize them"
            )
    return _nhwc_to_tensor(np.stack(arrays))


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


# --------------------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzipped or plain, detected from the content) into a numpy array.

    The header is two zero bytes, a dtype code (0x08 = uint8, ...), the number of
    dimensions and one big-endian uint32 per dimension.

    Example:
        >>> read_idx("t10k-labels-idx1-ubyte.gz").shape  # doctest: +SKIP
        (10000,)
    """
    path = Path(path)
    if not path.is_file():
        raise OtbrError(f"missing IDX file {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise OtbrError(f"{path}: corrupt gzip data ({exc})") from exc
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise OtbrError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise OtbrError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise OtbrError(f"{path}: IDX header says {dims} ({expected} bytes) but {len(raw) - header} bytes follow")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def idx_file(directory: Path, split: str, kind: str) -> Path | None:
    """The IDX file for ``split`` (train/test) and ``kind`` (images/labels) in ``directory``, if any.

    Accepts ``train-images-idx3-ubyte[.gz]`` and the dotted ``train-images.idx3-ubyte[.gz]``.
    """
    stem = "train" if split == "train" else "t10k"
    nd = 3 if kind == "images" else 1
    names = [f"{stem}-{kind}-idx{nd}-ubyte", f"{stem}-{kind}.idx{nd}-ubyte"]
    return _first_existing([directory / (n + ext) for n in names for ext in ("", ".gz")])


def read_idx_dataset(directory: str | Path, split: str, classes: Sequence[str], name: str) -> ImageDataset:
    """An MNIST-style dataset (28x28 grayscale) from the IDX image/label files in ``directory``."""
    directory = Path(directory)
    files = {}
    for kind in ("images", "labels"):
        found = idx_file(directory, check_split(split), kind)
        if found is None:
            stem = "train" if split == "train" else "t10k"
            nd = 3 if kind == "images" else 1
            raise OtbrError(f"missing {directory / f'{stem}-{kind}-idx{nd}-ubyte.gz'} (or the un-gzipped file)")
        files[kind] = found
    images, labels = read_idx(files["images"]), read_idx(files["labels"])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise OtbrError(f"{files['images']}: expected uint8 N x H x W images, got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise OtbrError(f"{files['labels']}: expected {len(images)} labels, got shape {labels.shape}")
    x = torch.from_numpy(images).unsqueeze(1)
    return ImageDataset(x, torch.from_numpy(integer_labels(labels, files["labels"])), classes, name)


def integer_labels(labels: np.ndarray, source: str | Path) -> np.ndarray:
    """``labels`` as int64 when they are integers already; a float, string or object label array is an error (a
    cast would truncate 2.7 to 2 or parse "3" silently).

    Example:
        >>> integer_labels(np.array([1, 2], dtype=np.uint8), "f").dtype
        dtype('int64')
    """
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise OtbrError(f"{source}: labels must be integers, got {labels.dtype}")
    return labels.astype(np.int64)


# --------------------------------------------------------------------------- CIFAR-10 / CIFAR-100


class _RestrictedUnpickler(pickle.Unpickler):
    """Refuses every global except what a pickled uint8 numpy array needs.

    The CIFAR python batches hold builtins plus ``data`` as a numpy array, whose
    pickle names ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and
    ``numpy.dtype``; Python 3 protocol-2 pickles of bytes also use ``_codecs.encode``.
    """

    _ALLOWED: ClassVar[dict[tuple[str, str], Any]] = {
        ("numpy.core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],
        ("numpy._core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def unpickle_restricted(path: str | Path) -> Any:
    """Unpickle a CIFAR-style file (``encoding='bytes'``) allowing no classes beyond plain numpy arrays."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return _RestrictedUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise OtbrError(f"missing {path}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise OtbrError(f"{path}: not a plain CIFAR pickle ({exc})") from exc


def _get(d: Any, key: bytes, path: Path) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise OtbrError(f"{path}: expected a dict with key {key!r}")
    return d[key]


def read_cifar(directory: str | Path, split: str, fine: bool = False, name: str | None = None) -> ImageDataset:
    """CIFAR-10 (``cifar-10-batches-py``) or, with ``fine=True``, CIFAR-100 (``cifar-100-python``).

    Example:
        >>> read_cifar("/data/cifar-10-batches-py", "test").input_shape  # doctest: +SKIP
        (3, 32, 32)
    """
    directory = Path(directory)
    hint = "extract the CIFAR python version from https://www.cs.toronto.edu/~kriz/cifar.html"
    if fine:
        files = [directory / ("train" if check_split(split) == "train" else "test")]
        meta, label_key, names_key = directory / "meta", b"fine_labels", b"fine_label_names"
    else:
        batches = [f"data_batch_{i}" for i in range(1, 6)] if check_split(split) == "train" else ["test_batch"]
        files = [directory / b for b in batches]
        meta, label_key, names_key = directory / "batches.meta", b"labels", b"label_names"
    xs, ys = [], []
    for f in files:
        batch = unpickle_restricted(_require(f, hint))
        data = np.asarray(_get(batch, b"data", f))
        labels = np.asarray(_get(batch, label_key, f))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),):
            raise OtbrError(f"{f}: expected uint8 N x 3072 data and N labels, got {data.dtype} {data.shape}")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(integer_labels(labels, f))
    raw_names = _get(unpickle_restricted(_require(meta, hint)), names_key, meta)
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw_names]
    x = torch.from_numpy(np.concatenate(xs))
    return ImageDataset(x, torch.from_numpy(np.concatenate(ys)), names, name or ("cifar100" if fine else "cifar10"))


# --------------------------------------------------------------------------- GTSRB

_GTSRB_TEST_HINT = "get GTSRB_Final_Test_Images.zip and GTSRB_Final_Test_GT.zip from https://benchmark.ini.rub.de"


def gtsrb_paths(gtsrb_dir: Path) -> tuple[Path | None, Path | None]:
    """``(training folder, test image folder)`` inside a ``GTSRB`` folder, each None when absent."""
    train = _first_existing([gtsrb_dir / "Training", gtsrb_dir / "Final_Training" / "Images"])
    test = _first_existing([gtsrb_dir / "Final_Test" / "Images"])
    return train, test


def read_gtsrb(gtsrb_dir: str | Path, split: str, image_size: int = 32, name: str = "gtsrb") -> ImageDataset:
    """GTSRB from a ``GTSRB`` folder, resized to ``image_size`` (whole image; the ROI is not cropped).

    Train: ``Training/<00000..00042>/*.ppm`` or ``Final_Training/Images/<class>/``.
    Test: ``Final_Test/Images/*.ppm`` labelled by ``GT-final_test.csv`` (semicolon CSV with
    ``Filename`` and ``ClassId``), looked up next to the images, in ``Final_Test``,
    in the ``GTSRB`` folder and in its parent (torchvision's place).
    """
    gtsrb_dir = Path(gtsrb_dir)
    train_dir, test_dir = gtsrb_paths(gtsrb_dir)
    if check_split(split) == "train":
        if train_dir is None:
            hint = "get GTSRB_Final_Training_Images.zip from https://benchmark.ini.rub.de"
            raise OtbrError(f"missing {gtsrb_dir / 'Training'}: {hint}")
        paths, labels = [], []
        for folder in sorted(p for p in train_dir.iterdir() if p.is_dir() and p.name.isdigit()):
            files = [p for p in _list_images(folder) if p.suffix.lower() in (".ppm", ".png", ".jpg", ".jpeg")]
            paths += files
            labels += [int(folder.name)] * len(files)
    else:
        if test_dir is None:
            raise OtbrError(f"missing {gtsrb_dir / 'Final_Test' / 'Images'}: {_GTSRB_TEST_HINT}")
        places = [test_dir, test_dir.parent, gtsrb_dir, gtsrb_dir.parent]
        csv_path = _first_existing([d / "GT-final_test.csv" for d in places])
        if csv_path is None:
            raise OtbrError(f"missing {test_dir / 'GT-final_test.csv'} (test labels): {_GTSRB_TEST_HINT}")
        with csv_path.open(newline="") as f:
            rows = list(csv.DictReader(f, delimiter=";"))
        if not rows or "Filename" not in rows[0] or "ClassId" not in rows[0]:
            raise OtbrError(f"{csv_path}: expected a ';' CSV with Filename and ClassId columns")
        paths = [test_dir / r["Filename"] for r in rows]
        labels = [int(r["ClassId"]) for r in rows]
        for p in paths:
            _require(p, f"listed in {csv_path}")
    if not paths:
        raise OtbrError(f"no GTSRB images found under {train_dir if split == 'train' else test_dir}")
    x = load_images(paths, "RGB", image_size)
    return ImageDataset(x, torch.tensor(labels, dtype=torch.int64), GTSRB_CLASSES, name)


# --------------------------------------------------------------------------- Tiny-ImageNet


def read_tiny_imagenet(
    directory: str | Path, split: str, image_size: int | None = None, name: str = "tiny-imagenet"
) -> ImageDataset:
    """Tiny-ImageNet-200 from ``tiny-imagenet-200``; the test split is ``val`` (10,000 labelled images).

    Classes are the wnids of ``wnids.txt`` sorted alphabetically (torchvision
    ``ImageFolder`` order), named by the first entry of ``words.txt``.
    """
    directory = Path(directory)
    hint = "extract tiny-imagenet-200.zip (http://cs231n.stanford.edu/tiny-imagenet-200.zip)"
    wnids = sorted({w.strip() for w in _require(directory / "wnids.txt", hint).read_text().split() if w.strip()})
    words: dict[str, str] = {}
    if (directory / "words.txt").is_file():
        for line in (directory / "words.txt").read_text().splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid.strip()] = text.split(",")[0].strip()
    label_of = {w: i for i, w in enumerate(wnids)}
    paths: list[Path] = []
    labels: list[int] = []
    if check_split(split) == "train":
        for wnid in wnids:
            files = _list_images(_require(directory / "train" / wnid / "images", hint))
            paths += files
            labels += [label_of[wnid]] * len(files)
    else:
        ann = _require(directory / "val" / "val_annotations.txt", hint)
        for line_no, line in enumerate(ann.read_text().splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in label_of:
                raise OtbrError(f"{ann}:{line_no}: expected '<file>\\t<wnid from wnids.txt>...'")
            paths.append(_require(directory / "val" / "images" / fields[0], f"listed in {ann}"))
            labels.append(label_of[fields[1]])
    x = load_images(paths, "RGB", image_size)
    classes = [words.get(w) or w for w in wnids]
    return ImageDataset(x, torch.tensor(labels, dtype=torch.int64), classes, name)


# --------------------------------------------------------------------------- image folders


def read_image_folder(
    path: str | Path, split: str, image_size: int | None = None, name: str | None = None
) -> ImageDataset:
    """``PATH/train/<class>/*`` and ``PATH/test/<class>/*``; a folder without train/test serves both splits.

    Classes are the class folders of the train split (else of the folder used),
    sorted alphabetically. Images get one channel if all of the split is
    grayscale, else RGB.

    Example:
        >>> read_image_folder("my_images", "test", image_size=32)  # doctest: +SKIP
    """
    root = Path(path)
    name = name or f"imagefolder:{root}"
    if not root.is_dir():
        raise OtbrError(f"image folder {root} does not exist")
    if (root / "train").is_dir() or (root / "test").is_dir():
        folder = _require(root / check_split(split), f"expected {root}/train/<class>/ and {root}/test/<class>/")
        class_root = root / "train" if (root / "train").is_dir() else folder
    else:
        log.warning("%s has no train/ or test/ subfolder: using the same images for both splits", root)
        folder = class_root = root
        check_split(split)
    classes = sorted(p.name for p in class_root.iterdir() if p.is_dir())
    if not classes:
        raise OtbrError(f"no class folders in {class_root}: expected {class_root}/<class>/<image files>")
    paths: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        if (folder / cls).is_dir():
            files = _list_images(folder / cls)
            paths += files
            labels += [label] * len(files)
    unknown = sorted({p.name for p in folder.iterdir() if p.is_dir()} - set(classes))
    if unknown:
        raise OtbrError(f"{folder}: class folders {unknown} do not exist in {class_root}")
    if not paths:
        raise OtbrError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders of {folder}")
    x = load_images(paths, None, image_size)
    return ImageDataset(x, torch.tensor(labels, dtype=torch.int64), classes, name)


# --------------------------------------------------------------------------- npz


def _channel_first(x: np.ndarray, file: Path) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 4:
        raise OtbrError(f"{file}: x must be N x H x W, N x C x H x W or N x H x W x C, got shape {x.shape}")
    c1, c3 = x.shape[1] in (1, 3), x.shape[3] in (1, 3)
    if c1 and (not c3 or x.shape[1] <= x.shape[3]):
        return x
    if c3:
        return x.transpose(0, 3, 1, 2)
    raise OtbrError(f"{file}: cannot find a channel axis of size 1 or 3 in x of shape {x.shape}")


def read_npz(file: str | Path, split: str = "train", name: str | None = None) -> ImageDataset:
    """A dataset from a ``.npz`` file holding ``x`` and ``y`` (or ``x_train``/``y_train``, ``x_test``/``y_test``).

    ``x``: uint8 0..255 (or any integer type within that range) or float in
    [0, 1]; N x H x W (one channel), NCHW or NHWC — the channel axis is the one
    of axes 1 and 3 of size 1 or 3 (the smaller one; NCHW on a tie). Optional
    ``classes`` (string array) and ``target`` (int, kept as ``.target``).
    Without ``classes`` there are ``max(y) + 1`` classes, named by number.

    Example:
        >>> import numpy as np
        >>> np.savez("d.npz", x=np.zeros((2, 8, 8, 3), np.uint8), y=np.array([0, 1]))  # doctest: +SKIP
        >>> read_npz("d.npz").input_shape  # doctest: +SKIP
        (3, 8, 8)
    """
    file = Path(file)
    x, y, arrays = npz_arrays(file, split)
    classes = None
    if "classes" in arrays:
        c = arrays["classes"]
        if c.ndim != 1 or c.dtype.kind not in "US":
            raise OtbrError(f"{file}: classes must be a 1-D string array, got {c.dtype} of shape {c.shape}")
        classes = [s.decode() if isinstance(s, bytes) else str(s) for s in c.tolist()]
    return ImageDataset(x, y, classes, name or f"npz:{file}", npz_target(file, arrays))


def npz_arrays(file: Path, split: str = "train") -> tuple[torch.Tensor, torch.Tensor, dict[str, np.ndarray]]:
    """The checked images (uint8, or float32 in [0, 1]; NCHW) and int64 labels of an ``.npz`` (see
    :func:`read_npz`), and all its arrays."""
    if not file.is_file():
        raise OtbrError(f"missing npz file {file}; check the path (npz:FILE, a .npz with arrays x and y)")
    try:
        loaded = np.load(file, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise OtbrError(f"{file}: a single array (.npy), not an .npz archive of named arrays x and y")
        with loaded as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise OtbrError(f"{file}: cannot read as npz without pickles ({exc}); it is truncated, corrupt or not an "
                        ".npz") from exc
    xk, yk = ("x", "y") if "x" in arrays else (f"x_{check_split(split)}", f"y_{split}")
    if xk not in arrays or yk not in arrays:
        other = "" if xk == "x" else f" (or '{xk}' and '{yk}')"
        raise OtbrError(f"{file}: needs arrays 'x' and 'y'{other}, found {sorted(arrays)}")
    x, y = arrays[xk], arrays[yk]
    if x.dtype.kind in "iu":
        if x.size and (x.min() < 0 or x.max() > 255):
            raise OtbrError(f"{file}: integer x must lie in 0..255, got {x.min()}..{x.max()}")
        x = x.astype(np.uint8, copy=False)
    elif x.dtype.kind == "f":
        if x.size and not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
            raise OtbrError(f"{file}: float x must lie in [0, 1]")
        x = x.astype(np.float32, copy=False)
    else:
        raise OtbrError(f"{file}: x must be uint8 or float, got {x.dtype}")
    x = _channel_first(x, file)
    if y.ndim != 1 or y.dtype.kind not in "iu" or len(y) != len(x):
        raise OtbrError(f"{file}: y must be {len(x)} integer labels, got {y.dtype} of shape {y.shape}")
    if len(y) and int(y.min()) < 0:
        raise OtbrError(f"{file}: labels must be ≥ 0, got {int(y.min())}")
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64)), arrays


def npz_target(file: Path, arrays: dict[str, np.ndarray]) -> int | None:
    """The ``target`` entry of an ``.npz``'s arrays: one integer ≥ 0, or ``None`` when absent."""
    if "target" not in arrays:
        return None
    t = arrays["target"]
    if t.size != 1 or t.dtype.kind not in "iu" or int(t.reshape(())) < 0:
        raise OtbrError(f"{file}: target must be one integer ≥ 0, got {t.dtype} of shape {t.shape}")
    return int(t.reshape(()))
