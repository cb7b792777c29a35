"""Train/validation splits by subject: all scans of a subject fall on the same side.

Splitting by scan would put a subject's baseline in training and its follow-up in validation,
and the validation score would measure memory of that head rather than generalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from wmhseg.errors import InputError

__all__ = ["split_by_subject", "subject_folds"]

T = TypeVar("T")


def subject_folds(subjects: Sequence[str], n_folds: int, seed: int = 0) -> list[list[str]]:
    """Partition the distinct ``subjects`` into ``n_folds`` folds of near-equal size.

    The order depends only on the set of subject IDs and ``seed`` (not on the manifest's row
    order), so every process of a distributed run computes the same folds.
    """
    unique = sorted(set(subjects))
    if n_folds < 2:
        raise InputError(f"data.n_folds={n_folds!r} must be >= 2")
    if n_folds > len(unique):
        raise InputError(f"data.n_folds={n_folds} is more than the {len(unique)} subjects in the manifest")
    order = np.random.default_rng(seed).permutation(len(unique))
    return [[unique[i] for i in part] for part in np.array_split(order, n_folds)]


def split_by_subject(
    scans: Sequence[T],
    val_fraction: float = 0.2,
    seed: int = 0,
    n_folds: int | None = None,
    fold: int | None = None,
) -> tuple[list[T], list[T]]:
    """Split scans (anything with a ``subject_id``) into ``(train, val)`` by subject.

    Args:
        scans: e.g. :class:`wmhseg.manifest.Scan` objects; their order is kept on each side.
        val_fraction: share of subjects held out (0 <= f < 1); ignored when ``n_folds`` is set.
            With f > 0 at least one subject is held out and at least one is kept.
        seed: shuffling seed.
        n_folds: k-fold cross-validation: subjects are split into ``n_folds`` folds...
        fold: ...and fold number ``fold`` (0-based) is the validation set.

    Raises:
        InputError: a bad fraction/fold, or too few subjects to split.

    Example:
        >>> train, val = split_by_subject(scans, val_fraction=0.25, seed=0)     # doctest: +SKIP
        >>> train, val = split_by_subject(scans, n_folds=5, fold=2)             # doctest: +SKIP
    """
    subjects = [str(s.subject_id) for s in scans]
    unique = sorted(set(subjects))
    if n_folds is not None:
        if fold is None or not 0 <= int(fold) < int(n_folds):
            raise InputError(f"data.fold={fold!r} must be an integer in [0, {n_folds}) when data.n_folds={n_folds}")
        val_subjects = set(subject_folds(unique, int(n_folds), seed)[int(fold)])
    else:
        if fold is not None:
            raise InputError(f"data.fold={fold!r} is set but data.n_folds is not")
        if not 0 <= val_fraction < 1:
            raise InputError(f"data.val_fraction={val_fraction!r} must be in [0, 1)")
        if val_fraction == 0:
            return list(scans), []
        if len(unique) < 2:
            raise InputError(f"cannot hold out validation subjects: the manifest has {len(unique)} subject(s)")
        n_val = min(len(unique) - 1, max(1, int(round(val_fraction * len(unique)))))
        order = np.random.default_rng(seed).permutation(len(unique))
        val_subjects = {unique[i] for i in order[:n_val]}
    train = [s for s, sub in zip(scans, subjects, strict=True) if sub not in val_subjects]
    val = [s for s, sub in zip(scans, subjects, strict=True) if sub in val_subjects]
    return train, val
