"""Synthetic T1w/FLAIR scans with BISON-style label maps and white-matter hyperintensities.

A scan is rendered from a head anatomy (:mod:`wmhseg.synth.anatomy`: procedural, or the MNI152
templates nilearn ships) in four steps:

1. tissue classes on the FLAIR grid (BISON labels 0-8, plus scalp and skull as background);
2. WMH: a smooth lesion score inside the white matter (periventricular caps and bands, strongest
   at the ventricles' horns, plus deep blobs and, for heavy loads, confluent deep patches, with
   irregular borders); the WMH class (9) is the white-matter voxels of highest score in lesions of
   at least 30 mm^3, as many as make the requested volume, so the label's volume matches
   ``wmh_volume_mm3`` to within one voxel. The score depends on the subject only,
   so scans of one subject at growing volumes show nested, growing lesions;
3. intensities: tissue contrasts with per-scan jitter, WMH bright on FLAIR and darker on T1 with
   varying contrast, and FLAIR look-alikes that are not WMH (incompletely suppressed sulcal CSF,
   bright cortical patches, a thin bright ependymal rim); partial-volume blur, a smooth bias field,
   a gamma change, a scanner gain and Rician noise;
4. geometry: any voxel size, a head pose (small rotations), any axis orientation (e.g. ``"LPS"``)
   and origin; the T1 may lie on its own grid (``t1_spacing``), as in real acquisitions.

numpy + scipy + nibabel only. Everything is seeded: ``subject_seed`` fixes the anatomy and lesion
pattern, ``seed`` the acquisition (pose, contrast, bias, noise).

Example:
    >>> scan = generate_subject(shape=(32, 32, 32), seed=1, wmh_volume_mm3=300.0)
    >>> scan.label.shape, abs(scan.wmh_mm3 - 300.0) <= 1.0
    ((32, 32, 32), True)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from wmhseg.errors import InputError
from wmhseg.files import atomic_write_csv, atomic_write_text
from wmhseg.ids import check_safe_id
from wmhseg.image_io import atomic_save_nifti
from wmhseg.parallel import process_map
from wmhseg.synth.anatomy import (
    SCALP,
    Grid,
    MNIHead,
    Noise,
    Pose,
    ProceduralHead,
    rotation_matrix,
    smooth_field,
)
from wmhseg.synth.lesions import LesionCut, lesion_score

__all__ = ["SyntheticScan", "generate_subject", "write_scan", "write_dataset"]

_F = np.float32
_ANATOMIES = ("procedural", "mni")
# Relative tissue intensities (white matter = 1 on T1), indexed by tissue code 0..11.
_T1 = np.array([0, 0.15, 0.2, 0.6, 0.92, 0.85, 0.7, 0.58, 1.0, 0, 0.85, 0.08], dtype=_F)
_FLAIR = np.array([0, 0.08, 0.14, 0.8, 0.62, 0.66, 0.72, 0.8, 0.6, 0, 0.6, 0.05], dtype=_F)
_MNI_CENTRE = (0.0, -18.0, 18.0)


@dataclass
class SyntheticScan:
    """A generated scan: arrays in the stored (possibly non-RAS) orientation.

    Attributes:
        t1, flair: float32 intensities; ``t1`` lies on ``t1_affine``'s grid.
        label: uint8 BISON labels 0-9 on the FLAIR grid.
        affine: voxel-to-world (RAS mm) affine of the FLAIR and label.
        t1_affine: affine of the T1 (equal to ``affine`` unless ``t1_spacing`` was given).
        wmh_mm3: WMH volume of ``label`` (voxels of class 9 x voxel volume).
    """

    t1: np.ndarray
    flair: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    t1_affine: np.ndarray
    wmh_mm3: float


def _check_args(shape, spacing, anatomy, orientation, wmh_volume_mm3) -> None:
    if anatomy not in _ANATOMIES:
        raise InputError(f"anatomy={anatomy!r} is not one of {_ANATOMIES}")
    if len(shape) != 3 or min(shape) < 8:
        raise InputError(f"shape={tuple(shape)!r} must be three sizes >= 8")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise InputError(f"spacing={tuple(spacing)!r} must be three positive voxel sizes (mm)")
    try:
        nib.orientations.axcodes2ornt(tuple(orientation))
    except Exception as exc:
        raise InputError(f"orientation={orientation!r} is not three axis codes such as 'RAS' or 'LPS'") from exc
    if wmh_volume_mm3 is not None and not (np.isfinite(wmh_volume_mm3) and wmh_volume_mm3 >= 0):
        raise InputError(f"wmh_volume_mm3={wmh_volume_mm3!r} must be a finite number >= 0")


def _render(codes, lesion, core, grid, pose, acq: np.random.Generator, *, contrast_jitter, bias_field, noise,
            protocol: np.random.Generator | None = None, session_jitter: float = 0.0):
    """T1 and FLAIR intensities of tissue ``codes`` with WMH ``lesion`` (bool) of strength ``core``.

    ``protocol`` draws what a scanner's protocol fixes (tissue and lesion contrasts, gamma, gain,
    noise level; default ``acq``, i.e. every scan its own protocol), ``acq`` what changes from one
    session to the next (look-alikes, bias field, the noise itself, and with ``session_jitter`` a
    small jitter of the protocol's tissue intensities)."""
    proto = acq if protocol is None else protocol
    jit = lambda n: proto.uniform(1 - contrast_jitter, 1 + contrast_jitter, n).astype(_F)  # noqa: E731
    t1_levels, flair_levels = _T1 * jit(_T1.size), _FLAIR * jit(_FLAIR.size)
    # Lesions: bright on FLAIR, darker on T1, strength varying within and between lesions.
    cf, ct = proto.uniform(0.45, 1.0), proto.uniform(0.12, 0.35)
    # without a protocol the gammas are drawn below, between the look-alikes and the bias field, as
    # they always were, so that a scan of a given seed stays the same
    gammas = proto.uniform(1 - contrast_jitter, 1 + contrast_jitter, 2) if protocol is not None else None
    if protocol is not None and session_jitter > 0:
        t1_levels = t1_levels * acq.uniform(1 - session_jitter, 1 + session_jitter, _T1.size).astype(_F)
        flair_levels = flair_levels * acq.uniform(1 - session_jitter, 1 + session_jitter, _FLAIR.size).astype(_F)
    t1, flair = t1_levels[codes], flair_levels[codes]
    lesion_level = float(np.median(flair[codes == 8])) * (1 + cf) if (codes == 8).any() else 1.0
    if lesion.any():
        flair[lesion] *= 1 + cf * core
        t1[lesion] *= 1 - ct * core
    # FLAIR look-alikes that are not WMH, about as bright as lesions: incompletely suppressed
    # sulcal CSF and bright cortical patches.
    csf_flow = smooth_field(Noise(acq, 12.0), pose, grid)
    flow = (codes == 2) & (csf_flow > 0.8)
    flair[flow] = np.maximum(flair[flow], _F(lesion_level * acq.uniform(0.9, 1.25)))
    ctx = smooth_field(Noise(acq, 10.0), pose, grid)
    bright = (codes == 7) & (ctx > 0.9)
    flair[bright] = np.maximum(flair[bright], _F(lesion_level * acq.uniform(0.9, 1.2)))
    blur = 0.5 / np.asarray(grid.spacing) * min(grid.spacing)
    out = []
    for k, (img, base_gain) in enumerate(((t1, (300, 1500)), (flair, (200, 1200)))):
        img = ndimage.gaussian_filter(img, blur, mode="nearest")
        gamma = acq.uniform(1 - contrast_jitter, 1 + contrast_jitter) if gammas is None else gammas[k]
        img = np.power(np.clip(img, 0, None), _F(gamma))
        if bias_field > 0:
            img *= np.exp(_F(bias_field * acq.uniform(0.5, 1.0)) * smooth_field(Noise(acq, 250.0, 6), pose, grid))
        gain = _F(proto.uniform(*base_gain))
        sigma = _F(noise * proto.uniform(0.5, 1.0))
        img = img * gain
        if sigma > 0:
            n1 = acq.standard_normal(img.shape, dtype=_F) * sigma * gain
            n2 = acq.standard_normal(img.shape, dtype=_F) * sigma * gain
            img = np.sqrt((img + n1) ** 2 + n2**2)
        out.append(img.astype(_F))
    return out


def _reorient(arr: np.ndarray, affine: np.ndarray, orientation: str) -> tuple[np.ndarray, np.ndarray]:
    if tuple(orientation.upper()) == ("R", "A", "S"):
        return arr, affine
    t = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")),
                                        nib.orientations.axcodes2ornt(tuple(orientation.upper())))
    return (np.ascontiguousarray(nib.orientations.apply_orientation(arr, t)),
            affine @ nib.orientations.inv_ornt_aff(t, arr.shape))


def generate_subject(
    shape: Sequence[int] = (32, 32, 32),
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    seed: int = 0,
    wmh_volume_mm3: float | None = None,
    anatomy: str = "procedural",
    *,
    subject_seed: int | None = None,
    orientation: str = "RAS",
    centre_mm: Sequence[float] | None = None,
    rotation_deg: float = 0.0,
    t1_spacing: Sequence[float] | None = None,
    contrast_jitter: float = 0.1,
    bias_field: float = 0.2,
    noise: float = 0.03,
    protocol_seed: int | None = None,
    session_jitter: float = 0.0,
) -> SyntheticScan:
    """Generate one synthetic T1w/FLAIR scan with a BISON-style label map.

    Args:
        shape: FLAIR grid size in RAS order (x, y, z), before reorientation. With
            ``anatomy="mni"`` the default ``(32, 32, 32)`` means "cover the template": the grid
            then spans the MNI152 field of view at ``spacing``.
        spacing: FLAIR voxel size in mm (x, y, z); anisotropic sizes allowed.
        seed: acquisition seed (pose, contrasts, bias field, noise).
        wmh_volume_mm3: requested WMH volume; the label's volume is within one voxel of it.
            ``None`` draws 0.2-4 % of the white matter. At most 60 % of the white matter.
        anatomy: ``"procedural"`` (the head fills the grid's field of view) or ``"mni"``
            (nilearn's MNI152 templates at 1 mm, or 2 mm when every voxel size is >= 2 mm).
        subject_seed: anatomy and lesion-pattern seed (default ``seed``); keep it fixed across
            the sessions of one subject.
        orientation: axis codes of the stored arrays, e.g. ``"RAS"``, ``"LPS"``, ``"PSR"``.
        centre_mm: world coordinate of the head centre (default 0, or the MNI brain centre).
        rotation_deg: head tilt; each axis is rotated by a random angle in +-``rotation_deg``.
        t1_spacing: voxel size of a separate T1 grid covering the same field of view.
        contrast_jitter: relative per-scan jitter of tissue intensities and gamma (0-0.5).
        bias_field: strength of the smooth multiplicative bias field (0 = none).
        noise: Rician noise level relative to the white-matter intensity.
        protocol_seed: seed of the scanner protocol: tissue and lesion contrasts, gamma, gain and
            noise level. Visits of one subject on one scanner share it, and then differ only by
            what changes between sessions (pose, look-alikes, bias field, noise, and
            ``session_jitter``). Default: none, every scan draws its own protocol from ``seed``.
        session_jitter: with ``protocol_seed``, relative jitter of the protocol's tissue
            intensities from one session to the next (0-0.5).

    Returns:
        :class:`SyntheticScan`.

    Raises:
        InputError: a bad argument, or a WMH volume the white matter cannot hold.
    """
    _check_args(shape, spacing, anatomy, orientation, wmh_volume_mm3)
    for name, value in (("contrast_jitter", contrast_jitter), ("session_jitter", session_jitter)):
        if not 0 <= value <= 0.5:
            raise InputError(f"{name}={value!r} must be within [0, 0.5]")
    subject_seed = seed if subject_seed is None else subject_seed
    anat_rng = np.random.default_rng([int(subject_seed), 1])
    acq = np.random.default_rng([int(seed), 2])
    rot = rotation_matrix(acq.uniform(-rotation_deg, rotation_deg, 3)) if rotation_deg else np.eye(3)
    head, shape, centre, grid_centre = _head(anatomy, shape, spacing, centre_mm, anat_rng)
    pose = Pose(rot, centre)
    grid = Grid.centred(shape, spacing, grid_centre)
    codes, vdist, horn = head.sample(grid, pose)
    score = lesion_score(codes, vdist, horn, pose, grid, head, [int(subject_seed), 3])
    voxel_mm3 = float(np.prod(grid.spacing))
    cut = LesionCut.for_volume(score, codes == 8, voxel_mm3, wmh_volume_mm3, acq, grid)
    lesion, core = cut.lesions(codes, score, voxel_mm3)
    label = np.where(codes >= SCALP, 0, codes).astype(np.uint8)
    label[lesion] = 9
    kw = dict(contrast_jitter=contrast_jitter, bias_field=bias_field, noise=noise, session_jitter=session_jitter)

    def protocol() -> np.random.Generator | None:  # a fresh draw of the same protocol for each render
        return None if protocol_seed is None else np.random.default_rng([int(protocol_seed), 4])

    t1, flair = _render(codes, lesion, core, grid, pose, acq, protocol=protocol(), **kw)
    t1_affine = grid.affine
    if t1_spacing is not None:  # the same head and lesions sampled on the T1's own grid
        t1_grid = Grid.centred([max(8, int(round(f / s))) for f, s in zip(grid.fov, t1_spacing, strict=True)],
                               t1_spacing, grid_centre)
        codes_t1, vd_t1, horn_t1 = head.sample(t1_grid, pose)
        les_t1, core_t1 = cut.lesions(codes_t1, lesion_score(codes_t1, vd_t1, horn_t1, pose, t1_grid, head,
                                                             [int(subject_seed), 3]), float(np.prod(t1_grid.spacing)))
        t1, _ = _render(codes_t1, les_t1, core_t1, t1_grid, pose, np.random.default_rng([int(seed), 2]),
                        protocol=protocol(), **kw)
        t1_affine = t1_grid.affine
    flair, affine = _reorient(flair, grid.affine, orientation)
    label, _ = _reorient(label, grid.affine, orientation)
    t1, t1_affine = _reorient(t1, t1_affine, orientation)
    return SyntheticScan(t1=t1, flair=flair, label=label, affine=affine, t1_affine=t1_affine,
                         wmh_mm3=float(lesion.sum() * voxel_mm3))


def _head(anatomy: str, shape: Sequence[int], spacing: Sequence[float], centre_mm: Sequence[float] | None,
          anat_rng: np.random.Generator) -> tuple[Any, tuple[int, ...], np.ndarray, np.ndarray]:
    """``(head, shape, head centre, grid centre)``: the anatomy model and the grid it is sampled on."""
    shape = tuple(shape)
    if anatomy == "mni":
        resolution = 2 if min(spacing) >= 2 else 1
        head: Any = MNIHead(anat_rng, resolution)
        centre = np.asarray(centre_mm if centre_mm is not None else (0.0, 0.0, 0.0), dtype=float)
        grid_centre = np.asarray(_MNI_CENTRE) + centre
        if shape == (32, 32, 32):
            shape = tuple(int(np.ceil(f / s)) for f, s in zip((197, 233, 189), spacing, strict=True))
        return head, shape, centre, grid_centre
    grid_centre = np.asarray(centre_mm if centre_mm is not None else (0.0, 0.0, 0.0), dtype=float)
    fov = np.asarray(shape) * np.asarray(spacing)
    head = ProceduralHead(anat_rng, 0.46 * fov * anat_rng.uniform(0.93, 1.02, 3))
    return head, shape, grid_centre, grid_centre


def write_scan(
    out_dir: str | os.PathLike,
    subject_id: str,
    session_id: str,
    wmh_volume_mm3: float | None = None,
    seed: int = 0,
    *,
    compress: bool = True,
    **generate_kw: Any,
) -> dict[str, Any]:
    """Generate one scan and write it BIDS-style under ``out_dir``.

    Files: ``sub-<subject>/ses-<session>/anat/sub-<subject>_ses-<session>_{T1w,FLAIR,label}.nii[.gz]``
    (IDs that already start with ``sub-``/``ses-`` are not prefixed twice)
    (so ``out_dir`` also reads as a BIDS folder). ``generate_kw`` go to :func:`generate_subject`
    (pass ``subject_seed`` to keep one anatomy across a subject's sessions).

    Returns:
        ``{"subject_id", "session_id", "t1", "flair", "label" (Paths), "wmh_mm3" (true volume)}``.
    """
    subject_id = check_safe_id(str(subject_id), name="subject_id")
    session_id = check_safe_id(str(session_id), name="session_id")
    scan = generate_subject(seed=seed, wmh_volume_mm3=wmh_volume_mm3, **generate_kw)
    sub = subject_id if subject_id.startswith("sub-") else f"sub-{subject_id}"
    ses = session_id if session_id.startswith("ses-") else f"ses-{session_id}"
    stem = f"{sub}_{ses}"
    folder = Path(out_dir) / sub / ses / "anat"
    ext = ".nii.gz" if compress else ".nii"
    paths = {k: folder / f"{stem}_{name}{ext}" for k, name in (("t1", "T1w"), ("flair", "FLAIR"), ("label", "label"))}
    atomic_save_nifti(nib.Nifti1Image(scan.t1, scan.t1_affine), paths["t1"])
    atomic_save_nifti(nib.Nifti1Image(scan.flair, scan.affine), paths["flair"])
    atomic_save_nifti(nib.Nifti1Image(scan.label, scan.affine), paths["label"])
    return {"subject_id": subject_id, "session_id": session_id, **paths, "wmh_mm3": scan.wmh_mm3}


def write_dataset(
    out_dir: str | os.PathLike,
    n_subjects: int = 4,
    n_sessions: int = 1,
    shape: Sequence[int] = (32, 32, 32),
    seed: int = 0,
    anatomy: str = "procedural",
    *,
    wmh_volume_mm3: float | Sequence[float] | None = None,
    growth_per_session: float = 0.2,
    overwrite: bool = False,
    compress: bool = True,
    workers: int | None = None,
    **generate_kw: Any,
) -> Path:
    """Write ``n_subjects`` x ``n_sessions`` synthetic scans and ``out_dir/manifest.csv``.

    Subject IDs are zero-padded strings (``"001"``), session IDs ``"01"``, ``"02"``, ... A
    subject keeps its anatomy and lesion pattern across sessions; its WMH volume grows by
    ``growth_per_session`` (relative) per session, so lesions grow in place.

    Args:
        out_dir: destination folder (created).
        n_subjects, n_sessions: cohort size (>= 1).
        shape, seed, anatomy: see :func:`generate_subject`.
        wmh_volume_mm3: baseline WMH volume: a number, a ``(low, high)`` range drawn per subject
            (log-uniform), or ``None`` (drawn by :func:`generate_subject`).
        overwrite: regenerate even when ``out_dir`` already holds a dataset written with the
            same arguments (recorded in ``synthetic.json``); otherwise that one is reused.
        compress: write ``.nii.gz`` (else ``.nii``).
        workers: processes writing subjects in parallel (default: the usable cores); the
            dataset does not depend on it.
        **generate_kw: more :func:`generate_subject` options (spacing, orientation, ...).

    Returns:
        Path of the manifest (columns ``subject_id,session_id,t1,flair,label,wmh_mm3``,
        paths relative to ``out_dir``).

    Example:
        >>> manifest = write_dataset(tmp_path, n_subjects=4, n_sessions=2)   # doctest: +SKIP
    """
    if int(n_subjects) < 1 or int(n_sessions) < 1:
        raise InputError(f"n_subjects={n_subjects!r} and n_sessions={n_sessions!r} must be >= 1")
    out_dir = Path(out_dir)
    manifest = out_dir / "manifest.csv"
    settings = dict(n_subjects=int(n_subjects), n_sessions=int(n_sessions), shape=[int(s) for s in shape],
                    seed=int(seed), anatomy=anatomy, wmh_volume_mm3=wmh_volume_mm3,
                    growth_per_session=growth_per_session, compress=compress, **generate_kw)
    settings_text = json.dumps(settings, sort_keys=True, default=str)
    record = out_dir / "synthetic.json"
    if not overwrite and manifest.is_file() and record.is_file() and record.read_text() == settings_text:
        return manifest
    rng = np.random.default_rng([int(seed), 7])
    width = max(3, len(str(n_subjects)))
    scan_kw = dict(shape=shape, anatomy=anatomy, compress=compress, **generate_kw)
    jobs = [(str(out_dir), str(s + 1).zfill(width), int(seed) * 100_003 + s, _baseline_volume(wmh_volume_mm3, rng),
             int(n_sessions), growth_per_session, scan_kw) for s in range(int(n_subjects))]
    rows = [row for subject in process_map(_write_subject, jobs, workers) for row in subject]
    atomic_write_csv(manifest, pd.DataFrame(rows, columns=["subject_id", "session_id", "t1", "flair", "label", "wmh_mm3"]))
    atomic_write_text(record, settings_text)
    return manifest


def _write_subject(job: tuple[str, str, int, float | None, int, float, dict[str, Any]]) -> list[dict[str, Any]]:
    """Write one subject's sessions (its WMH growing by ``growth`` per session); their manifest rows."""
    out_dir, subject_id, subject_seed, base, n_sessions, growth, scan_kw = job
    rows: list[dict[str, Any]] = []
    for t in range(n_sessions):
        volume = None if base is None else float(base) * (1 + growth) ** t
        if base is None and t > 0:
            volume = rows[-1]["wmh_mm3"] * (1 + growth)
        info = write_scan(out_dir, subject_id, f"{t + 1:02d}", volume, seed=subject_seed * 31 + t,
                          subject_seed=subject_seed, **scan_kw)
        rows.append({k: (str(Path(v).relative_to(out_dir)) if isinstance(v, Path) else v) for k, v in info.items()})
    return rows


def _baseline_volume(wmh_volume_mm3: float | Sequence[float] | None, rng: np.random.Generator) -> float | None:
    """A subject's baseline WMH volume: the number given, log-uniform in a ``(low, high)`` range, or ``None``."""
    if wmh_volume_mm3 is None or np.isscalar(wmh_volume_mm3):
        return wmh_volume_mm3  # type: ignore[return-value]
    lo, hi = (float(v) for v in wmh_volume_mm3)  # type: ignore[union-attr]
    return float(np.exp(rng.uniform(np.log(max(lo, 1e-3)), np.log(max(hi, 1e-3)))))
