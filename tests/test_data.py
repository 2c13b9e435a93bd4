"""Tests for otbr.data: tiny files in each real on-disk format, read back exactly."""

from __future__ import annotations

import csv
import gzip
import logging
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from otbr.data import (
    FASHION_MNIST_CLASSES,
    ImageDataset,
    dataset_info,
    default_normalization,
    list_datasets,
    load_dataset,
    make_loader,
    read_cifar,
    read_idx,
    read_npz,
    sample_subset,
    subset_indices,
)
from otbr.errors import OtbrError

FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- IDX


def write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> None:
    raw = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if gz else raw)


def make_idx_split(folder: Path, split: str, n: int, seed: int, gz: bool = True) -> tuple[np.ndarray, np.ndarray]:
    images = rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng(seed + 1).integers(0, 10, size=n, dtype=np.uint8)
    stem = "train" if split == "train" else "t10k"
    ext = ".gz" if gz else ""
    write_idx(folder / f"{stem}-images-idx3-ubyte{ext}", images, gz)
    write_idx(folder / f"{stem}-labels-idx1-ubyte{ext}", labels, gz)
    return images, labels


def test_idx_gz_and_plain_in_torchvision_layout(tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    train_x, train_y = make_idx_split(raw, "train", 7, seed=1, gz=True)
    test_x, test_y = make_idx_split(raw, "test", 4, seed=2, gz=False)
    train = load_dataset("fashion-mnist", "train", root=tmp_path)
    test = load_dataset("fashion_MNIST", "test", root=tmp_path)
    assert train.x.shape == (7, 1, 28, 28) and train.x.dtype == torch.uint8
    assert torch.equal(train.x[:, 0], torch.from_numpy(train_x))
    assert train.y.tolist() == train_y.tolist() and train.y.dtype == torch.int64
    assert torch.equal(test.x[:, 0], torch.from_numpy(test_x)) and test.y.tolist() == test_y.tolist()
    assert train.classes == FASHION_MNIST_CLASSES and train.num_classes == 10 and train.name == "fashion-mnist"
    image, label = test[3]
    assert image.dtype == torch.float32 and label == int(test_y[3])
    assert torch.allclose(image[0], torch.from_numpy(test_x[3]).float() / 255)


def test_idx_header_dims_and_dtype(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", arr)
    out = read_idx(tmp_path / "a.gz")
    assert out.shape == (2, 3, 4) and out.dtype == np.uint8 and np.array_equal(out, arr)
    # big-endian int32 payload (dtype code 0x0C)
    ints = np.array([1, -2, 70000], dtype=">i4")
    (tmp_path / "b").write_bytes(struct.pack(">BBBBI", 0, 0, 0x0C, 1, 3) + ints.tobytes())
    assert read_idx(tmp_path / "b").tolist() == [1, -2, 70000]


@pytest.mark.parametrize(
    "raw, message",
    [
        (struct.pack(">BBBBI", 8, 0, 8, 1, 2) + b"\x01\x02", "bad magic"),  # nonzero leading byte
        (struct.pack(">BBBBI", 0, 0, 0x07, 1, 2) + b"\x01\x02", "bad magic"),  # unknown dtype code
        (struct.pack(">BBBBI", 0, 0, 8, 1, 3) + b"\x01\x02", "bytes follow"),  # payload too short
        (b"\x00\x00\x08\x02\x00", "truncated"),
    ],
)
def test_idx_rejects_bad_files(tmp_path: Path, raw: bytes, message: str) -> None:
    (tmp_path / "bad.gz").write_bytes(gzip.compress(raw))
    with pytest.raises(OtbrError, match=message):
        read_idx(tmp_path / "bad.gz")


def test_missing_data_names_path_and_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTBR_DATA_ROOT", raising=False)
    with pytest.raises(OtbrError, match=r"not found under .*dataset-fashion-mnist") as err:
        load_dataset("fashion-mnist", "test", root=tmp_path)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
    # images present, labels missing: the exact missing file is named
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(OtbrError, match=r"t10k-labels-idx1-ubyte\.gz"):
        load_dataset("mnist", "test", root=tmp_path)


def test_data_root_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, labels = make_idx_split(tmp_path / "mnist", "test", 3, seed=5)
    monkeypatch.setenv("OTBR_DATA_ROOT", str(tmp_path))
    ds = load_dataset("mnist", "test")
    assert ds.y.tolist() == labels.tolist() and ds.classes == [str(i) for i in range(10)]


# --------------------------------------------------------------------------- CIFAR


def _touch(path: str) -> None:
    Path(path).touch()


class Evil:
    """Unpickling this runs _touch(marker): a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return _touch, (self.marker,)


def write_pickle(path: Path, obj: object, protocol: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def test_cifar10_batches(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    all_data, all_labels = [], []
    for i in range(1, 6):
        data = rng(i).integers(0, 256, size=(2, 3072), dtype=np.uint8)
        labels = [(i + j) % 10 for j in range(2)]
        write_pickle(folder / f"data_batch_{i}", {b"batch_label": b"x", b"data": data, b"labels": labels})
        all_data.append(data)
        all_labels += labels
    test_data = rng(9).integers(0, 256, size=(3, 3072), dtype=np.uint8)
    write_pickle(folder / "test_batch", {b"data": test_data, b"labels": [4, 0, 9]}, protocol=4)
    names = [f"class{i}".encode() for i in range(10)]
    write_pickle(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})

    train = load_dataset("cifar10", "train", root=tmp_path)
    data = np.concatenate(all_data)
    assert train.x.shape == (10, 3, 32, 32) and train.y.tolist() == all_labels
    # channel-major rows: pixel (c, h, w) is column c*1024 + h*32 + w
    assert int(train.x[3, 2, 5, 7]) == int(data[3, 2 * 1024 + 5 * 32 + 7])
    assert torch.equal(train.x.reshape(10, -1), torch.from_numpy(data))
    test = load_dataset("cifar10", "test", root=tmp_path)
    assert test.y.tolist() == [4, 0, 9] and test.classes[3] == "class3" and test.num_classes == 10
    assert torch.equal(test.x.reshape(3, -1), torch.from_numpy(test_data))


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    data = rng(3).integers(0, 256, size=(4, 3072), dtype=np.uint8)
    write_pickle(folder / "test", {b"data": data, b"fine_labels": [99, 0, 50, 7], b"coarse_labels": [1, 2, 3, 4]})
    write_pickle(folder / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    ds = load_dataset("cifar100", "test", root=tmp_path)
    assert ds.y.tolist() == [99, 0, 50, 7] and ds.num_classes == 100 and ds.classes[99] == "f99"
    assert torch.equal(ds.x.reshape(4, -1), torch.from_numpy(data))


def test_cifar_pickle_with_foreign_class_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    marker = tmp_path / "pwned"
    data = np.zeros((1, 3072), np.uint8)
    write_pickle(folder / "test_batch", {b"data": data, b"labels": [0], b"extra": Evil(marker)})
    write_pickle(folder / "batches.meta", {b"label_names": [b"a"] * 10})
    with pytest.raises(OtbrError, match="refusing to load"):
        read_cifar(folder, "test")
    assert not marker.exists()
    with (folder / "test_batch").open("rb") as f:  # the file really is dangerous for plain pickle
        pickle.load(f)
    assert marker.exists()


# --------------------------------------------------------------------------- GTSRB


def save(path: Path, arr: np.ndarray, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)


def solid(h: int, w: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


def test_gtsrb_train_and_test(tmp_path: Path) -> None:
    base = tmp_path / "GTSRB"
    exact = rng(4).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    save(base / "Training" / "00000" / "00000_00000.ppm", exact)  # already 32x32: passes unchanged
    save(base / "Training" / "00000" / "00000_00001.ppm", solid(40, 35, (10, 20, 30)))
    save(base / "Training" / "00042" / "00000_00000.ppm", solid(29, 31, (200, 100, 0)))
    (base / "Training" / "00042" / "GT-00042.csv").write_text("Filename;ClassId\n00000_00000.ppm;42\n")
    train = load_dataset("gtsrb", "train", root=tmp_path)
    assert train.x.shape == (3, 3, 32, 32) and train.y.tolist() == [0, 0, 42] and train.num_classes == 43
    assert torch.equal(train.x[0], torch.from_numpy(exact).permute(2, 0, 1))
    assert train.x[1].reshape(3, -1).unique(dim=1).flatten().tolist() == [10, 20, 30]
    assert train.x[2].reshape(3, -1).unique(dim=1).flatten().tolist() == [200, 100, 0]
    # resizing is bilinear: a sharp vertical edge becomes a ramp (nearest-neighbour would keep it sharp)
    edge = np.zeros((64, 64, 3), np.uint8)
    edge[:, 32:] = 240
    save(base / "Training" / "00001" / "edge.ppm", edge)
    row = load_dataset("gtsrb", "train", root=tmp_path).x[2, 0, 10].tolist()
    assert row[:14] == [0] * 14 and row[18:] == [240] * 14 and 0 < row[15] < row[16] < 240

    images = base / "Final_Test" / "Images"
    save(images / "00000.ppm", solid(50, 50, (1, 2, 3)))
    save(images / "00001.ppm", solid(30, 30, (4, 5, 6)))
    with pytest.raises(OtbrError, match=r"GT-final_test\.csv"):
        load_dataset("gtsrb", "test", root=tmp_path)
    rows = [["00001.ppm", 30, 30, 5, 5, 25, 25, 13], ["00000.ppm", 50, 50, 5, 5, 45, 45, 7]]
    with (images / "GT-final_test.csv").open("w", newline="") as f:
        writer = csv.writer(f, delimiter=";")
        writer.writerow(["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"])
        writer.writerows(rows)
    test = load_dataset("gtsrb", "test", root=tmp_path, image_size=16)
    assert test.x.shape == (2, 3, 16, 16) and test.y.tolist() == [13, 7]  # CSV order, CSV labels
    assert test.x[0, :, 3, 3].tolist() == [4, 5, 6] and test.x[1, :, 0, 0].tolist() == [1, 2, 3]


def test_gtsrb_official_and_torchvision_layouts(tmp_path: Path) -> None:
    save(tmp_path / "a" / "GTSRB" / "Final_Training" / "Images" / "00005" / "x.ppm", solid(32, 32, (9, 9, 9)))
    assert load_dataset("gtsrb", "train", root=tmp_path / "a").y.tolist() == [5]
    tv = tmp_path / "b" / "gtsrb"
    save(tv / "GTSRB" / "Final_Test" / "Images" / "00000.ppm", solid(32, 32, (9, 9, 9)))
    (tv / "GT-final_test.csv").write_text("Filename;ClassId\n00000.ppm;3\n")
    assert load_dataset("gtsrb", "test", root=tmp_path / "b").y.tolist() == [3]


# --------------------------------------------------------------------------- Tiny-ImageNet


def test_tiny_imagenet(tmp_path: Path) -> None:
    base = tmp_path / "tiny-imagenet-200"
    base.mkdir()
    (base / "wnids.txt").write_text("n02000002\nn01000001\n")  # not sorted on purpose
    (base / "words.txt").write_text("n01000001\tgoldfish, Carassius auratus\nn02000002\tsalamander\nn09\tother\n")
    # PNG content under .JPEG names (PIL reads by content): exact pixels, unlike lossy JPEG
    save(base / "train" / "n01000001" / "images" / "n01000001_0.JPEG", solid(64, 64, (1, 2, 3)), "PNG")
    save(base / "train" / "n02000002" / "images" / "n02000002_0.JPEG", solid(64, 64, (4, 5, 6)), "PNG")
    gray = np.full((64, 64), 77, np.uint8)
    save(base / "train" / "n02000002" / "images" / "n02000002_1.JPEG", gray, "PNG")
    save(base / "val" / "images" / "val_0.JPEG", solid(64, 64, (7, 8, 9)), "PNG")
    save(base / "val" / "images" / "val_1.JPEG", solid(64, 64, (0, 0, 1)), "JPEG")  # a real JPEG
    (base / "val" / "val_annotations.txt").write_text(
        "val_0.JPEG\tn02000002\t0\t0\t63\t63\nval_1.JPEG\tn01000001\t1\t1\t9\t9\n"
    )
    train = load_dataset("tiny-imagenet", "train", root=tmp_path)
    assert train.classes == ["goldfish", "salamander"] and train.y.tolist() == [0, 1, 1]
    assert train.x.shape == (3, 3, 64, 64)
    assert train.x[:, :, 10, 10].tolist() == [[1, 2, 3], [4, 5, 6], [77, 77, 77]]
    test = load_dataset("tiny-imagenet", "test", root=tmp_path, image_size=32)
    assert test.x.shape == (2, 3, 32, 32) and test.y.tolist() == [1, 0]
    assert test.x[0, :, 5, 5].tolist() == [7, 8, 9] and test.x[1, :, 5, 5].sub(torch.tensor([0, 0, 1])).abs().max() <= 2


# --------------------------------------------------------------------------- image folders


def test_image_folder_train_test(tmp_path: Path) -> None:
    a = rng(1).integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    save(tmp_path / "train" / "dog" / "1.png", a)
    save(tmp_path / "train" / "cat" / "b.bmp", solid(6, 5, (3, 3, 3)))
    save(tmp_path / "train" / "cat" / "a.png", solid(6, 5, (1, 1, 1)))
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    save(tmp_path / "test" / "dog" / "z.png", a)
    train = load_dataset(f"imagefolder:{tmp_path}", "train")
    assert train.classes == ["cat", "dog"] and train.y.tolist() == [0, 0, 1] and train.x.shape == (3, 3, 6, 5)
    assert train.x[:, 0, 0, 0].tolist() == [1, 3, int(a[0, 0, 0])]
    assert torch.equal(train.x[2], torch.from_numpy(a).permute(2, 0, 1))
    test = load_dataset(f"imagefolder:{tmp_path}", "test")
    assert test.classes == ["cat", "dog"] and test.y.tolist() == [1]  # class ids follow train
    resized = load_dataset(f"imagefolder:{tmp_path}", "train", image_size=4)
    assert resized.x.shape == (3, 3, 4, 4) and resized.x[1].unique().tolist() == [3]


def test_image_folder_single_grayscale_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    save(tmp_path / "b" / "x.png", np.full((4, 4), 200, np.uint8))
    save(tmp_path / "a" / "y.png", np.full((4, 4), 10, np.uint8))
    with caplog.at_level(logging.WARNING, logger="otbr.data"):
        ds = load_dataset(f"imagefolder:{tmp_path}", "test")
    assert "same images for both splits" in caplog.text
    assert ds.x.shape == (2, 1, 4, 4) and ds.y.tolist() == [0, 1] and ds.x[:, 0, 0, 0].tolist() == [10, 200]


def test_image_folder_mixed_sizes_need_resize(tmp_path: Path) -> None:
    save(tmp_path / "a" / "1.png", solid(4, 4, (0, 0, 0)))
    save(tmp_path / "a" / "2.png", solid(5, 4, (0, 0, 0)))
    with pytest.raises(OtbrError, match="differ in size"):
        load_dataset(f"imagefolder:{tmp_path}")
    assert load_dataset(f"imagefolder:{tmp_path}", image_size=8).x.shape == (2, 3, 8, 8)


def test_image_folder_refuses_decompression_bombs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PIL only warns between its pixel limit and twice it, and raises its own error beyond: both are one
    OtbrError, checked before any pixel is decoded. (The limit is lowered so the test files stay tiny.)"""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    save(tmp_path / "a" / "ok.png", solid(10, 10, (0, 0, 0)))
    assert load_dataset(f"imagefolder:{tmp_path}").x.shape == (1, 3, 10, 10)
    for side, message in ((12, "over PIL's limit of 100"), (20, "decompression bomb")):
        (tmp_path / "a" / "big.png").unlink(missing_ok=True)
        save(tmp_path / "a" / "big.png", solid(side, side, (0, 0, 0)))
        with pytest.raises(OtbrError, match=message):
            load_dataset(f"imagefolder:{tmp_path}", image_size=10)


def test_non_integer_labels_are_refused_not_truncated(tmp_path: Path) -> None:
    """Float labels were cast (2.7 → class 2) and numeric strings parsed, silently."""
    folder = tmp_path / "cifar-10-batches-py"
    write_pickle(folder / "batches.meta", {b"label_names": [b"a"] * 10})
    for labels in ([2.7], ["3"], np.array([True])):
        write_pickle(folder / "test_batch", {b"data": np.zeros((1, 3072), np.uint8), b"labels": labels})
        with pytest.raises(OtbrError, match="labels must be integers"):
            read_cifar(folder, "test")
    raw = tmp_path / "idx"
    make_idx_split(raw, "test", 2, seed=0)
    floats = np.array([1.0, 2.5], ">f4")
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(struct.pack(">BBBB", 0, 0, 0x0D, 1) + struct.pack(">I", 2) + floats.tobytes()))
    with pytest.raises(OtbrError, match="labels must be integers, got float32"):
        load_dataset("fashion-mnist", "test", root=raw)


# --------------------------------------------------------------------------- npz


def test_npz_uint8_nhwc_with_classes_and_target(tmp_path: Path) -> None:
    x = rng(2).integers(0, 256, size=(5, 6, 7, 3), dtype=np.uint8)
    y = np.array([0, 2, 1, 2, 0])
    np.savez(tmp_path / "d.npz", x=x, y=y, classes=np.array(["a", "b", "c"]), target=np.int64(2))
    ds = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert ds.x.shape == (5, 3, 6, 7) and ds.x.dtype == torch.uint8
    assert torch.equal(ds.x, torch.from_numpy(x).permute(0, 3, 1, 2))
    assert ds.y.tolist() == y.tolist() and ds.classes == ["a", "b", "c"] and ds.target == 2
    assert ds.subset([1]).target == 2


def test_npz_float_nchw_and_grayscale(tmp_path: Path) -> None:
    x = rng(3).random((4, 3, 5, 5), dtype=np.float32)
    np.savez(tmp_path / "f.npz", x=x, y=np.array([1, 0, 1, 1]))
    ds = read_npz(tmp_path / "f.npz")
    assert ds.x.dtype == torch.float32 and torch.equal(ds.x, torch.from_numpy(x))
    assert ds.classes == ["0", "1"] and ds.target is None and torch.equal(ds.images(), torch.from_numpy(x))
    g = rng(4).integers(0, 256, size=(2, 9, 9), dtype=np.uint8)
    np.savez(tmp_path / "g.npz", x_train=g, y_train=np.array([0, 1]), x_test=g[:1], y_test=np.array([1]))
    assert read_npz(tmp_path / "g.npz", "train").x.shape == (2, 1, 9, 9)
    assert torch.equal(read_npz(tmp_path / "g.npz", "test").x[0, 0], torch.from_numpy(g[0]))


def test_npz_generic_resize(tmp_path: Path) -> None:
    np.savez(tmp_path / "r.npz", x=np.full((2, 1, 8, 8), 90, np.uint8), y=np.array([0, 0]))
    ds = load_dataset(f"npz:{tmp_path / 'r.npz'}", image_size=4)
    assert ds.x.shape == (2, 1, 4, 4) and ds.x.dtype == torch.uint8 and ds.x.unique().tolist() == [90]


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.zeros((2, 5, 5, 5), np.uint8), "y": np.zeros(2, int)}, "channel axis"),
        ({"x": np.zeros((2, 5), np.uint8), "y": np.zeros(2, int)}, "shape"),
        ({"x": np.full((2, 1, 4, 4), 1.5, np.float32), "y": np.zeros(2, int)}, r"\[0, 1\]"),
        ({"x": np.full((2, 1, 4, 4), 300, np.int32), "y": np.zeros(2, int)}, "0..255"),
        ({"x": np.zeros((2, 1, 4, 4), np.uint8), "y": np.zeros(3, int)}, "integer labels"),
        ({"x": np.zeros((2, 1, 4, 4), np.uint8), "y": np.array([0, 5]), "classes": np.array(["a"])}, "0..0"),
        ({"x": np.zeros((2, 1, 4, 4), np.uint8)}, "needs arrays"),
        ({"x": np.zeros((2, 1, 4, 4), np.uint8), "y": np.array([0, 1], dtype=object)}, "without pickles"),
    ],
)
def test_npz_rejects_bad_content(tmp_path: Path, arrays: dict, message: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(OtbrError, match=message):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")


# --------------------------------------------------------------------------- registry and dataset type


def test_registry() -> None:
    assert {"fashion-mnist", "mnist", "cifar10", "cifar100", "gtsrb", "tiny-imagenet"} <= set(list_datasets())
    with pytest.raises(OtbrError, match=r"unknown dataset 'svhn'.*cifar10.*tiny-imagenet"):
        load_dataset("svhn")
    with pytest.raises(OtbrError, match="split"):
        load_dataset("mnist", "val")
    info = dataset_info("fashion-mnist")
    assert info.mean == (0.2860,) and info.std == (0.3530,) and info.input_shape == (1, 28, 28)
    assert info.default_root == FASHION_DEBIAN and info.num_classes == 10
    assert dataset_info("cifar10").std == (0.2470, 0.2435, 0.2616)
    assert dataset_info("gtsrb").num_classes == 43 and dataset_info("gtsrb").mean == (0.5, 0.5, 0.5)
    assert dataset_info("tiny-imagenet").input_shape == (3, 64, 64)
    assert dataset_info("npz:/x.npz").num_classes is None


def test_image_dataset_accessors() -> None:
    x = torch.arange(4 * 2 * 2, dtype=torch.uint8).reshape(4, 1, 2, 2) * 10
    ds = ImageDataset(x, torch.tensor([0, 1, 1, 0]), ["a", "b"], name="mnist")
    assert ds.input_shape == (1, 2, 2) and len(ds) == 4 and ds.num_classes == 2
    assert torch.equal(ds.images([2, 0]), x[[2, 0]].float() / 255)
    batch_x, batch_y = ds[[3, 1]]
    assert torch.equal(batch_x, x[[3, 1]].float() / 255) and batch_y.tolist() == [0, 1]
    sub = ds.subset(torch.tensor([False, True, False, True]))
    assert sub.indices.tolist() == [1, 3] and torch.equal(sub.x, x[[1, 3]])
    poisoned = ds.with_data(torch.zeros(4, 1, 2, 2), torch.tensor([1, 1, 1, 1]))
    assert poisoned.x.dtype == torch.float32 and poisoned.y.tolist() == [1] * 4 and poisoned.classes == ["a", "b"]
    assert default_normalization(ds) == ((0.1307,), (0.3081,))
    with pytest.raises(OtbrError, match="labels must lie"):
        ImageDataset(x, torch.tensor([0, 1, 2, 0]), ["a", "b"])
    with pytest.raises(OtbrError, match=r"\[0, 1\]"):
        ImageDataset(torch.full((1, 1, 2, 2), 2.0), torch.tensor([0]))


# --------------------------------------------------------------------------- subsets and loaders


def labelled(counts: list[int]) -> ImageDataset:
    y = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    x = torch.arange(len(y), dtype=torch.float32).reshape(-1, 1, 1, 1) / len(y)
    return ImageDataset(x, y)


def test_subset_seeded_and_reproducible() -> None:
    ds = labelled([50, 30, 20])
    a = sample_subset(ds, ratio=0.25, seed=7)
    b = sample_subset(ds, ratio=0.25, seed=7)
    c = sample_subset(ds, ratio=0.25, seed=8)
    assert len(a) == 25 and a.indices.tolist() == b.indices.tolist() != c.indices.tolist()
    assert a.indices.unique().numel() == 25 and torch.equal(a.y, ds.y[a.indices]) and torch.equal(a.x, ds.x[a.indices])
    state = torch.random.get_rng_state()
    subset_indices(ds.y, count=10, seed=1)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched
    assert sample_subset(ds, ratio=1.0).indices.tolist() == list(range(100))


@pytest.mark.parametrize(
    "counts, k, expected",
    [([50, 30, 20], 30, [10, 10, 10]), ([50, 30, 20], 10, [3, 3, 4]), ([50, 30, 5], 60, [27, 28, 5])],
)
def test_subset_balanced(counts: list[int], k: int, expected: list[int]) -> None:
    ds = labelled(counts)
    for seed in range(3):
        sub = sample_subset(ds, count=k, seed=seed, balanced=True)
        per_class = torch.bincount(sub.y, minlength=len(counts)).tolist()
        assert sorted(per_class) == sorted(expected) and len(sub) == k
        assert torch.equal(sub.y, ds.y[sub.indices]) and sub.indices.unique().numel() == k
    # which classes get the extra sample depends on the seed, but the capped class is always taken whole
    if counts[2] == 5:
        assert per_class[2] == 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ratio": 0.0}, r"\(0, 1\]"),
        ({"ratio": 1.5}, r"\(0, 1\]"),
        ({"count": 101}, "1..100"),
        ({"count": 0}, "1..100"),
        ({}, "exactly one"),
        ({"ratio": 0.5, "count": 3}, "exactly one"),
    ],
)
def test_subset_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(OtbrError, match=message):
        sample_subset(labelled([50, 50]), **kwargs)


def test_make_loader_batches_and_seeded_shuffle() -> None:
    ds = labelled([6, 4])
    batches = list(make_loader(ds, batch_size=4))
    assert [b[0].shape for b in batches] == [(4, 1, 1, 1), (4, 1, 1, 1), (2, 1, 1, 1)]
    assert torch.equal(torch.cat([b[0] for b in batches]), ds.images()) and batches[2][1].tolist() == [1, 1]

    def order(seed: int) -> list[int]:
        return [round(float(v) * 10) for x, _ in make_loader(ds, batch_size=3, shuffle=True, seed=seed) for v in x]

    assert order(1) == order(1) != order(2) and sorted(order(1)) == list(range(10))
    assert len(make_loader(ds, batch_size=3, drop_last=True)) == 3


# --------------------------------------------------------------------------- the real Fashion-MNIST


@pytest.mark.skipif(
    not (FASHION_DEBIAN / "t10k-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed (Debian package dataset-fashion-mnist)",
)
def test_real_fashion_mnist_test_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTBR_DATA_ROOT", raising=False)
    ds = load_dataset("fashion-mnist", "test")
    assert ds.x.shape == (10000, 1, 28, 28) and ds.x.dtype == torch.uint8 and ds.num_classes == 10
    assert torch.bincount(ds.y).tolist() == [1000] * 10 and ds.y[:5].tolist() == [9, 2, 1, 1, 6]
