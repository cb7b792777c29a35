"""Segmentation metrics of the MICCAI 2017 WMH segmentation challenge, on boolean masks.

Dice, 95th-percentile Hausdorff distance (mm), absolute volume difference (%), and
lesion-wise recall and F1 over connected components. NumPy/SciPy only, so the same numbers are
used in training validation, in ``infer.py``'s ``metrics.csv`` and in tests.

Conventions for empty masks: Dice is 1 when both masks are empty; HD95 is NaN when either is
empty; AVD is NaN when the reference is empty; lesion recall is NaN without reference lesions,
and F1 is 1 when neither mask has a lesion.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from wmhseg.schema import METRIC_NAMES

__all__ = [
    "dice",
    "hd95",
    "avd_percent",
    "label_lesions",
    "lesion_detection",
    "segmentation_metrics",
    "METRIC_NAMES",
]

_FULL = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity, as the challenge's fully connected components


def _bool(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).astype(bool, copy=False)


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient 2|P∩R| / (|P| + |R|); 1.0 when both are empty."""
    p, r = _bool(pred), _bool(ref)
    denom = int(p.sum()) + int(r.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.logical_and(p, r).sum()) / denom


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=_FULL, border_value=0)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """95th-percentile symmetric Hausdorff distance in mm between the masks' surfaces.

    ``max(p95(d(P -> R)), p95(d(R -> P)))`` over surface voxels, distances in world units given
    by ``spacing``. NaN when either mask is empty.
    """
    p, r = _bool(pred), _bool(ref)
    if not p.any() or not r.any():
        return float("nan")
    sp, sr = _surface(p), _surface(r)
    dist_to_r = ndimage.distance_transform_edt(~sr, sampling=spacing)
    dist_to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return float(max(np.percentile(dist_to_r[sp], 95), np.percentile(dist_to_p[sr], 95)))


def avd_percent(pred: np.ndarray, ref: np.ndarray) -> float:
    """Absolute volume difference |V_P - V_R| / V_R in percent; NaN when the reference is empty."""
    vp, vr = int(_bool(pred).sum()), int(_bool(ref).sum())
    return float("nan") if vr == 0 else 100.0 * abs(vp - vr) / vr


def label_lesions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components (26-connectivity): ``(labels, count)``."""
    labels, n = ndimage.label(_bool(mask), structure=_FULL)
    return labels, int(n)


def lesion_detection(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Lesion-wise ``(recall, f1)``.

    A reference lesion is detected when any of its voxels is predicted; a predicted lesion is a
    true positive when it touches the reference. Recall = detected / reference lesions;
    precision = true-positive / predicted lesions; F1 their harmonic mean.
    """
    p, r = _bool(pred), _bool(ref)
    ref_lab, n_ref = label_lesions(r)
    pred_lab, n_pred = label_lesions(p)
    if n_ref == 0 and n_pred == 0:
        return float("nan"), 1.0
    detected = len(np.setdiff1d(np.unique(ref_lab[p]), [0]))
    true_pos = len(np.setdiff1d(np.unique(pred_lab[r]), [0]))
    recall = detected / n_ref if n_ref else float("nan")
    precision = true_pos / n_pred if n_pred else float("nan")
    if n_ref == 0 or n_pred == 0:
        return recall, 0.0
    f1 = 0.0 if recall + precision == 0 else 2 * recall * precision / (recall + precision)
    return recall, f1


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
