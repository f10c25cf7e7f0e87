"""Seeded splits and subsets (`balora.splits`): disjoint, complete, seed-determined, and
independent of the global RNGs."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from balora.splits import (
    holdout,
    random_split,
    random_subset,
    size_shift_split,
    stratified_split,
    stratified_subset,
    subsample,
)

# --------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stratify", [True, False])
def test_stratified_split_partition_the_rows(stratify):
    labels = [0] * 30 + [1] * 50 + [2] * 20
    train, val, test = stratified_split(
        labels, seed=3, val_fraction=0.2, test_fraction=0.1, stratify=stratify
    )
    assert sorted(train + val + test) == list(range(100))
    assert (len(val), len(test)) == (20, 10)


def test_stratified_split_stratified_keeps_class_proportions():
    labels = [0] * 30 + [1] * 50 + [2] * 20
    _, val, test = stratified_split(labels, seed=0, val_fraction=0.2, test_fraction=0.1)
    assert Counter(labels[i] for i in val) == {0: 6, 1: 10, 2: 4}
    assert Counter(labels[i] for i in test) == {0: 3, 1: 5, 2: 2}


def test_stratified_split_depends_on_seed_only():
    labels = [i % 3 for i in range(60)]
    first = stratified_split(labels, seed=7)
    torch.manual_seed(123)
    np.random.seed(123)  # noqa: NPY002 (the global RNG must not matter)
    assert stratified_split(labels, seed=7) == first
    assert stratified_split(labels, seed=8) != first


@pytest.mark.parametrize(
    ("val_fraction", "test_fraction", "match"),
    [(-0.1, 0.1, "val_fraction"), (0.1, 1.0, "test_fraction"), (0.5, 0.5, "< 1")],
)
def test_stratified_split_rejects_bad_fractions(val_fraction, test_fraction, match):
    with pytest.raises(ValueError, match=match):
        stratified_split([0, 1], val_fraction=val_fraction, test_fraction=test_fraction)


def test_size_shift_and_random_split():
    sizes = [5, 1, 9, 3, 7, 2, 8, 4, 6, 10]
    train, val, test = size_shift_split(sizes, val_fraction=0.2, test_fraction=0.3, seed=0)
    assert sorted(sizes[i] for i in test) == [8, 9, 10]
    assert len(val) == 2
    assert len(train) == 5
    assert set(torch.cat([train, val, test]).tolist()) == set(range(10))
    a, b = random_split(10, seed=1), random_split(10, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert set(torch.cat(a).tolist()) == set(range(10))
    with pytest.raises(ValueError, match="too few"):
        random_split(2, val_fraction=0.3, test_fraction=0.3)


def test_holdout_stratified_and_plain():
    labels = torch.tensor([0] * 20 + [1] * 10)
    rest, held = holdout(labels, 0.2, seed=4)
    assert Counter(labels[held].tolist()) == {0: 4, 1: 2}
    assert sorted(torch.cat([rest, held]).tolist()) == list(range(30))
    torch.manual_seed(5)  # the global RNG does not matter
    assert torch.equal(holdout(labels, 0.2, 4)[1], held)
    assert held.tolist() == sorted(held.tolist())
    rest, one = holdout(3, 0.1, seed=0, at_least_one=True)  # rounds to 0: one is held out
    assert len(one) == 1
    assert len(rest) == 2
    assert holdout(3, 0.1, seed=0)[1].numel() == 0


def test_subsets_keep_order_balance_and_seed():
    assert random_subset(10, None, 0) == list(range(10))
    assert random_subset(10, 20, 0) == list(range(10))
    first = random_subset(100, 10, 3)
    assert first == sorted(first)
    assert len(set(first)) == 10
    assert random_subset(100, 10, 3) == first
    labels = torch.tensor([0] * 50 + [1] * 10)
    chosen = stratified_subset(labels, 10, seed=1)
    assert Counter(labels[chosen].tolist()) == {0: 5, 1: 5}
    assert torch.equal(chosen, chosen.sort().values)
    assert subsample(5, None, 0) == list(range(5))
    assert subsample(100, 7, 0) == subsample(100, 7, 0)
    with pytest.raises(ValueError, match="positive integer"):
        subsample(100, 0, 0)
