"""QC flags: advice on which scans to look at first. A flag never drops a scan.

Two kinds of checks:

- per scan, while the scan is segmented (:func:`scan_checks`, on the working grid):
  ``fov_cut_share`` (how much of the head lies on an edge of the field of view other than the
  inferior one) and ``wmh_outside_wm_share`` (the share of WMH voxels farther than 3 mm from any
  white matter, when the model predicts BISON tissue classes);
- over the cohort, when the table is written (:func:`cohort_flags`): a volume that is an outlier
  in the cohort, and the per-scan measures compared with their thresholds.

Flags (``qc_flags`` in volumes.csv, ``;``-separated, in this order):

=====================  =================================================================
``failed``             the scan could not be processed (``status=error``)
``volume_outlier``     robust z of log(1 + WMH mm³) beyond ``outlier_z`` (3.5; median and
                       MAD of the cohort's processed scans, at least 5 of them)
``low_lesion_prob``    mean WMH probability inside the mask below ``low_lesion_prob`` (0.6)
``wmh_outside_wm``     more than ``outside_wm_share`` (20 %) of the WMH voxels lie over 3 mm
                       from the predicted white matter (tissue-class models only)
``fov_cut``            the head covers more than ``fov_cut_share`` (25 %) of its largest
                       cross-section on a superior, anterior, posterior or lateral edge of
                       the field of view
``misaligned``         the T1 needed a correction of more than ``misalignment_mm`` (3 mm) to
                       align with the FLAIR (``t1_shift_mm`` of the T1 registration check)
=====================  =================================================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from wmhseg.geometry import voxel_sizes

__all__ = ["FLAGS", "QCThresholds", "scan_checks", "fov_cut_share", "wmh_outside_wm_share", "cohort_flags"]

FLAGS = ("failed", "volume_outlier", "low_lesion_prob", "wmh_outside_wm", "fov_cut", "misaligned")
_WM_CLASSES = (4, 8)  # BISON cerebellar white matter, white matter
_WM_DISTANCE_MM = 3.0
_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}


@dataclass(frozen=True)
class QCThresholds:
    """Where each flag starts (see the module docstring)."""

    # volume_outlier: robust z of log(1 + WMH), in cohorts of at least min_cohort scans
    outlier_z: float = 3.5
    min_cohort: int = 5
    # the other flags, each against its own threshold
    low_lesion_prob: float = 0.6
    outside_wm_share: float = 0.2
    fov_cut_share: float = 0.25
    misalignment_mm: float = 3.0


def fov_cut_share(flair: np.ndarray, affine: np.ndarray) -> float:
    """The largest share of the head's biggest cross-section lying on an edge of the grid.

    Every edge counts except the inferior one (the neck leaves through it in most scans). The
    head is the FLAIR above 2 % of its range above the minimum (works on raw and z-scored
    intensities, whose background is the minimum).

    Args:
        flair: a 3-D FLAIR array; ``affine``: its voxel-to-world affine (for the axis directions).

    Returns:
        0 when the head stays inside the field of view; up to 1 (an edge through its widest part).
    """
    data = np.asarray(flair, np.float32)
    lo = float(data.min())
    hi = float(np.percentile(data.reshape(-1)[:: max(1, data.size // 200_000)], 99))
    head = data > lo + 0.02 * (hi - lo)
    codes = nib.aff2axcodes(affine)
    worst = 0.0
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        area = head.sum(axis=other)
        biggest = float(area.max())
        if biggest == 0:
            continue
        for index, code in ((0, _OPPOSITE[codes[axis]]), (-1, codes[axis])):
            if code != "I":
                worst = max(worst, float(area[index]) / biggest)
    return worst


def wmh_outside_wm_share(wmh: np.ndarray, classes: np.ndarray, spacing: Sequence[float]) -> float:
    """Share of WMH voxels farther than 3 mm from the white-matter classes (NaN without WMH).

    Example:
        >>> c = np.zeros((20, 5, 5), np.uint8); c[:5] = 8
        >>> w = np.zeros(c.shape, bool); w[5, 2, 2] = w[15, 2, 2] = True
        >>> wmh_outside_wm_share(w, c, (1.0, 1.0, 1.0))
        0.5
    """
    wmh = np.asarray(wmh, bool)
    n = int(wmh.sum())
    if n == 0:
        return math.nan
    wm = np.isin(classes, _WM_CLASSES)
    if not wm.any():
        return 1.0
    dist = ndimage.distance_transform_edt(~wm, sampling=spacing)
    return float(np.count_nonzero(wmh & (dist > _WM_DISTANCE_MM))) / n


def scan_checks(image: Any, affine: np.ndarray, wmh_probability: Any, classes: Any | None,
                threshold: float) -> dict[str, float]:
    """The per-scan QC measures on the working grid.

    Args:
        image: the working-grid image ``(2, X, Y, Z)`` (channel 1 = FLAIR).
        affine: the working grid's affine.
        wmh_probability: WMH probability on that grid; ``threshold``: the mask's threshold.
        classes: BISON class per voxel, or ``None`` when the model predicts WMH alone.

    Returns:
        ``fov_cut_share`` and ``wmh_outside_wm_share`` (NaN without tissue classes).
    """
    flair = np.asarray(image[1].detach().cpu().numpy() if hasattr(image, "detach") else image[1])
    out = {"fov_cut_share": round(fov_cut_share(flair, affine), 4), "wmh_outside_wm_share": math.nan}
    if classes is not None:
        prob = np.asarray(wmh_probability.cpu().numpy() if hasattr(wmh_probability, "cpu") else wmh_probability)
        spacing = voxel_sizes(affine)
        share = wmh_outside_wm_share(prob > threshold, np.asarray(classes), spacing)
        out["wmh_outside_wm_share"] = round(share, 4) if np.isfinite(share) else math.nan
    return out


def _number(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def _robust_z(values: np.ndarray) -> np.ndarray | None:
    """0.6745 (x - median) / MAD (Iglewicz and Hoaglin); ``None`` when the MAD is 0."""
    med = np.median(values)
    mad = np.median(np.abs(values - med))
    return None if mad == 0 else 0.6745 * (values - med) / mad


def cohort_flags(records: Sequence[dict[str, Any]], thresholds: QCThresholds | None = None) -> list[str]:
    """The ``qc_flags`` string of each record (``""`` when none), in the records' order.

    Args:
        records: the per-scan records of the whole table (``status``, ``wmh_mm3``,
            ``mean_lesion_prob``, ``wmh_outside_wm_share``, ``fov_cut_share`` and, when the
            T1 registration check ran, ``t1_shift_mm``).
        thresholds: where each flag starts.

    Example:
        >>> recs = [{"status": "ok", "wmh_mm3": v, "mean_lesion_prob": 0.9} for v in (900, 1000, 1100, 1000, 950)]
        >>> cohort_flags(recs + [{"status": "ok", "wmh_mm3": 60000, "mean_lesion_prob": 0.5}, {"status": "error"}])
        ['', '', '', '', '', 'volume_outlier;low_lesion_prob', 'failed']
    """
    th = thresholds or QCThresholds()
    ok = [i for i, r in enumerate(records) if r.get("status") == "ok" and np.isfinite(_number(r.get("wmh_mm3")))]
    outliers: set[int] = set()
    if len(ok) >= th.min_cohort:
        z = _robust_z(np.log1p(np.array([max(_number(records[i]["wmh_mm3"]), 0.0) for i in ok])))
        if z is not None:
            outliers = {i for i, zi in zip(ok, z, strict=True) if abs(zi) > th.outlier_z}
    out = []
    for i, r in enumerate(records):
        flags = []
        if r.get("status") != "ok":
            flags.append("failed")
        if i in outliers:
            flags.append("volume_outlier")
        if _number(r.get("mean_lesion_prob")) < th.low_lesion_prob:
            flags.append("low_lesion_prob")
        if _number(r.get("wmh_outside_wm_share")) > th.outside_wm_share:
            flags.append("wmh_outside_wm")
        if _number(r.get("fov_cut_share")) > th.fov_cut_share:
            flags.append("fov_cut")
        if _number(r.get("t1_shift_mm")) > th.misalignment_mm:
            flags.append("misaligned")
        out.append(";".join(flags))
    return out
