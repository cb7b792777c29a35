"""Layer 1 of inference: read and check a scan's files, then the training preprocessing.

Each file is read once with :func:`wmhseg.image_io.load_volume` (which catches missing, truncated,
corrupt and non-3-D files and repairs a minority of NaN voxels, reporting them as warnings); the
arrays then go through :func:`wmhseg.data.preprocessing.preprocess_transforms` without its own
loading step, so inference sees exactly the training geometry and intensities. Torch-light and
network-free: this runs in DataLoader workers.

Example:
    >>> prepared = prepare_scan("t1.nii.gz", "flair.nii.gz", PreprocessSpec())   # doctest: +SKIP
    >>> prepared.image.shape, prepared.shape                                     # doctest: +SKIP
    (torch.Size([2, 150, 182, 160]), (256, 256, 48))
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from wmhseg.data.preprocessing import PreprocessSpec, meta_tensor
from wmhseg.errors import ScanError
from wmhseg.image_io import load_nifti, load_volume
from wmhseg.input_checks import (
    coarse_voxels_warning,
    orientation_warning,
    swapped_contrast_warning,
    t1_coverage_warning,
)
from wmhseg.labels import LabelSpec

__all__ = ["PreparedScan", "prepare_scan", "preloaded_transforms"]


@dataclass
class PreparedScan:
    """Layer-1 output: the working-grid image and what export needs of the native FLAIR.

    Attributes:
        image: MetaTensor ``(2, X, Y, Z)`` [T1, FLAIR] on the working grid (``.affine`` in RAS mm).
        shape, affine: the native FLAIR grid.
        flair: the FLAIR path (its header is copied into the mask).
        flair_data: the native FLAIR's voxels (float32, non-finite values set to 0), which place
            the mask's boundary on the native grid.
        reference: the BISON label map on the native grid, when one was asked for.
        warnings: repaired problems (e.g. NaN voxels set to 0).
        alignment: the T1-to-FLAIR alignment columns (:meth:`wmhseg.registration.Alignment.record`),
            empty when ``register_t1`` is ``never``.
        t_load_s, t_preprocess_s: stage timings in seconds.
    """

    image: torch.Tensor
    shape: tuple[int, int, int]
    affine: np.ndarray
    flair: Path
    flair_data: np.ndarray | None = None
    reference: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)
    alignment: dict = field(default_factory=dict)
    t_load_s: float = 0.0
    t_preprocess_s: float = 0.0




def _check_image(data: np.ndarray, path: Path) -> None:
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        raise ScanError(f"{path}: the image is constant ({lo:g}); nothing to segment")


def preloaded_transforms(spec: PreprocessSpec) -> Callable[[dict], dict]:
    """The training preprocessing of ``spec`` for images already loaded as channel-first MetaTensors.

    :func:`prepare_scan` reads each file once with :func:`wmhseg.image_io.load_volume` (which catches
    truncated files and reports repaired NaNs), so the pipeline's own loading step is skipped.
    """
    from monai.transforms import Compose, LoadImaged

    from wmhseg.data import preprocessing

    pipeline = preprocessing.preprocess_transforms(spec, with_label=False)
    steps = list(pipeline.transforms)
    loaders = tuple(t for t in (LoadImaged, getattr(preprocessing, "LoadFilesd", None)) if t is not None)
    if not steps or not isinstance(steps[0], loaders):
        raise RuntimeError("preprocess_transforms() no longer starts with a loading step; "
                           "wmhseg.inference.predictor.preloaded_transforms must be updated")
    return Compose(steps[1:])


def _reference(label: Path, load: Callable[[], tuple[np.ndarray, np.ndarray]], flair: Path, shape: tuple[int, ...],
               affine: np.ndarray, label_spec: LabelSpec) -> tuple[np.ndarray | None, str | None]:
    """The reference label map, or ``(None, warning)`` when it cannot serve (the scan is still segmented)."""
    try:
        reference, label_affine = load()
    except ScanError as exc:
        return None, f"{exc}; no agreement metrics for this scan"
    problem = None
    if reference.shape != shape or not np.allclose(label_affine, affine, atol=1e-3):
        problem = f"the label is not on the FLAIR grid ({flair.name}): shape {reference.shape} vs {shape}"
    elif not np.all(np.isfinite(reference)):
        problem = "the label map holds NaN or infinite values"
    elif bad := label_spec.unknown_values(reference):
        problem = f"unknown label value(s) {bad[:8]}"
    if problem:
        return None, f"{label.name}: {problem}; no agreement metrics for this scan"
    return reference, None


def _input_warnings(t1: Path, flair: Path, t1_grid: tuple[tuple[int, ...], np.ndarray], flair_data: np.ndarray,
                    flair_affine: np.ndarray, spec: PreprocessSpec) -> list[str]:
    """Warnings about inputs that change the volume without failing: orientation, coverage, voxel size."""
    from wmhseg.data.preprocessing import head_mask

    found = [orientation_warning(t1), orientation_warning(flair),
             t1_coverage_warning(head_mask(flair_data, spec.head_threshold), flair_affine, *t1_grid, t1),
             coarse_voxels_warning(flair_affine, spec.spacing, flair), coarse_voxels_warning(t1_grid[1], spec.spacing, t1)]
    return [w for w in found if w]


def prepare_scan(t1: str | os.PathLike, flair: str | os.PathLike, spec: PreprocessSpec, *,
                 label: str | os.PathLike | None = None, label_spec: LabelSpec | None = None,
                 transforms: Callable[[dict], dict] | None = None) -> PreparedScan:
    """Layer 1: read, check and preprocess one T1w + FLAIR pair (and read its reference label).

    Args:
        t1, flair: NIfTI or MINC paths. T1 may lie on its own grid (resampled onto the FLAIR grid).
        spec: the checkpoint's preprocessing.
        label: optional BISON label map on the FLAIR grid (for metrics against the teacher).
        label_spec: known label values (default :class:`LabelSpec()`).
        transforms: the preprocessing pipeline for loaded images (default
            :func:`preloaded_transforms`); pass one to reuse it across scans.

    Warnings (``PreparedScan.warnings``, the scan is still segmented): repaired NaN voxels, an
    unusable reference label (off the FLAIR grid, unknown values, unreadable: ``reference`` is
    then ``None``), and the checks of :mod:`wmhseg.input_checks` (unknown orientation, partial
    T1 coverage, coarse voxels, swapped T1/FLAIR contrast).

    Raises:
        ScanError: missing, truncated or corrupt file, non-3-D data, an image with no finite or
            only constant voxels, the same image given as T1 and FLAIR; each names the file.
    """
    t0 = time.perf_counter()
    t1, flair = Path(t1), Path(flair)
    label = Path(label) if label is not None else None
    with ThreadPoolExecutor(max_workers=3) as pool:  # gzip decompression releases the GIL
        jobs = [pool.submit(load_volume, flair), pool.submit(load_volume, t1)]
        label_job = pool.submit(load_nifti, label) if label is not None else None
        (flair_data, flair_affine, warnings), (t1_data, t1_affine, t1_warnings) = (j.result() for j in jobs)
        if label_job is not None:
            reference, label_warning = _reference(label, label_job.result, flair, flair_data.shape, flair_affine,
                                                  label_spec or LabelSpec())
            warnings += [label_warning] if label_warning else []
        else:
            reference = None
    warnings += t1_warnings
    _check_image(flair_data, flair)
    _check_image(t1_data, t1)
    if t1_data.shape == flair_data.shape and np.array_equal(t1_data, flair_data):
        raise ScanError(f"{t1} and {flair.name}: T1 and FLAIR hold the same image; give the T1w and the FLAIR scans")
    warnings += _input_warnings(t1, flair, (t1_data.shape, t1_affine), flair_data, flair_affine, spec)
    t_load = time.perf_counter() - t0
    pipeline = transforms or preloaded_transforms(spec)
    try:
        out = pipeline({"t1": meta_tensor(t1_data, t1_affine, t1), "flair": meta_tensor(flair_data, flair_affine, flair)})
    except ScanError:
        raise
    except Exception as exc:  # MONAI wraps errors in RuntimeError; name the files
        cause = exc.__cause__ or exc
        raise ScanError(f"{flair} / {t1.name}: preprocessing failed ({type(cause).__name__}: {cause})") from exc
    working = np.asarray(out["image"])
    swapped = swapped_contrast_warning(working[0], working[1], t1, flair)
    return PreparedScan(image=out["image"], shape=tuple(flair_data.shape), affine=flair_affine, flair=flair,
                        flair_data=flair_data, reference=reference, warnings=warnings + ([swapped] if swapped else []),
                        alignment=out.get("t1_alignment", {}), t_load_s=t_load,
                        t_preprocess_s=time.perf_counter() - t0 - t_load)
