"""Seeded subsets (the "clean data the defender holds") and data loaders.

Every random choice uses its own ``torch.Generator`` seeded from ``seed``; the
global RNG is never touched, so the same seed always gives the same subset.

Example:
    >>> import torch
    >>> from otbr.data.formats import ImageDataset
    >>> ds = ImageDataset(torch.zeros(10, 1, 2, 2), torch.arange(10) % 2)
    >>> sub = sample_subset(ds, count=4, seed=1, balanced=True)
    >>> len(sub), torch.bincount(sub.y).tolist(), len(sub.indices)
    (4, [2, 2], 4)
"""

from __future__ import annotations

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from otbr.data.formats import ImageDataset
from otbr.errors import OtbrError


def _subset_size(n: int, ratio: float | None, count: int | None) -> int:
    if (ratio is None) == (count is None):
        raise OtbrError("give exactly one of a ratio or a count for the subset")
    if ratio is not None:
        if not 0 < ratio <= 1:
            raise OtbrError(f"subset ratio must be in (0, 1], got {ratio}")
        return max(1, round(ratio * n)) if n else 0
    assert count is not None
    if not 0 < count <= n:
        raise OtbrError(f"subset count must be in 1..{n} (the dataset size), got {count}")
    return count


def _balanced_quota(per_class: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """How many to take from each class: as equal as the class sizes allow, ties broken at random."""
    order = torch.randperm(len(per_class), generator=gen)
    order = order[torch.argsort(per_class[order], stable=True)]  # smallest classes first, random among equals
    quota = torch.zeros_like(per_class)
    left = k
    for i, c in enumerate(order.tolist()):
        take = min(int(per_class[c]), left // (len(order) - i))
        quota[c] = take
        left -= take
    return quota


def subset_indices(
    labels: torch.Tensor,
    ratio: float | None = None,
    count: int | None = None,
    seed: int = 0,
    balanced: bool = False,
) -> torch.Tensor:
    """Sorted int64 indices of a seeded random subset of ``labels`` (give exactly one of ``ratio``/``count``).

    ``ratio`` keeps ``round(ratio * n)`` samples (at least 1). With
    ``balanced=True`` every class gets the same number as far as possible:
    counts differ by at most one, except for classes that have fewer samples,
    which are taken whole.

    Example:
        >>> import torch
        >>> subset_indices(torch.tensor([0, 0, 1, 1]), count=2, balanced=True, seed=3).shape
        torch.Size([2])
    """
    labels = torch.as_tensor(labels).long().reshape(-1)
    k = _subset_size(len(labels), ratio, count)
    gen = torch.Generator().manual_seed(seed)
    if not balanced:
        chosen = torch.randperm(len(labels), generator=gen)[:k]
    else:
        _, inverse, per_class = torch.unique(labels, return_inverse=True, return_counts=True)
        quota = _balanced_quota(per_class, k, gen)
        perm = torch.randperm(len(labels), generator=gen)
        order = perm[torch.argsort(inverse[perm], stable=True)]  # grouped by class, random within each class
        starts = torch.cumsum(per_class, 0) - per_class
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(labels)) - starts[inverse[order]]  # position inside its class
        chosen = torch.nonzero(rank < quota[inverse]).flatten()
    return torch.sort(chosen).values


def sample_subset(
    dataset: ImageDataset,
    ratio: float | None = None,
    count: int | None = None,
    seed: int = 0,
    balanced: bool = False,
) -> ImageDataset:
    """A seeded random subset of ``dataset``; its ``.indices`` are the chosen indices (sorted).

    Example:
        >>> import torch
        >>> ds = ImageDataset(torch.zeros(8, 1, 2, 2), torch.arange(8) % 4)
        >>> sample_subset(ds, ratio=0.5, seed=0).indices.tolist() == sample_subset(ds, ratio=0.5).indices.tolist()
        True
    """
    return dataset.subset(subset_indices(dataset.y, ratio, count, seed, balanced))


def _identity(batch: object) -> object:
    return batch


def make_loader(
    dataset: Dataset,
    batch_size: int = 128,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader yielding ``(images float [0, 1] NCHW, labels int64)`` batches.

    For an :class:`ImageDataset` each batch is fetched with one vectorised
    indexing call (the sampler yields index lists). Shuffling draws from a
    generator seeded with ``seed``: the sequence of epochs is reproducible.

    Example:
        >>> import torch
        >>> ds = ImageDataset(torch.zeros(5, 1, 2, 2, dtype=torch.uint8), torch.zeros(5, dtype=torch.long))
        >>> [x.shape[0] for x, _ in make_loader(ds, batch_size=2)]
        [2, 2, 1]
    """
    if batch_size < 1:
        raise OtbrError(f"batch size must be positive, got {batch_size}")
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    if not isinstance(dataset, ImageDataset):
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=num_workers, drop_last=drop_last
        )
    sampler = RandomSampler(dataset, generator=gen) if shuffle else SequentialSampler(dataset)
    batches = BatchSampler(sampler, batch_size=batch_size, drop_last=drop_last)
    return DataLoader(dataset, sampler=batches, batch_size=None, num_workers=num_workers, collate_fn=_identity)
