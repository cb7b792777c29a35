"""Per-scan measures on a native-grid WMH mask: volume, lesion count, periventricular/deep split,
tissue volumes and a probability-based quality figure.

Periventricular rule (``PV_RULE``): a WMH voxel is periventricular when its Euclidean distance
(in mm, on the native grid) to the nearest ventricle voxel is at most ``pv_distance_mm``
(default 10 mm, the "10 mm rule" of DeCarli et al. 2005 as compared by Griffanti et al. 2018);
all other WMH voxels are deep. The split is voxel-wise, so a confluent lesion reaching from the
ventricles into deep white matter contributes to both. It needs a ventricle segmentation: the
network's BISON ventricle class (label mode ``"bison"``). Without one the split is left empty
(NaN) and the ``pv_rule`` column says so, rather than guessing ventricles from intensities.

Tissue volumes (``icv_mm3``, ``brain_mm3``) come from the BISON tissue classes the network
predicts (arg-max on the working grid, times the working voxel volume): intracranial volume =
every non-background class; brain = every class except ventricles and extraventricular CSF.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from wmhseg.geometry import bounding_box, voxel_sizes, voxel_volume_mm3
from wmhseg.metrics import label_lesions

__all__ = ["PV_RULE", "NO_PV_RULE", "wmh_measures", "periventricular_split", "tissue_volumes"]

PV_RULE = "voxelwise distance to predicted ventricles <= {:g} mm"
NO_PV_RULE = "not available: the model predicts no ventricle class"
_CSF_CLASSES = (1, 2)  # BISON ventricles, extraventricular CSF


def periventricular_split(mask: np.ndarray, ventricles: np.ndarray, spacing: Sequence[float],
                          distance_mm: float = 10.0) -> tuple[int, int]:
    """Count WMH voxels within ``distance_mm`` of the ventricles (periventricular) and beyond (deep).

    Args:
        mask: boolean WMH mask.
        ventricles: boolean ventricle mask on the same grid.
        spacing: voxel size in mm per axis.
        distance_mm: the distance threshold (inclusive).

    Returns:
        ``(n_periventricular, n_deep)`` voxel counts; all WMH is deep when there are no ventricles.

    Example:
        >>> m = np.zeros((30, 5, 5), bool); m[[5, 25], 2, 2] = True
        >>> v = np.zeros_like(m); v[0:3, 2, 2] = True
        >>> periventricular_split(m, v, (1.0, 1.0, 1.0))
        (1, 1)
    """
    mask = np.asarray(mask, bool)
    vent = np.asarray(ventricles, bool)
    n_wmh = int(mask.sum())
    if n_wmh == 0:
        return 0, 0
    margin = [int(np.ceil(distance_mm / s)) + 1 for s in spacing]
    box = bounding_box(vent, margin)
    if box is None:
        return 0, n_wmh
    # only voxels within the ventricles' box grown by the distance can be periventricular
    dist = ndimage.distance_transform_edt(~vent[box], sampling=spacing)
    n_pv = int(np.count_nonzero(mask[box] & (dist <= distance_mm)))
    return n_pv, n_wmh - n_pv


def wmh_measures(
    mask: np.ndarray,
    affine: np.ndarray,
    *,
    probability: np.ndarray | None = None,
    ventricles: np.ndarray | None = None,
    pv_distance_mm: float = 10.0,
) -> dict[str, float | int | str]:
    """Volumes and counts of a native-grid WMH mask.

    Args:
        mask: boolean WMH mask on the native grid.
        affine: the native grid's voxel-to-world affine (voxel volume and spacing come from it).
        probability: WMH probability on the same grid (for ``mean_lesion_prob``).
        ventricles: boolean ventricle mask on the same grid, when the model predicts one.
        pv_distance_mm: periventricular distance threshold.

    Returns:
        ``wmh_mm3`` (= voxels x voxel volume), ``wmh_voxels``, ``n_lesions`` (26-connected
        components), ``wmh_periventricular_mm3``, ``wmh_deep_mm3``, ``pv_rule``,
        ``mean_lesion_prob`` (NaN without lesions or probability), ``voxel_x_mm``, ``voxel_y_mm``,
        ``voxel_z_mm``, ``voxel_mm3``.

    Example:
        >>> m = np.zeros((10, 10, 10), bool); m[2:4, 2:4, 2:4] = True; m[7, 7, 7] = True
        >>> r = wmh_measures(m, np.diag([0.5, 0.5, 2.0, 1.0]))
        >>> r["wmh_mm3"], r["n_lesions"]
        (4.5, 2)
    """
    mask = np.asarray(mask, bool)
    vox = voxel_volume_mm3(affine)
    spacing = voxel_sizes(affine)
    n_vox = int(np.count_nonzero(mask))
    box = bounding_box(mask, (1, 1, 1))
    n_lesions = 0 if box is None else label_lesions(mask[box])[1]
    out: dict[str, float | int | str] = {
        "wmh_mm3": n_vox * vox,
        "wmh_voxels": n_vox,
        "n_lesions": n_lesions,
    }
    if ventricles is not None:
        n_pv, n_deep = periventricular_split(mask, ventricles, spacing, pv_distance_mm)
        out.update(wmh_periventricular_mm3=n_pv * vox, wmh_deep_mm3=n_deep * vox,
                   pv_rule=PV_RULE.format(pv_distance_mm))
    else:
        out.update(wmh_periventricular_mm3=float("nan"), wmh_deep_mm3=float("nan"), pv_rule=NO_PV_RULE)
    if probability is not None and n_vox:
        out["mean_lesion_prob"] = float(np.asarray(probability, np.float64)[mask].mean())
    else:
        out["mean_lesion_prob"] = float("nan")
    out.update(voxel_x_mm=spacing[0], voxel_y_mm=spacing[1], voxel_z_mm=spacing[2], voxel_mm3=vox)
    return out


def tissue_volumes(classes: np.ndarray, voxel_mm3: float) -> dict[str, float]:
    """Intracranial and brain volumes from a BISON class map (arg-max of the network's output).

    Args:
        classes: integer BISON class per voxel (0 = background).
        voxel_mm3: volume of one voxel of that grid.

    Returns:
        ``icv_mm3`` (all classes > 0) and ``brain_mm3`` (classes > 0 other than ventricles and
        extraventricular CSF).

    Example:
        >>> tissue_volumes(np.array([0, 1, 2, 8, 9]), 2.0)
        {'icv_mm3': 8.0, 'brain_mm3': 4.0}
    """
    c = np.asarray(classes)
    icv = int(np.count_nonzero(c > 0))
    csf = int(np.count_nonzero(np.isin(c, _CSF_CLASSES)))
    return {"icv_mm3": icv * float(voxel_mm3), "brain_mm3": (icv - csf) * float(voxel_mm3)}
