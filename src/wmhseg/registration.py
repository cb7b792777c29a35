"""T1-to-FLAIR alignment: a check, and a rigid registration with SimpleITK when needed.

wmhseg resamples the T1 onto the FLAIR grid through the two affines, which assumes the head did
not move between the two acquisitions. :func:`align_t1` checks that and, when asked, corrects it:

* the score is Mattes mutual information (nats, higher is better) between the FLAIR and the T1
  resampled through the affines, over the FLAIR's field of view at about 2 mm. (Restricted to the head, the
  mutual information is flatter and the registration less reliable: it failed to recover a 4 mm
  shift on synthetic scans that the whole field of view recovers to 0.1 mm.) How far the head
  moves is measured on the head (Otsu foreground of the FLAIR);
* ``mode="never"``: nothing is done; ``"always"``: the T1 is registered rigidly to the FLAIR
  (6 degrees of freedom, Mattes MI on at most 50,000 sampled voxels, regular-step gradient
  descent, three resolutions: about 4 and 2 mm on images shrunk to 2 mm, then the full one);
  ``"auto"``: a coarse registration (one level at about 4 mm) measures how far the T1 lies from
  its best pose; when the head moves more than ``tolerance_mm`` on average, the full registration
  follows, else nothing changes;
* a registration that fails, lowers the score, or ends far from the start (more than
  ``max_shift_mm`` on average: a divergence, not head motion) raises :class:`ScanError`.

The result is a correction of the T1's affine (:attr:`Alignment.t1_affine`): resampling
through the corrected affine puts the T1 on the FLAIR. :class:`wmhseg.data.preprocessing.RegisterT1d`
applies it inside the preprocessing pipeline, so training and inference share the step.

Example:
    >>> result = align_t1(t1, t1_affine, flair, flair_affine, mode="always")  # doctest: +SKIP
    >>> result.shift_mm, result.score_before, result.score_after              # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from wmhseg.errors import InputError, ScanError
from wmhseg.geometry import voxel_sizes
from wmhseg.xfm import RAS_LPS as _F
from wmhseg.xfm import itk_matrix

__all__ = ["REGISTER_MODES", "Alignment", "align_t1", "register_rigid", "to_sitk"]

REGISTER_MODES = ("auto", "always", "never")
_BINS = 32
_MAX_SAMPLES = 50_000
_SEED = 20240601  # metric sampling is random; a fixed seed makes results reproducible


@dataclass
class Alignment:
    """What :func:`align_t1` did.

    Attributes:
        mode: the mode asked for.
        registered: the T1's affine was corrected.
        shift_mm: mean displacement of the head's voxels by the found correction (mm); NaN when
            no registration ran.
        score_before, score_after: Mattes MI through the original / corrected affines.
        correction: 4x4 RAS matrix taking FLAIR world points to the T1's world points.
        t1_affine: the corrected T1 affine (the original one when not registered).
        seconds: wall time of the check and registration.
    """

    mode: str
    registered: bool
    shift_mm: float
    score_before: float
    score_after: float
    correction: np.ndarray
    t1_affine: np.ndarray
    seconds: float

    def record(self) -> dict[str, Any]:
        """The columns of the volume table: ``t1_registration`` (never|checked|registered),
        ``t1_align_mi_before/after``, ``t1_shift_mm``, ``t1_transform`` (the 3x4 correction,
        row-major, space-separated) and ``t_register_s``."""
        state = "registered" if self.registered else ("never" if self.mode == "never" else "checked")
        return {"t1_registration": state, "t1_align_mi_before": round(self.score_before, 5),
                "t1_align_mi_after": round(self.score_after, 5), "t1_shift_mm": round(self.shift_mm, 4),
                "t1_transform": " ".join(f"{v:.6g}" for v in self.correction[:3].ravel()),
                "t_register_s": round(self.seconds, 4)}


def to_sitk(data: np.ndarray, affine: np.ndarray):
    """A float32 SimpleITK image of a 3-D array with a RAS voxel-to-world affine (ITK is LPS)."""
    import SimpleITK as sitk

    affine = np.asarray(affine, dtype=np.float64)
    spacing = voxel_sizes(affine)
    direction = (_F[:3, :3] @ affine[:3, :3]) / spacing
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data, dtype=np.float32).transpose(2, 1, 0)))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(v) for v in _F[:3, :3] @ affine[:3, 3]))
    try:
        img.SetDirection(tuple(float(v) for v in direction.ravel()))
    except RuntimeError as exc:
        raise ScanError(f"the affine's axes are not orthogonal (sheared), cannot register: {exc}") from exc
    return img


def _levels(fixed, targets_mm) -> tuple[list[int], list[float]]:
    """Shrink factors bringing the FLAIR's voxels near ``targets_mm`` (coarse to fine, no repeats),
    with a Gaussian smoothing of half the target size (mm) at each coarse level."""
    spacing = max(fixed.GetSpacing())
    shrink: list[int] = []
    for target in targets_mm:
        factor = max(1, int(round(target / spacing)))
        if not shrink or factor < shrink[-1]:
            shrink.append(factor)
    return shrink, [0.5 * f * spacing if f > 1 else 0.0 for f in shrink]


def _method(n_voxels: int, levels: tuple[list[int], list[float]], iterations: int):
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=_BINS)
    if n_voxels > _MAX_SAMPLES:  # every voxel of small images; a fixed-size random sample of large ones
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(_MAX_SAMPLES / n_voxels, _SEED)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3, numberOfIterations=iterations,
                                                 relaxationFactor=0.5, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(levels[0])
    reg.SetSmoothingSigmasPerLevel(levels[1])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return reg


def _coarse(*images, voxel_mm: float = 2.0) -> list:
    """The images shrunk to voxels of about ``voxel_mm`` (the metric computes gradients of whole
    images, which at 1 mm alone takes seconds)."""
    import SimpleITK as sitk

    out = []
    for img in images:
        factor = max(1, int(round(voxel_mm / min(img.GetSpacing()))))
        out.append(sitk.Shrink(img, [factor] * 3) if factor > 1 else img)
    return out


def _score(fixed, moving, transform) -> float:
    """Mattes MI at ``transform`` on the images shrunk to about 2 mm."""
    import SimpleITK as sitk

    fixed, moving = _coarse(fixed, moving)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=_BINS)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetInitialTransform(transform)
    return -float(reg.MetricEvaluate(fixed, moving))


def _mean_shift(matrix_lps: np.ndarray, points: np.ndarray) -> float:
    moved = points @ matrix_lps[:3, :3].T + matrix_lps[:3, 3]
    return float(np.linalg.norm(moved - points, axis=1).mean())


def _head(fixed) -> np.ndarray:
    """Up to 20,000 voxel centres (LPS mm) of the FLAIR's Otsu foreground (the head)."""
    import SimpleITK as sitk

    mask = sitk.OtsuThreshold(fixed, 0, 1, 128)
    idx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[:, ::-1]  # (x, y, z) ITK index order
    if len(idx) < 100:
        raise ScanError("the fixed image (FLAIR) has almost no foreground; cannot register to it")
    idx = idx[:: max(1, len(idx) // 20000)]
    origin, spacing = np.asarray(fixed.GetOrigin()), np.asarray(fixed.GetSpacing())
    direction = np.asarray(fixed.GetDirection()).reshape(3, 3)
    return origin + (idx * spacing) @ direction.T


def _register(fixed, moving, mode: str, tolerance_mm: float, max_shift_mm: float,
              what: str = "the T1 to the FLAIR") -> tuple:
    """``(registered, shift_mm, score_before, score_after, LPS matrix)``; SimpleITK errors propagate."""
    import SimpleITK as sitk

    points, n_voxels = _head(fixed), int(np.prod(fixed.GetSize()))
    start = sitk.Euler3DTransform()
    start.SetCenter(tuple(points.mean(0)))
    before = _score(fixed, moving, start)
    small_fixed, small_moving = _coarse(fixed, moving)
    if mode == "auto":
        coarse = _method(int(np.prod(small_fixed.GetSize())), _levels(small_fixed, [4.0]), 60)
        coarse.SetInitialTransform(sitk.Euler3DTransform(start), inPlace=False)
        shift = _mean_shift(itk_matrix(coarse.Execute(small_fixed, small_moving)), points)
        if not shift > tolerance_mm:
            return False, shift, before, before, np.eye(4)
    if small_fixed is not fixed:  # 4 and 2 mm levels on the 2 mm images, then the full resolution
        stage = _method(int(np.prod(small_fixed.GetSize())), _levels(small_fixed, [4.0, 2.0]), 100)
        start = sitk.Euler3DTransform(start)
        stage.SetInitialTransform(start, inPlace=True)  # the full resolution starts where this ends
        stage.Execute(small_fixed, small_moving)
        full = _method(n_voxels, ([1], [0.0]), 100)
    else:
        full = _method(n_voxels, _levels(fixed, [4.0, 2.0, 1.0]), 100)
    full.SetInitialTransform(sitk.Euler3DTransform(start), inPlace=False)
    found = full.Execute(fixed, moving)
    lps = itk_matrix(found)
    shift = _mean_shift(lps, points)
    after = _score(fixed, moving, found)
    if not np.isfinite(after) or after < before - 1e-3 or shift > max_shift_mm:
        raise ScanError(f"rigid registration of {what} did not converge: mutual information "
                        f"{before:.4f} -> {after:.4f}, mean head shift {shift:.1f} mm "
                        f"({full.GetOptimizerStopConditionDescription()})")
    return True, shift, before, after, lps


def register_rigid(fixed: np.ndarray, fixed_affine: np.ndarray, moving: np.ndarray, moving_affine: np.ndarray, *,
                   what: str = "the images", max_shift_mm: float = 30.0) -> tuple[np.ndarray, float, float, float]:
    """Rigid registration of ``moving`` to ``fixed`` (3-D arrays with RAS affines), as :func:`align_t1`
    does it with ``mode="always"``, for any two images of one head (e.g. two visits).

    Returns:
        ``(moving_from_fixed, shift_mm, score_before, score_after)``: the 4x4 RAS matrix taking
        fixed-world points to moving-world points, the mean displacement of the fixed image's
        head voxels by it, and the Mattes mutual information at the identity and at the result.

    Raises:
        ScanError: a failed fit, a lower score or a mean shift over ``max_shift_mm`` (naming ``what``).
    """
    try:
        _, shift, before, after, lps = _register(to_sitk(fixed, fixed_affine), to_sitk(moving, moving_affine),
                                                 "always", 0.0, max_shift_mm, what)
    except RuntimeError as exc:  # SimpleITK: e.g. no overlap between the two images
        raise ScanError(f"rigid registration of {what} failed ({str(exc).strip().splitlines()[-1]})") from exc
    return _F @ lps @ _F, shift, before, after


def align_t1(t1: np.ndarray, t1_affine: np.ndarray, flair: np.ndarray, flair_affine: np.ndarray, *,
             mode: str = "auto", tolerance_mm: float = 1.0, max_shift_mm: float = 30.0) -> Alignment:
    """Check (and per ``mode`` correct) the alignment of a T1 with its FLAIR; see the module docstring.

    Args:
        t1, t1_affine, flair, flair_affine: the two 3-D images and their RAS affines.
        mode: ``"auto"``, ``"always"`` or ``"never"``.
        tolerance_mm: ``auto`` registers when the coarse check moves the head more than this.
        max_shift_mm: a correction moving the head more than this on average is a divergence.

    Raises:
        InputError: an unknown ``mode``.
        ScanError: the registration failed (a SimpleITK error), lowered the score or diverged.
    """
    if mode not in REGISTER_MODES:
        raise InputError(f"register_t1={mode!r} is not one of {REGISTER_MODES}")
    t0 = time.perf_counter()
    t1_affine = np.asarray(t1_affine, dtype=np.float64)
    if mode == "never":
        return Alignment(mode, False, float("nan"), float("nan"), float("nan"), np.eye(4), t1_affine, 0.0)
    try:
        registered, shift, before, after, lps = _register(to_sitk(flair, flair_affine), to_sitk(t1, t1_affine),
                                                          mode, tolerance_mm, max_shift_mm)
    except RuntimeError as exc:  # SimpleITK: e.g. no overlap between the two images
        raise ScanError(f"aligning the T1 to the FLAIR failed ({str(exc).strip().splitlines()[-1]})") from exc
    correction = _F @ lps @ _F
    return Alignment(mode, registered, shift, before, after, correction, np.linalg.inv(correction) @ t1_affine,
                     time.perf_counter() - t0)
