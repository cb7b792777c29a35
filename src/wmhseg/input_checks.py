"""Checks of a scan's images that catch inputs which would silently change the WMH volume.

Each returns a warning (a sentence naming the file) or ``None``; inference writes the warnings
in ``volumes.csv``'s ``warnings`` column. Torch-free; they work on the arrays already loaded.

- :func:`t1_coverage_warning`: the T1's field of view covers only part of the FLAIR's head (the
  uncovered part has T1 = 0 and segments differently; 59% coverage gave +44% WMH).
- :func:`swapped_contrast_warning`: the T1 column holds a FLAIR-like image and vice versa.
- :func:`coarse_voxels_warning`: voxels much coarser than the working resolution (thick slices).
- :func:`orientation_warning`: a NIfTI header with qform and sform codes both 0 (orientation unknown).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from wmhseg.geometry import bounding_box, voxel_sizes

__all__ = [
    "MIN_T1_COVERAGE",
    "COARSE_FACTOR",
    "t1_coverage",
    "t1_coverage_warning",
    "central_rank",
    "swapped_contrast_warning",
    "coarse_voxels_warning",
    "orientation_warning",
]

MIN_T1_COVERAGE = 0.95  # fraction of the FLAIR's head voxels the T1 must cover
COARSE_FACTOR = 3.0  # a voxel edge this many times the working spacing is "far coarser"
_MAX_POINTS = 200_000


def t1_coverage(head: np.ndarray, flair_affine: np.ndarray, t1_shape: Sequence[int], t1_affine: np.ndarray) -> float:
    """Fraction of the FLAIR's ``head`` voxels whose world position lies inside the T1's grid.

    When the corners of the head's bounding box all fall inside the T1's grid the answer is 1
    without visiting the voxels (the grid is convex, and so is the box's image in it); otherwise
    up to :data:`_MAX_POINTS` head voxels, evenly spaced, are tested.
    """
    box = bounding_box(head)
    if box is None:
        return 1.0
    flair_to_t1 = np.linalg.inv(t1_affine) @ flair_affine
    limit = np.asarray(t1_shape, dtype=np.float64) - 0.5

    def inside(idx: np.ndarray) -> np.ndarray:
        vox = idx @ flair_to_t1[:3, :3].T + flair_to_t1[:3, 3]
        return np.all((vox >= -0.5) & (vox <= limit), axis=1)

    corners = np.array([[(axis.start, axis.stop - 1)[bit] for axis, bit in zip(box, bits, strict=True)]
                        for bits in np.ndindex(2, 2, 2)], dtype=np.float64)
    if inside(corners).all():
        return 1.0
    idx = np.argwhere(head)
    idx = idx[:: max(1, len(idx) // _MAX_POINTS)].astype(np.float64)
    return float(inside(idx).mean())


def t1_coverage_warning(head: np.ndarray, flair_affine: np.ndarray, t1_shape: Sequence[int], t1_affine: np.ndarray,
                        t1: Path) -> str | None:
    """A warning when the T1 covers less than :data:`MIN_T1_COVERAGE` of the FLAIR's head."""
    covered = t1_coverage(head, flair_affine, t1_shape, t1_affine)
    if covered >= MIN_T1_COVERAGE:
        return None
    return (f"{t1.name}: the T1 covers only {covered:.0%} of the FLAIR's head; the rest is segmented without T1 "
            "and its WMH volume is unreliable")


def central_rank(image: np.ndarray, foreground: np.ndarray, box: tuple[slice, ...] | None = None) -> float:
    """Where the bright tissue at the centre of the head ranks among all head voxels (0-1).

    The 75th percentile of the central third (per axis) of the ``foreground`` box, as the
    fraction of foreground voxels below it. The centre is deep white matter: the brightest brain
    tissue on T1 (rank near the top), darker than grey matter on FLAIR (lower rank). Invariant to
    monotonic intensity changes (scaling, normalisation). ``box``: the
    :func:`~wmhseg.geometry.bounding_box` of ``foreground``, when already known.
    """
    box = box if box is not None else bounding_box(foreground)
    if box is None:
        return float("nan")
    centre_box = tuple(slice(a.start + (a.stop - a.start) // 3, a.stop - (a.stop - a.start) // 3) for a in box)
    centre = image[centre_box][foreground[centre_box]]
    if centre.size == 0:
        return float("nan")
    return float(np.count_nonzero(image[foreground] < np.percentile(centre, 75)) / np.count_nonzero(foreground))


def swapped_contrast_warning(t1: np.ndarray, flair: np.ndarray, t1_path: Path, flair_path: Path,
                             margin: float = 0.01) -> str | None:
    """A warning when the T1 column looks like a FLAIR and the FLAIR column like a T1.

    ``t1`` and ``flair`` lie on one grid (the working grid). The central white matter must rank
    higher on T1 than on FLAIR (:func:`central_rank`); on synthetic scans the difference is
    0.02-0.2 for correct pairs and its negative for swapped ones. Identical contrasts (difference
    within ``margin``) are not flagged.
    """
    lo, hi = np.percentile(flair, [1, 99])
    foreground = flair > lo + 0.1 * (hi - lo)
    if hi <= lo or not foreground.any():
        return None
    box = bounding_box(foreground)
    difference = central_rank(t1, foreground, box) - central_rank(flair, foreground, box)
    if not difference < -margin:
        return None
    return (f"{t1_path.name} / {flair_path.name}: the T1 has a FLAIR-like contrast and the FLAIR a T1-like one "
            "(deep white matter darker than grey matter on the T1); check that the columns are not swapped")


def coarse_voxels_warning(affine: np.ndarray, working_spacing: Sequence[float], path: Path) -> str | None:
    """A warning when a voxel edge of ``path`` exceeds :data:`COARSE_FACTOR` times the working spacing."""
    sizes = voxel_sizes(affine)
    limit = COARSE_FACTOR * max(float(s) for s in working_spacing)
    if sizes.max() <= limit:
        return None
    shown = " x ".join(f"{s:.3g}" for s in sizes)
    return (f"{path.name}: voxels of {shown} mm are far coarser than the working resolution "
            f"({max(working_spacing):.3g} mm); small lesions are lost and volumes are biased")


def orientation_warning(path: Path) -> str | None:
    """A warning when a NIfTI header's qform and sform codes are both 0 (orientation unknown)."""
    try:
        header = nib.load(str(path)).header
    except Exception:  # unreadable files are reported by the reader itself
        return None
    if not isinstance(header, nib.Nifti1Header):
        return None
    if int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
        return (f"{path.name}: qform and sform codes are both 0, so the orientation is unknown (left-right may be "
                "flipped and the T1 may not align with the FLAIR); set them, e.g. with fslorient")
    return None
