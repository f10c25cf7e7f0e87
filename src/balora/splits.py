"""Seeded splits and subsets: the one place where a task decides which examples go where.

Every function depends only on its arguments and its seed (a private generator), never on
the global RNGs, and returns indices, so it serves any container (text lists, image tensors,
crystal graphs).

    permutation(n, seed)                      a seeded shuffle of range(n) (torch)
    random_subset(n, limit, seed)             `limit` of range(n), in index order
    stratified_subset(labels, limit, seed)    the same, keeping the class balance
    holdout(labels | n, fraction, seed)       (rest, held out), stratified when given labels
    random_split(n, val_fraction, test_fraction, seed)          (train, val, test)
    size_shift_split(sizes, val_fraction, test_fraction, seed)  the largest `sizes` in test
    stratified_split(labels, seed, val_fraction, test_fraction) (train, val, test), NumPy's
                                              PCG64 (the text task's split, kept bit for bit)
    subsample(n, limit, seed)                 `limit` of range(n) from a NumPy stream
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def permutation(n: int, seed: int) -> Tensor:
    """A seeded random permutation of ``range(n)``."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def random_subset(n: int, limit: int | None, seed: int) -> list[int]:
    """All of ``range(n)``, or a seeded random `limit` of them, in index order."""
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(permutation(n, seed)[:limit].tolist())


def stratified_subset(labels: Tensor, limit: int | None, seed: int) -> Tensor:
    """At most `limit` positions of `labels`, a seeded subset that keeps the class balance
    (round-robin over the classes in a random order), sorted; all of them if fewer."""
    n = len(labels)
    if limit is None or limit >= n:
        return torch.arange(n)
    order = permutation(n, seed)
    shuffled = labels[order]
    rank = torch.zeros(n, dtype=torch.long)
    for c in shuffled.unique():
        where = (shuffled == c).nonzero().flatten()
        rank[where] = torch.arange(len(where))
    chosen = order[torch.argsort(rank * n + torch.arange(n))[:limit]]
    return chosen.sort().values


def holdout(
    labels: Tensor | int, fraction: float, seed: int, *, at_least_one: bool = False
) -> tuple[Tensor, Tensor]:
    """``(rest, held out)`` sorted positions: a seeded `fraction` held out, of every class
    when `labels` is a tensor (``round(fraction * n_c)`` each), of ``range(labels)`` when it
    is a count. ``at_least_one``: hold out one example even where the fraction rounds to 0."""
    if isinstance(labels, int):
        groups = [torch.arange(labels)]
        n = labels
    else:
        groups = [(labels == c).nonzero().flatten() for c in labels.unique()]
        n = len(labels)
    g = torch.Generator().manual_seed(seed)
    held: list[Tensor] = []
    for idx in groups:
        idx = idx[torch.randperm(len(idx), generator=g)]
        count = round(fraction * len(idx))
        held.append(idx[: max(1, count) if at_least_one else count])
    held_idx = torch.cat(held).sort().values
    keep = torch.ones(n, dtype=torch.bool)
    keep[held_idx] = False
    return keep.nonzero().flatten(), held_idx


def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """``(n_val, n_test)`` for `n` examples; raises when a split would be empty."""
    n_test, n_val = round(test_fraction * n), round(val_fraction * n)
    if (
        n - n_test - n_val < 1
        or (test_fraction > 0 and n_test < 1)
        or (val_fraction > 0 and n_val < 1)
    ):
        raise ValueError(
            f"{n} examples are too few for val_fraction={val_fraction}, "
            f"test_fraction={test_fraction}: every split needs at least one"
        )
    return n_val, n_test


def random_split(
    n: int, *, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Seeded random ``(train, val, test)`` index tensors over ``range(n)``, each sorted."""
    n_val, n_test = split_counts(n, val_fraction, test_fraction)
    order = permutation(n, seed)
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return train.sort().values, val.sort().values, test.sort().values


def size_shift_split(
    sizes: Sequence[float] | Tensor,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(train, val, test)`` indices with the largest `sizes` (e.g. atoms per cell) in test;
    validation is a seeded random part of the rest, so that model selection never sees the
    shift. Ties at the boundary are broken at random (seeded)."""
    sizes = torch.as_tensor(sizes, dtype=torch.float64)
    n = len(sizes)
    n_val, n_test = split_counts(n, val_fraction, test_fraction)
    g = torch.Generator().manual_seed(seed)
    shuffled = torch.randperm(n, generator=g)
    by_size = shuffled[torch.argsort(sizes[shuffled], stable=True)]  # random among ties
    test, rest = by_size[n - n_test :], by_size[: n - n_test]
    rest = rest[torch.randperm(len(rest), generator=g)]
    val, train = rest[:n_val], rest[n_val:]
    return train.sort().values, val.sort().values, test.sort().values


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """Both fractions in [0, 1) and leaving training data, or a `ValueError` naming them."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
            raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1 to leave training data, got "
            f"{val_fraction} + {test_fraction}"
        )


def stratified_split(
    labels: Sequence[int],
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    stratify: bool = True,
) -> tuple[list[int], list[int], list[int]]:
    """Seeded disjoint (train, validation, test) index lists covering ``range(len(labels))``.

    With ``stratify=True`` each class is shuffled and cut on its own, ``round(n_c * fraction)``
    examples of class ``c`` going to test and to validation, so every split keeps the class
    proportions; with ``stratify=False`` all indices are shuffled once and cut. Each split is
    then returned in a seeded random order (not grouped by class). The result depends only on
    `labels` and `seed` (NumPy's PCG64).

    >>> stratified_split([0, 0, 0, 0, 1, 1, 1, 1, 1, 1], val_fraction=0.2, test_fraction=0.2)
    ([4, 6, 5, 8, 3, 1], [0, 7], [2, 9])
    """
    check_fractions(val_fraction, test_fraction)
    rng = np.random.default_rng(seed)
    groups = (
        [np.flatnonzero(np.asarray(labels) == c) for c in sorted(set(labels))]
        if stratify
        else [np.arange(len(labels))]
    )
    train: list[int] = []
    val: list[int] = []
    test: list[int] = []
    for group in groups:
        group = rng.permutation(group)
        n_test = round(len(group) * test_fraction)
        n_val = round(len(group) * val_fraction)
        test.extend(group[:n_test].tolist())
        val.extend(group[n_test : n_test + n_val].tolist())
        train.extend(group[n_test + n_val :].tolist())
    return (
        rng.permutation(np.asarray(train, dtype=np.int64)).tolist(),
        rng.permutation(np.asarray(val, dtype=np.int64)).tolist(),
        rng.permutation(np.asarray(test, dtype=np.int64)).tolist(),
    )


def subsample(n: int, limit: int | None, seed: int) -> list[int]:
    """All of ``range(n)``, or a seeded random `limit` of them (in index order), drawn from a
    NumPy stream separate from `stratified_split`'s, so a limit does not reshuffle a split."""
    if limit is None or limit >= n:
        return list(range(n))
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"max_examples must be a positive integer or None, got {limit!r}")
    rng = np.random.default_rng([seed, 1])
    return sorted(rng.choice(n, size=limit, replace=False).tolist())
