"""A subject's space: rigid registration of each visit to the baseline, and resampling through it.

:func:`register_visit` aligns one visit's FLAIR with the baseline's with the T1-to-FLAIR
registration (:func:`wmhseg.registration.register_rigid`: SimpleITK, 6 degrees of freedom,
Mattes mutual information, so contrast drift and a scanner change do not matter, regular-step
gradient descent over a coarse-to-fine pyramid). Its result is a 4x4 RAS matrix
``visit_from_base`` taking baseline world points to the visit's world points.

:func:`to_subject` / :func:`from_subject` move data between a visit's grid and the subject
space (the baseline's grid) through that matrix; :func:`between_visits` maps one visit's data
onto another visit's grid. All three reuse :func:`wmhseg.inference.export.resample_to_grid`
by folding the rigid motion into the source grid's affine.

A registration fails (:class:`RegistrationError`, with the reason) when the two fields of view
do not overlap, SimpleITK fails, the mutual information does not improve, or the head moves
more than ``max_shift_mm`` on average (a divergence rather than repositioning).

:func:`register_visit_cached` keeps each registration found in a folder, as plain JSON named by a
SHA-256 of both working images, their grids, the settings and the versions that compute it: a
rerun with other longitudinal options, or a subject's new visit, registers only what is new. An
entry that is not a rigid 4x4 matrix is ignored (with a warning) and computed again.

Example:
    >>> reg = register_visit(base_flair, base_affine, visit_flair, visit_affine)   # doctest: +SKIP
    >>> on_base = to_subject(prob, visit_affine, reg.visit_from_base, base_shape, base_affine)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from wmhseg import __version__
from wmhseg.errors import ScanError, WmhsegError
from wmhseg.files import atomic_write_json
from wmhseg.inference.export import resample_to_grid
from wmhseg.registration import register_rigid

__all__ = ["RegistrationError", "Registration", "register_visit", "register_visit_cached", "to_subject",
           "from_subject", "between_visits"]

log = logging.getLogger("wmhseg.infer")
_CACHE_FORMAT = 1



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


def _corners(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    idx = np.array([[x, y, z, 1.0] for x in (0, shape[0] - 1) for y in (0, shape[1] - 1) for z in (0, shape[2] - 1)])
    return (np.asarray(affine, np.float64) @ idx.T)[:3].T


def _overlap(shape_a, affine_a, shape_b, affine_b) -> bool:
    """Whether the world bounding boxes of two grids intersect."""
    a, b = _corners(shape_a, affine_a), _corners(shape_b, affine_b)
    return bool(np.all(a.min(0) <= b.max(0)) and np.all(b.min(0) <= a.max(0)))


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
    t0 = time.perf_counter()
    if not _overlap(base.shape, base_affine, visit.shape, visit_affine):
        raise RegistrationError("the visit's field of view does not overlap the baseline's")
    try:
        matrix, shift, before, after = register_rigid(base, base_affine, visit, visit_affine,
                                                      what="the visit to the baseline", max_shift_mm=max_shift_mm)
    except ScanError as exc:
        raise RegistrationError(str(exc)) from exc
    return Registration(matrix, shift, before, after, time.perf_counter() - t0)


def _cache_key(base: np.ndarray, base_affine: np.ndarray, visit: np.ndarray, visit_affine: np.ndarray,
               max_shift_mm: float) -> str:
    digest = hashlib.sha256(f"wmhseg {__version__} SimpleITK {metadata.version('SimpleITK')} "
                            f"format {_CACHE_FORMAT} max_shift_mm {float(max_shift_mm)!r}".encode())
    for array in (base, base_affine, visit, visit_affine):
        a = np.ascontiguousarray(array, dtype=np.float64 if array.ndim == 2 else np.float32)
        digest.update(repr(a.shape).encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def _read_entry(path: Path) -> Registration | None:
    """A cached registration, or None when the file is absent or not a rigid motion (warned)."""
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text())
        matrix = np.array(entry["visit_from_base"], dtype=np.float64)
        numbers = [float(entry[k]) for k in ("shift_mm", "score_before", "score_after")]
        rigid = (matrix.shape == (4, 4) and np.isfinite(matrix).all() and np.allclose(matrix[3], [0, 0, 0, 1])
                 and np.allclose(matrix[:3, :3] @ matrix[:3, :3].T, np.eye(3), atol=1e-5)
                 and np.linalg.det(matrix[:3, :3]) > 0)
        if rigid and entry.get("format") == _CACHE_FORMAT and np.isfinite(numbers).all():
            return Registration(matrix, *numbers, 0.0)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning("registration cache %s: unreadable (%s); registering again", path, exc)
        return None
    log.warning("registration cache %s: not a rigid motion of this format; registering again", path)
    return None


def register_visit_cached(base: np.ndarray, base_affine: np.ndarray, visit: np.ndarray, visit_affine: np.ndarray,
                          cache_dir: str | os.PathLike | None, *, max_shift_mm: float = 40.0) -> Registration:
    """:func:`register_visit`, kept in (and taken from) ``cache_dir`` when one is given.

    Failed registrations are not kept: they are tried again on the next run. A cache that cannot
    be written is warned about and the run goes on."""
    if cache_dir is None:
        return register_visit(base, base_affine, visit, visit_affine, max_shift_mm=max_shift_mm)
    path = Path(cache_dir) / f"{_cache_key(base, base_affine, visit, visit_affine, max_shift_mm)}.json"
    found = _read_entry(path)
    if found is not None:
        return found
    reg = register_visit(base, base_affine, visit, visit_affine, max_shift_mm=max_shift_mm)
    try:
        atomic_write_json(path, {"format": _CACHE_FORMAT, "visit_from_base": reg.visit_from_base.tolist(),
                                 "shift_mm": reg.shift_mm, "score_before": reg.score_before,
                                 "score_after": reg.score_after})
    except OSError as exc:  # the cache only saves time: a folder that cannot be written costs nothing else
        log.warning("registration cache %s: cannot be written (%s); the registration is not kept", path, exc)
    return reg


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
