"""Input validation shared by the metric functions.

Every public metric validates first and computes second: the helpers here turn an array-like
(torch tensor, numpy array or nested list) into a float64 or int64 numpy array, or raise a
``ValueError`` that names the argument and the problem. The compute functions in
``classification.py`` and ``regression.py`` then assume clean input.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray | list[Any] | tuple[Any, ...]

# A row of probabilities counts as normalised when its sum is within this of 1 (float32 softmax
# outputs are typically off by ~1e-7, half precision by ~1e-3 before being cast up).
ROW_SUM_TOL = 1e-4


def _to_numpy(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        t = x.detach()
        # bfloat16/half have no numpy dtype; upcast floats before leaving torch.
        if t.is_floating_point():
            t = t.to(torch.float64)
        return t.cpu().numpy()
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as err:  # ragged nested lists
        raise ValueError(f"`{name}` could not be converted to an array: {err}") from err
    return arr


def _check_numeric(arr: np.ndarray, name: str) -> None:
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"`{name}` must be numeric, got an array of dtype {arr.dtype}")


def as_float_array(x: ArrayLike, name: str, ndim: int) -> np.ndarray:
    """``x`` as a finite, non-empty float64 array with ``ndim`` dimensions."""
    arr = _to_numpy(x, name)
    _check_numeric(arr, name)
    if arr.ndim != ndim:
        raise ValueError(f"`{name}` must be {ndim}-dimensional, got shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise ValueError(f"`{name}` is empty (shape {tuple(arr.shape)})")
    arr = arr.astype(np.float64, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"`{name}` contains {int(bad.sum())} NaN/inf value(s), first at index {where}"
        )
    return arr


def as_int_array(x: ArrayLike, name: str) -> np.ndarray:
    """``x`` as a non-empty 1-D int64 array; floats are accepted only when whole-valued."""
    arr = _to_numpy(x, name)
    _check_numeric(arr, name)
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be 1-dimensional, got shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise ValueError(f"`{name}` is empty (shape {tuple(arr.shape)})")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ValueError(f"`{name}` contains NaN/inf values")
        frac = arr != np.round(arr)
        if frac.any():
            i = int(np.argmax(frac))
            raise ValueError(f"`{name}` must hold integers, got {arr[i]!r} at index {i}")
    return arr.astype(np.int64)


def check_same_length(**arrays: np.ndarray) -> None:
    """All arrays have the same first dimension."""
    lengths = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"`{k}` has {v}" for k, v in lengths.items())
        raise ValueError(f"length mismatch: {shown}")


def check_probs(probs: np.ndarray, name: str = "probs") -> None:
    """Rows of a 2-D array are probability vectors (entries in [0, 1], sums within tolerance)."""
    outside = (probs < 0.0) | (probs > 1.0)
    if outside.any():
        r, c = (int(i) for i in np.argwhere(outside)[0])
        raise ValueError(f"`{name}` must lie in [0, 1], got {probs[r, c]!r} at row {r}, column {c}")
    err = np.abs(probs.sum(axis=1) - 1.0)
    if (err > ROW_SUM_TOL).any():
        r = int(np.argmax(err > ROW_SUM_TOL))
        raise ValueError(
            f"rows of `{name}` must sum to 1 (tolerance {ROW_SUM_TOL:g}), "
            f"row {r} sums to {probs[r].sum()!r}"
        )


def check_labels(labels: np.ndarray, n_classes: int, name: str = "labels") -> None:
    """Class indices lie in ``[0, n_classes)``."""
    bad = (labels < 0) | (labels >= n_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"`{name}` must lie in [0, {n_classes}) for {n_classes} classes, "
            f"got {int(labels[i])} at index {i}"
        )


def check_binary(x: np.ndarray, name: str) -> None:
    """Values are 0 or 1 (bools are accepted upstream and arrive as 0/1)."""
    bad = (x != 0) & (x != 1)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"`{name}` must be binary (0 or 1), got {int(x[i])} at index {i}")


def check_both_classes(targets: np.ndarray, name: str) -> None:
    """A ranking metric needs at least one positive and one negative."""
    n_pos = int(targets.sum())
    if n_pos == 0 or n_pos == targets.shape[0]:
        only = "positives (1)" if n_pos else "negatives (0)"
        raise ValueError(f"`{name}` holds only {only}; the metric needs both classes")


def check_positive(x: np.ndarray, name: str) -> None:
    """All entries are strictly positive."""
    bad = x <= 0.0
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"`{name}` must be > 0, got {x[i]!r} at index {i}")


def check_fraction(value: float, name: str) -> float:
    """A scalar in ``(0, 1]``, returned as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"`{name}` must be a number in (0, 1], got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ValueError(f"`{name}` must lie in (0, 1], got {value!r}")
    return value


def check_count(value: int, name: str, minimum: int = 1) -> int:
    """An integer ``>= minimum``, returned as an int."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}")
    return int(value)
