"""Datasets: real on-disk formats, a registry of names, seeded subsets and loaders.

Images are float tensors in [0, 1] (NCHW) when they leave this package; the
model wrapper, not the data layer, applies the per-channel normalisation.

Example:
    >>> from otbr.data import load_dataset, sample_subset, make_loader
    >>> test = load_dataset("fashion-mnist", "test")  # doctest: +SKIP
    >>> clean = sample_subset(test, ratio=0.05, seed=0, balanced=True)  # doctest: +SKIP
    >>> for images, labels in make_loader(clean, batch_size=256): ...  # doctest: +SKIP
"""

from otbr.data.formats import (
    FASHION_MNIST_CLASSES,
    GTSRB_CLASSES,
    ImageDataset,
    load_images,
    read_cifar,
    read_gtsrb,
    read_idx,
    read_idx_dataset,
    read_image_folder,
    read_npz,
    read_tiny_imagenet,
)
from otbr.data.registry import (
    DatasetInfo,
    compute_mean_std,
    dataset_info,
    default_normalization,
    list_datasets,
    load_dataset,
    register_dataset,
)
from otbr.data.subset import make_loader, sample_subset, subset_indices

__all__ = [
    "FASHION_MNIST_CLASSES",
    "GTSRB_CLASSES",
    "DatasetInfo",
    "ImageDataset",
    "compute_mean_std",
    "dataset_info",
    "default_normalization",
    "list_datasets",
    "load_dataset",
    "load_images",
    "make_loader",
    "read_cifar",
    "read_gtsrb",
    "read_idx",
    "read_idx_dataset",
    "read_image_folder",
    "read_npz",
    "read_tiny_imagenet",
    "register_dataset",
    "sample_subset",
    "subset_indices",
]
