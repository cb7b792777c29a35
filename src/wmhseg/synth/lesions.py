"""The WMH pattern of a synthetic subject: a smooth lesion score in the white matter, and the cut
that turns it into lesions of a requested volume.

The score depends on the subject only (``subject_seed``), so scans of one subject at growing
volumes show nested, growing lesions, and a T1 on its own grid shows the same lesions.

Heavy loads. Far from the ventricles and the deep blobs the score is flat but for its roughness,
so a cut low enough for tens of cm^3 used to meet that roughness alone and sprinkle the deep white
matter with specks of one to five voxels (two fifths of the lesion voxels of some 40 cm^3 heads at
2 mm), which no rater draws.
Heavily affected brains have confluent deep lesions instead: a broad field (wavelengths of about
30 mm) makes the low cuts grow patches, and components under :data:`MIN_LESION_MM3` are not
lesions, the cut moving down until the kept ones make the volume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from wmhseg.errors import InputError
from wmhseg.geometry import bounding_box
from wmhseg.metrics import label_lesions
from wmhseg.synth.anatomy import Grid, Noise, smooth_field

__all__ = ["lesion_score", "LesionCut", "MIN_LESION_MM3"]

_F = np.float32
# The smallest lesion (mm^3; 3-4 mm across): smaller components of a cut are dropped
MIN_LESION_MM3 = 30.0
# Weight of the broad deep field against the deep blobs' (both scaled by the subject's deep weight)
_BROAD_WEIGHT = 0.3
_BROAD_SCALE_MM = 30.0


def lesion_score(codes, vdist, horn, pose, grid, head, rng_subject) -> np.ndarray:
    """Smooth WMH propensity inside the white matter (head frame, subject-seeded)."""
    rs = np.random.default_rng(rng_subject)
    pv_weight, deep_weight = rs.uniform(0.6, 1.0), rs.uniform(0.3, 0.8)
    lam = rs.uniform(2.5, 5.0)  # mm: how far periventricular lesions reach per score unit
    score = pv_weight * np.exp(-np.clip(vdist, 0, None) / lam) * (0.55 + 0.45 * np.clip(horn, 0, 1.2))
    # Deep blobs: centres drawn in the head frame, so every scan of a subject has the same ones.
    hx, hy, hz = pose.head_coords(grid)
    n_blobs = 2 + rs.poisson(6)
    centres = head.wm_points(rs, n_blobs)
    sigmas = rs.uniform(1.5, 4.0, len(centres)) * head.lesion_scale
    weights = rs.uniform(0.35, 0.9, len(centres))
    world = centres @ pose.rotation.T + pose.centre
    vox = (world - np.asarray(grid.origin)) / np.asarray(grid.spacing)
    for v, c, s, w in zip(vox, centres, sigmas, weights, strict=True):
        reach = np.ceil(4 * s / np.asarray(grid.spacing)).astype(int)  # the blob is ~0 beyond 4 sigma
        box = tuple(slice(max(0, int(round(v[i])) - reach[i]), max(0, int(round(v[i])) + reach[i] + 1)) for i in range(3))
        hb = [np.broadcast_to(h, grid.shape)[box] for h in (hx, hy, hz)]
        score[box] += deep_weight * w * np.exp(-((hb[0] - c[0]) ** 2 + (hb[1] - c[1]) ** 2 + (hb[2] - c[2]) ** 2) / (2 * s * s))
    rough = smooth_field(Noise(rs, 6.0), pose, grid)
    # confluent deep WMH where a low cut meets the deep white matter (module docs)
    broad = smooth_field(Noise(rs, _BROAD_SCALE_MM), pose, grid)
    score = score + _BROAD_WEIGHT * deep_weight * np.clip(broad, 0, None)
    return (score + 0.06 * rough).astype(_F)


def _min_voxels(voxel_mm3: float) -> int:
    return max(1, int(np.ceil(MIN_LESION_MM3 / voxel_mm3 - 1e-9)))


def kept_lesions(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """``mask`` without its connected components (26-neighbourhood) of fewer than ``min_voxels``.

    Example:
        >>> m = np.zeros((5, 5, 5), bool); m[0, 0, 0] = True; m[2:4, 2:4, 2:4] = True
        >>> int(kept_lesions(m, 4).sum())
        8
    """
    if min_voxels <= 1 or not mask.any():
        return mask
    labels, n = label_lesions(mask)
    keep = np.bincount(labels.reshape(-1), minlength=n + 1) >= min_voxels
    keep[0] = False
    return keep[labels]


def _peel(les: np.ndarray, score: np.ndarray, count: int) -> None:
    """Leave out ``count`` voxels of ``les``'s largest lesion, lowest score first, each only where
    the lesion stays in one piece (in place)."""
    labels, _ = label_lesions(les)
    sizes = np.bincount(labels.reshape(-1))
    sizes[0] = 0
    largest = int(np.argmax(sizes))
    box = ndimage.find_objects(labels)[largest - 1]
    lesion = labels[box] == largest
    sub = les[box]  # a view: cleared voxels leave les
    for flat in np.flatnonzero(lesion)[np.argsort(score[box][lesion], kind="stable")]:
        if count == 0:
            return
        voxel = np.unravel_index(flat, lesion.shape)
        lesion[voxel] = False
        if label_lesions(lesion)[1] == 1:
            sub[voxel] = False
            count -= 1
        else:
            lesion[voxel] = True


@dataclass(frozen=True)
class LesionCut:
    """Where the lesion score is cut: white matter above ``threshold`` is lesion, in components of
    at least :data:`MIN_LESION_MM3`, and no more than ``volume_mm3`` of it."""

    threshold: float
    spread: float
    volume_mm3: float = np.inf

    @classmethod
    def for_volume(cls, score: np.ndarray, wm: np.ndarray, voxel_mm3: float, wmh_volume_mm3: float | None,
                   acq: np.random.Generator, grid: Grid) -> LesionCut:
        """The cut that makes the lesion volume ``wmh_volume_mm3`` (drawn when ``None``): the highest
        threshold whose kept components (:func:`kept_lesions`) hold that many voxels."""
        wm_mm3 = wm.sum() * voxel_mm3
        if wmh_volume_mm3 is None:
            wmh_volume_mm3 = float(wm_mm3 * np.exp(acq.uniform(np.log(0.002), np.log(0.04))))
        if wmh_volume_mm3 > 0.6 * wm_mm3:
            raise InputError(
                f"wmh_volume_mm3={wmh_volume_mm3:.0f} is more than 60% of the white matter ({wm_mm3:.0f} mm^3) "
                f"of a {tuple(grid.shape)} grid at {tuple(grid.spacing)} mm; use a larger grid or a smaller volume"
            )
        n = int(round(wmh_volume_mm3 / voxel_mm3))
        wm_scores = score[wm]
        spread = float(np.std(wm_scores)) + 1e-6
        if n == 0:
            return cls(float(np.inf), spread, 0.0)
        ranked = np.sort(wm_scores)[::-1]  # the k-th threshold keeps the k highest scores before dropping
        box = bounding_box(wm, 1)
        wm_box, score_box, k_min = wm[box], score[box], _min_voxels(voxel_mm3)

        def reaches(rank: int) -> bool:  # the cut keeping `rank` voxels keeps n or more in lesions
            return int(kept_lesions(wm_box & (score_box >= ranked[rank - 1]), k_min).sum()) >= n

        # the fewest raw voxels whose kept ones reach n: steps up by the deficit, then bisection
        lo, hi = n, n
        while not reaches(hi):
            if hi == ranked.size:  # cannot happen for a white matter of one piece; keep the plain cut
                return cls(float(ranked[n - 1]), spread, n * voxel_mm3)
            lo, hi = hi + 1, min(ranked.size, hi + 2 * (hi - lo + 1) + n // 8)
        while lo < hi:
            mid = (lo + hi) // 2
            if reaches(mid):
                hi = mid
            else:
                lo = mid + 1
        return cls(float(ranked[lo - 1]), spread, n * voxel_mm3)

    def lesions(self, codes: np.ndarray, score: np.ndarray, voxel_mm3: float) -> tuple[np.ndarray, np.ndarray]:
        """``(lesion mask, lesion core intensity in [0.55, 1])`` on a sampled grid of ``voxel_mm3``.

        The voxel that completes the volume can join specks into a lesion, so the kept voxels may
        exceed the volume by a few: the largest lesion's voxels of lowest score are then left out,
        and the mask holds ``volume_mm3`` to within a voxel."""
        les = kept_lesions((codes == 8) & (score >= self.threshold), _min_voxels(voxel_mm3))
        surplus = int(les.sum()) - int(round(self.volume_mm3 / voxel_mm3)) if np.isfinite(self.volume_mm3) else 0
        if surplus > 0:
            _peel(les, score, surplus)
        core = np.clip(0.55 + 0.45 * (score[les] - self.threshold) / (0.5 * self.spread), 0.55, 1.0).astype(_F)
        return les, core
