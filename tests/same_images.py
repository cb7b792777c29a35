"""Helper for the writer tests: two written sets hold the same manifest and the same images."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd


def assert_same_sets(one: Path, two: Path, columns: tuple[str, ...] = ("t1", "flair", "label")) -> None:
    """The manifests ``one`` and ``two`` are equal, and so are the voxels and affines of every
    image they name (relative to each manifest's folder)."""
    assert one.read_text() == two.read_text()
    for row in pd.read_csv(one, dtype=str).itertuples():
        for name in (getattr(row, c) for c in columns):
            a, b = nib.load(one.parent / name), nib.load(two.parent / name)
            assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)), name
            assert np.array_equal(a.affine, b.affine), name
