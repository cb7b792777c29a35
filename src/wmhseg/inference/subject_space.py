"""A subject's space: rigid registration of each visit to the baseline, and resampling through it.

:func:`register_visit` aligns one visit's FLAIR with the baseline's (SimpleITK: 6 degrees of
freedom, Mattes mutual information, so contrast drift and a scanner change do not matter,
regular-step gradient descent over a coarse-to-fine pyramid). Its result is a 4x4 RAS matrix
``visit_from_base`` taking baseline world points to the visit's world points.

:func:`to_subject` / :func:`from_subject` move data between a visit's grid and the subject
space (the baseline's grid) through that matrix; :func:`between_visits` maps one visit's data
onto another visit's grid. All three reuse :func:`wmhseg.inference.export.resample_to_grid`
by folding the rigid motion into the source grid's affine.

A registration fails (:class:`RegistrationError`, with the reason) when the two fields of view
do not overlap, SimpleITK fails, the mutual information does not improve, or the head moves
more than ``max_shift_mm`` on average (a divergence rather than repositioning).

Example:
    >>> reg = register_visit(base_flair, base_affine, visit_flair, visit_affine)   # doctest: +SKIP
    >>> on_base = to_subject(prob, visit_affine, reg.visit_from_base, base_shape, base_affine)  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from wmhseg.errors import WmhsegError
from wmhseg.inference.export import resample_to_grid

__all__ = ["RegistrationError", "Registration", "register_visit", "to_subject", "from_subject", "between_visits"]

_F = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (ITK's world), its own inverse
_SEED = 20240601  # metric sampling is random; a fixed seed makes results reproducible
_MAX_SAMPLES = 100_000


class RegistrationError(WmhsegError):
    """Two visits of a subject could not be registered; the message says why."""


@dataclass
class Registration:
    """What :func:`register_visit` found.

    Attributes:
        visit_from_base: 4x4 RAS matrix from baseline world to visit world points.
        shift_mm: mean displacement of the baseline head's voxels by that motion.
        score_before, score_after: Mattes mutual information (nats, higher is better) at the
            identity and at the result.
        seconds: wall time.
    """

    visit_from_base: np.ndarray
    shift_mm: float
    score_before: float
    score_after: float
    seconds: float


def _to_sitk(data: np.ndarray, affine: np.ndarray):
    """A float32 SimpleITK image of a 3-D array with a RAS voxel-to-world affine (ITK is LPS)."""
    import SimpleITK as sitk

    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data, dtype=np.float32).transpose(2, 1, 0)))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(v) for v in _F[:3, :3] @ affine[:3, 3]))
    img.SetDirection(tuple(float(v) for v in ((_F[:3, :3] @ affine[:3, :3]) / spacing).ravel()))
    return img


def _corners(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    idx = np.array([[x, y, z, 1.0] for x in (0, shape[0] - 1) for y in (0, shape[1] - 1) for z in (0, shape[2] - 1)])
    return (np.asarray(affine, np.float64) @ idx.T)[:3].T


def _overlap(shape_a, affine_a, shape_b, affine_b) -> bool:
    """Whether the world bounding boxes of two grids intersect."""
    a, b = _corners(shape_a, affine_a), _corners(shape_b, affine_b)
    return bool(np.all(a.min(0) <= b.max(0)) and np.all(b.min(0) <= a.max(0)))


def _matrix(transform) -> np.ndarray:
    """4x4 LPS matrix of a SimpleITK linear transform (fixed -> moving points)."""
    origin = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    m = np.eye(4)
    for j in range(3):
        m[:3, j] = np.asarray(transform.TransformPoint(tuple(np.eye(3)[j]))) - origin
    m[:3, 3] = origin
    return m


def _method(n_voxels: int, spacing: float):
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(min(1.0, _MAX_SAMPLES / n_voxels), _SEED)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=200,
                                                 relaxationFactor=0.5, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    shrink = [f for f in (4, 2, 1) if f == 1 or f * spacing <= 8.0]
    reg.SetShrinkFactorsPerLevel(shrink)
    reg.SetSmoothingSigmasPerLevel([0.5 * f * spacing if f > 1 else 0.0 for f in shrink])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return reg


def register_visit(base: np.ndarray, base_affine: np.ndarray, visit: np.ndarray, visit_affine: np.ndarray, *,
                   max_shift_mm: float = 40.0) -> Registration:
    """Rigidly register a visit's image to the baseline's (see the module docstring).

    Args:
        base, base_affine: the baseline FLAIR (3-D) and its RAS affine (the fixed image).
        visit, visit_affine: the visit's FLAIR and affine (the moving image).
        max_shift_mm: a motion moving the head more than this on average is a divergence.

    Raises:
        RegistrationError: no overlap, a failed or diverged fit, or no improvement.
    """
    import SimpleITK as sitk

    t0 = time.perf_counter()
    if not _overlap(base.shape, base_affine, visit.shape, visit_affine):
        raise RegistrationError("the visit's field of view does not overlap the baseline's")
    fixed, moving = _to_sitk(base, base_affine), _to_sitk(visit, visit_affine)
    head = np.argwhere(base > np.percentile(base, 60))[::50]
    points = (np.asarray(base_affine, np.float64) @ np.c_[head, np.ones(len(head))].T)[:3].T @ _F[:3, :3].T
    start = sitk.Euler3DTransform()
    start.SetCenter(tuple(points.mean(0)))
    method = _method(base.size, float(min(fixed.GetSpacing())))
    method.SetInitialTransform(start, inPlace=False)
    try:
        before = -float(method.MetricEvaluate(fixed, moving))
        found = method.Execute(fixed, moving)
        method.SetInitialTransform(found, inPlace=False)
        after = -float(method.MetricEvaluate(fixed, moving))
    except RuntimeError as exc:
        raise RegistrationError(f"rigid registration failed ({str(exc).strip().splitlines()[-1]})") from exc
    lps = _matrix(found)
    shift = float(np.linalg.norm(points @ lps[:3, :3].T + lps[:3, 3] - points, axis=1).mean())
    if not np.isfinite(after) or after < before - 1e-3 or shift > max_shift_mm:
        raise RegistrationError(f"rigid registration did not converge: mutual information {before:.3f} -> "
                                f"{after:.3f}, mean head shift {shift:.1f} mm")
    return Registration(_F @ lps @ _F, shift, before, after, time.perf_counter() - t0)


def _resample(data: torch.Tensor | np.ndarray, src_affine: np.ndarray, dst_shape: Sequence[int],
              dst_affine: np.ndarray) -> torch.Tensor:
    src = torch.as_tensor(np.asarray(data) if isinstance(data, np.ndarray) else data, dtype=torch.float32)
    return resample_to_grid(src[None], src_affine, dst_shape, dst_affine, footprint=False)[0]


def to_subject(data, affine: np.ndarray, visit_from_base: np.ndarray, base_shape: Sequence[int],
               base_affine: np.ndarray) -> torch.Tensor:
    """A visit's 3-D ``data`` (on ``affine``'s grid) resampled onto the baseline grid (trilinear)."""
    return _resample(data, np.linalg.inv(visit_from_base) @ affine, base_shape, base_affine)


def from_subject(data, base_affine: np.ndarray, visit_from_base: np.ndarray, shape: Sequence[int],
                 affine: np.ndarray) -> torch.Tensor:
    """Baseline-grid ``data`` resampled onto a visit's grid (``shape``, ``affine``)."""
    return _resample(data, visit_from_base @ base_affine, shape, affine)


def between_visits(data, affine_a: np.ndarray, a_from_base: np.ndarray, shape_b: Sequence[int],
                   affine_b: np.ndarray, b_from_base: np.ndarray) -> torch.Tensor:
    """Visit A's ``data`` resampled onto visit B's grid through the subject space."""
    return _resample(data, b_from_base @ np.linalg.inv(a_from_base) @ affine_a, shape_b, affine_b)
