"""Lesion change between two WMH masks on one grid: new, enlarging, shrinking, stable.

Both the study simulator (the true change of each lesion) and longitudinal inference (the
measured change maps) classify changes with :func:`lesion_changes`, so the two speak the same
language.

A *lesion* here is a 26-connected component of the union of the two masks, so a lesion that
grows into two touching ones stays one. With ``v0``/``v1`` its volume before/after:

* ``new`` (1): ``v0 == 0``;
* ``enlarging`` (2): ``v1 - v0`` above ``rel_change * v0`` and above ``min_change_mm3``;
* ``shrinking`` (3): ``v0 - v1`` above the same bounds (a lesion that vanished, ``v1 == 0``, is
  shrinking);
* ``stable`` (4): the rest.

Every voxel of the lesion (before or after) carries its class in the label map.

Example:
    >>> import numpy as np
    >>> before = np.zeros((8, 8, 8), bool); after = before.copy(); after[1, 1, 1] = True
    >>> labels, table = lesion_changes(before, after, voxel_mm3=1.0)
    >>> table["change"].tolist(), int(labels[1, 1, 1])
    (['new'], 1)
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from wmhseg.metrics import label_lesions
from wmhseg.schema import CHANGE_COLUMNS

__all__ = ["CHANGE_CODES", "CHANGE_COLUMNS", "lesion_changes"]

CHANGE_CODES = {"new": 1, "enlarging": 2, "shrinking": 3, "stable": 4}


def lesion_changes(before: np.ndarray, after: np.ndarray, *, voxel_mm3: float, rel_change: float = 0.25,
                   min_change_mm3: float | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """Classify every lesion of ``before | after`` by its change (see the module docstring).

    Args:
        before, after: boolean masks on one grid (the earlier and the later visit).
        voxel_mm3: voxel volume of that grid.
        rel_change: relative volume change beyond which a lesion is enlarging/shrinking.
        min_change_mm3: absolute change it must also exceed (default: two voxels), so a lesion
            of a few voxels is not called enlarging for a voxel at its rim.

    Returns:
        ``(labels, table)``: a uint8 map of :data:`CHANGE_CODES` (0 outside lesions) and one row
        per lesion with :data:`CHANGE_COLUMNS` (centroid in voxel indices).

    Raises:
        ValueError: the masks differ in shape, or ``voxel_mm3``/``rel_change`` is not positive.
    """
    before, after = np.asarray(before, bool), np.asarray(after, bool)
    if before.shape != after.shape:
        raise ValueError(f"masks of different shapes {before.shape} and {after.shape}: resample one first")
    if not voxel_mm3 > 0 or not rel_change > 0:
        raise ValueError(f"voxel_mm3={voxel_mm3!r} and rel_change={rel_change!r} must be positive")
    floor = 2.0 * voxel_mm3 if min_change_mm3 is None else float(min_change_mm3)
    lesions, n = label_lesions(before | after)
    labels = np.zeros(before.shape, np.uint8)
    if n == 0:
        return labels, pd.DataFrame(columns=list(CHANGE_COLUMNS))
    index = np.arange(1, n + 1)
    n0 = ndimage.sum_labels(before, lesions, index)  # voxel counts: exact, whatever the voxel volume
    n1 = ndimage.sum_labels(after, lesions, index)
    bound = np.maximum(rel_change * n0, floor / voxel_mm3)
    change = np.where(n0 == 0, "new", np.where(n1 - n0 > bound, "enlarging",
                                               np.where(n0 - n1 > bound, "shrinking", "stable")))
    v0, v1 = n0 * voxel_mm3, n1 * voxel_mm3
    codes = np.r_[0, [CHANGE_CODES[c] for c in change]].astype(np.uint8)
    labels = codes[lesions]
    centres = np.asarray(ndimage.center_of_mass(np.ones(before.shape), lesions, index), dtype=float).reshape(n, 3)
    table = pd.DataFrame({"lesion": index, "change": change, "before_mm3": np.round(v0, 3),
                          "after_mm3": np.round(v1, 3), "x_vox": centres[:, 0].round(2),
                          "y_vox": centres[:, 1].round(2), "z_vox": centres[:, 2].round(2)})
    return labels, table
