"""Segmentation metrics of the MICCAI 2017 WMH segmentation challenge, on boolean masks.

The five numbers are computed the way the challenge's evaluation script (``evaluation.py`` of
``hjkuijf/wmhchallenge``) computes them, so that they can be compared with its leaderboard:

- **Dice** ``2|P∩R| / (|P| + |R|)`` (``monai.metrics.compute_dice``).
- **HD95** (mm): each mask's contour is the mask minus its *in-plane* erosion, SimpleITK's
  ``BinaryErode(mask, (1, 1, 0))``: a 3 x 3 square in each slice (ITK's ball of radius 1 takes
  the 8 in-plane neighbours), nothing across slices, and the outside of the image counted as
  foreground (a lesion's face on the image border is not contour). Distances run between contour
  voxel centres in world mm (the voxel spacing; a rotation of the grid changes no distance),
  nearest neighbour by KD tree (``monai.metrics.utils.get_surface_distance``); the 95th
  percentile (linear interpolation, ``np.percentile``) of each directed set of distances, and
  the larger of the two. Arrays are ``(x, y, z)`` in voxel order as nibabel reads them, the third
  axis being the slice axis (SimpleITK's index order is also x, y, z).
- **AVD** (%): ``|V_P - V_R| / V_R * 100``.
- **Lesion recall and F1** over fully connected components (26 neighbours in 3-D, as SimpleITK's
  ``ConnectedComponent`` with ``FullyConnected``): recall = reference lesions that any predicted
  voxel touches / reference lesions; precision = predicted lesions touching the reference /
  predicted lesions; F1 their harmonic mean (0 when both are 0).

Empty masks (the challenge scores recall, and precision, 1 when there is nothing to find, resp.
nothing found; every challenge scan has WMH, so the script itself leaves the other cases of an
empty reference undefined: AVD divides by zero, HD95 queries an empty tree). Both empty is a
perfect result:

==================  ====  ====  ====  ======  ===
case                Dice  HD95  AVD   recall  F1
==================  ====  ====  ====  ======  ===
both empty          1     0     0     1       1
reference empty     0     NaN   NaN   1       0
prediction empty    0     NaN   100   0       0
==================  ====  ====  ====  ======  ===

HD95 is also NaN when a non-empty mask has no contour (it fills whole slices of the image).

MONAI is imported on first use (the metrics module is imported by torch-free code for
:func:`label_lesions`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from wmhseg.schema import METRIC_NAMES

__all__ = [
    "dice",
    "contour",
    "hd95",
    "avd_percent",
    "label_lesions",
    "lesion_detection",
    "segmentation_metrics",
    "dice_by_threshold",
    "best_threshold",
    "METRIC_NAMES",
]

_FULL = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity, the challenge's fully connected components
_IN_PLANE = np.ones((3, 3, 1), dtype=bool)  # SimpleITK BinaryErode radius (1, 1, 0): 8 in-plane neighbours


def _bool(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).astype(bool, copy=False)


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient 2|P∩R| / (|P| + |R|); 1.0 when both are empty."""
    import torch
    from monai.metrics import compute_dice

    p, r = (torch.from_numpy(np.ascontiguousarray(_bool(a)))[None, None] for a in (pred, ref))
    return float(compute_dice(p, r, include_background=True, ignore_empty=False)[0, 0])


def contour(mask: np.ndarray) -> np.ndarray:
    """The challenge's lesion contour: the mask minus its in-plane (3 x 3 per slice) erosion.

    MONAI's ``get_mask_edges`` erodes in 3-D (6 neighbours) with the outside of the image as
    background, so its edges are not the challenge's; SciPy's erosion with the in-plane
    structuring element and ``border_value=1`` is SimpleITK's ``BinaryErode(mask, (1, 1, 0))``.

    Example:
        >>> m = np.zeros((5, 5, 1), bool); m[1:4, 1:4] = True
        >>> int(contour(m).sum())  # the ring of 8 around the centre
        8
    """
    m = _bool(mask)
    return m & ~ndimage.binary_erosion(m, structure=_IN_PLANE, border_value=1)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """95th-percentile symmetric Hausdorff distance in mm between the masks' contours.

    ``max(p95(d(P -> R)), p95(d(R -> P)))`` over :func:`contour` voxels, distances in world units
    given by ``spacing``. 0 when both masks are empty, NaN when only one is.
    """
    from monai.metrics.utils import get_surface_distance

    p, r = _bool(pred), _bool(ref)
    if not p.any() and not r.any():
        return 0.0
    cp, cr = contour(p), contour(r)
    if not cp.any() or not cr.any():
        return float("nan")
    sp = np.asarray(spacing, np.float64)
    p_to_r = get_surface_distance(cp, cr, distance_metric="euclidean", spacing=sp)
    r_to_p = get_surface_distance(cr, cp, distance_metric="euclidean", spacing=sp)
    return float(max(np.percentile(p_to_r, 95), np.percentile(r_to_p, 95)))


def avd_percent(pred: np.ndarray, ref: np.ndarray) -> float:
    """Absolute volume difference |V_P - V_R| / V_R in percent; 0 when both are empty, NaN when
    only the reference is.

    Counted in NumPy: ``monai.metrics.compute_absolute_volume_difference`` gives the absolute
    voxel count difference, not relative to the reference, and needs torch tensors for that.
    """
    vp, vr = int(_bool(pred).sum()), int(_bool(ref).sum())
    if vr == 0:
        return 0.0 if vp == 0 else float("nan")
    return 100.0 * abs(vp - vr) / vr


def label_lesions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components (26-connectivity): ``(labels, count)``.

    SciPy's labelling: MONAI has no lesion-wise components (its connected-component helpers
    keep or drop the largest one); ``ndimage.label`` with the full 3 x 3 x 3 structure is
    SimpleITK's fully connected ``ConnectedComponent``, on NumPy arrays.
    """
    labels, n = ndimage.label(_bool(mask), structure=_FULL)
    return labels, int(n)


def lesion_detection(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Lesion-wise ``(recall, f1)`` as the challenge scores them.

    A reference lesion is detected when any of its voxels is predicted; a predicted lesion is a
    true positive when it touches the reference. Recall = detected / reference lesions (1 without
    reference lesions); precision = true-positive / predicted lesions (1 without predicted
    lesions); F1 their harmonic mean, 0 when both are 0.
    """
    p, r = _bool(pred), _bool(ref)
    ref_lab, n_ref = label_lesions(r)
    pred_lab, n_pred = label_lesions(p)
    detected = np.count_nonzero(np.unique(ref_lab[p]))
    true_pos = np.count_nonzero(np.unique(pred_lab[r]))
    recall = detected / n_ref if n_ref else 1.0
    precision = true_pos / n_pred if n_pred else 1.0
    f1 = 0.0 if recall + precision == 0 else 2 * recall * precision / (recall + precision)
    return float(recall), float(f1)


def segmentation_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> dict[str, float]:
    """All challenge metrics for one scan: keys ``METRIC_NAMES``.

    Args:
        pred: predicted WMH mask (any array, non-zero = WMH).
        ref: reference WMH mask of the same shape.
        spacing: voxel size in mm along each axis (for HD95).
    """
    p, r = _bool(pred), _bool(ref)
    if p.shape != r.shape:
        raise ValueError(f"prediction shape {p.shape} differs from reference shape {r.shape}")
    recall, f1 = lesion_detection(p, r)
    return {"dice": dice(p, r), "hd95": hd95(p, r, spacing), "avd": avd_percent(p, r),
            "lesion_recall": recall, "lesion_f1": f1}


def dice_by_threshold(prob: np.ndarray, ref: np.ndarray, thresholds: Sequence[float]) -> list[float]:
    """The Dice of ``prob > t`` against ``ref`` for each threshold ``t`` (1.0 where both are empty).

    One sort of the probabilities serves every threshold, so a sweep costs about one Dice.
    """
    p = np.asarray(prob, dtype=np.float32)
    r = _bool(ref)
    if p.shape != r.shape:
        raise ValueError(f"probability shape {p.shape} differs from reference shape {r.shape}")
    everywhere, inside = np.sort(p, axis=None), np.sort(p[r])
    t = np.asarray(thresholds, dtype=np.float32)
    n_pred = everywhere.size - np.searchsorted(everywhere, t, side="right")  # voxels with p > t
    true_pos = inside.size - np.searchsorted(inside, t, side="right")
    denominator = n_pred + inside.size
    return [1.0 if d == 0 else float(2.0 * tp / d) for tp, d in zip(true_pos, denominator, strict=True)]


def best_threshold(curves: Sequence[Sequence[float]], thresholds: Sequence[float],
                   default: float) -> tuple[float, float]:
    """The threshold with the highest mean Dice over scans, and that mean.

    Args:
        curves: one :func:`dice_by_threshold` list per scan.
        thresholds: the thresholds the curves were computed at.
        default: the threshold used when there are no curves; among thresholds tied at the best
            mean, the one nearest to it.
    """
    if not len(curves):
        return float(default), float("nan")
    mean = np.asarray(curves, dtype=np.float64).mean(axis=0)
    if mean.shape != (len(thresholds),):
        raise ValueError(f"Dice curves of length {mean.shape} for {len(thresholds)} thresholds")
    tied = np.flatnonzero(mean >= mean.max() - 1e-12)
    i = int(tied[np.argmin(np.abs(np.asarray(thresholds, dtype=np.float64)[tied] - default))])
    return float(thresholds[i]), float(mean[i])
