"""The WMH pattern of a synthetic subject: a smooth lesion score in the white matter, and the cut
that turns it into lesions of a requested volume.

The score depends on the subject only (``subject_seed``), so scans of one subject at growing
volumes show nested, growing lesions, and a T1 on its own grid shows the same lesions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wmhseg.errors import InputError
from wmhseg.synth.anatomy import Grid, Noise, smooth_field

__all__ = ["lesion_score", "LesionCut"]

_F = np.float32


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
    return (score + 0.06 * rough).astype(_F)


@dataclass(frozen=True)
class LesionCut:
    """Where the lesion score is cut: white matter above ``threshold`` is lesion."""

    threshold: float
    spread: float

    @classmethod
    def for_volume(cls, score: np.ndarray, wm: np.ndarray, voxel_mm3: float, wmh_volume_mm3: float | None,
                   acq: np.random.Generator, grid: Grid) -> LesionCut:
        """The cut that makes the lesion volume ``wmh_volume_mm3`` (drawn when ``None``)."""
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
        threshold = np.inf if n == 0 else np.partition(wm_scores, wm_scores.size - n)[wm_scores.size - n]
        return cls(float(threshold), float(np.std(wm_scores)) + 1e-6)

    def lesions(self, codes: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(lesion mask, lesion core intensity in [0.55, 1])`` on a sampled grid."""
        les = (codes == 8) & (score >= self.threshold)
        core = np.clip(0.55 + 0.45 * (score[les] - self.threshold) / (0.5 * self.spread), 0.55, 1.0).astype(_F)
        return les, core
