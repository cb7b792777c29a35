"""An independent family of brain phantoms, for validation only.

It shares no code with the training generator (:mod:`wmhseg.synth.images`,
:mod:`wmhseg.synth.anatomy`) nor with the training-time synthesis (:mod:`wmhseg.data.synthesis`);
a test enforces that it imports neither. Everything differs on purpose:

- **anatomy**: two hemispheres split by a midline fissure above the corpus callosum (joined below
  it), cortex and sulci from Gaussian-filtered white noise, C-shaped lateral ventricles swept
  along a curve plus a third ventricle, caudate and thalamus nuclei, cerebellum and brainstem;
  scalp fat, skull and meninges around it (not skull-stripped);
- **lesions**: periventricular caps at the ventricles' horns and bands along their bodies plus
  punctate and confluent deep lesions, as unions of ellipsoids clipped to the white matter;
- **contrast**: MR signal equations from tissue T1, T2 and proton density (inversion-recovery
  FLAIR, spoiled-gradient-echo T1w) with per-scan sequence timings and tissue-parameter jitter;
  lesions have longer T1 and T2;
- **acquisition**: each native voxel averages the 1 mm object over its footprint (thick 2-D
  FLAIR slices with partial volume), on grids that are axis-aligned, LPS or oblique; a
  polynomial bias field, Rician noise and an arbitrary gain; the T1 on its own 1 mm grid.

The label (BISON values 0-9, WMH = 9) is the majority class over each native voxel's footprint;
``wmh_mm3_true`` is the lesions' volume on the 1 mm object.

Example:
    >>> write_family("independent", n_subjects=4, seed=7)    # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from wmhseg.errors import InputError
from wmhseg.files import atomic_write_csv
from wmhseg.image_io import atomic_save_nifti
from wmhseg.parallel import process_map

__all__ = ["Phantom", "make_phantom", "write_family", "GRID_KINDS"]

GRID_KINDS = ("iso_ras", "thick_lps", "oblique", "thick_axial")
_F = np.float32
_FOV_MM = (164.0, 196.0, 164.0)  # the object's field of view
_VERSION = 2  # of the phantoms' definition: a finished set of another version is written again
# tissue index -> BISON label; 10 scalp fat, 11 skull, 12 meninges/extra CSF outside the brain
_BISON = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0, 2], dtype=np.uint8)
# T1 (ms), T2 (ms), PD at 3 T for tissue index 0..12 (air, ventricles, CSF, cb GM, cb WM, stem,
# deep GM, cortex, WM, WMH, fat, skull, meninges)
_T1 = np.array([1, 4000, 4000, 1400, 850, 1000, 1300, 1500, 830, 1300, 380, 300, 3000], _F)
_T2 = np.array([1, 1800, 1800, 95, 72, 75, 85, 100, 70, 130, 110, 30, 900], _F)
_PD = np.array([0, 1.0, 1.0, 0.82, 0.68, 0.72, 0.8, 0.85, 0.68, 0.82, 0.9, 0.12, 0.95], _F)


@dataclass
class Phantom:
    """One phantom scan: arrays on their own grids (FLAIR and label share one)."""

    t1: np.ndarray
    t1_affine: np.ndarray
    flair: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    wmh_mm3_true: float
    kind: str


def _smooth_noise(rng: np.random.Generator, shape, sigma_vox: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(_F), sigma_vox, mode="wrap")
    return field / (field.std() + 1e-8)


def _anatomy(rng: np.random.Generator, shape, mm: float) -> np.ndarray:
    """Tissue index per voxel of an object grid of ``mm`` voxels centred on the head."""
    c = (np.asarray(shape) - 1) / 2
    x, y, z = ((np.arange(n, dtype=_F) - ci) * mm for n, ci in zip(shape, c, strict=True))
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    ax = rng.uniform(64, 72), rng.uniform(82, 92), rng.uniform(62, 70)  # brain half-axes (mm)
    hemi = (np.maximum(np.abs(x) - 1.5, 0) / (ax[0] - 1.5)) ** 2 + (y / ax[1]) ** 2 + ((z - 8) / ax[2]) ** 2
    wobble = 0.05 * _smooth_noise(rng, shape, 6.0 / mm)
    # the interhemispheric fissure: above the corpus callosum (which arches over the ventricles,
    # whose roof is at about z = 21 - 10 (y/30)^2) and in front of and behind it; the callosum,
    # the diencephalon and the brainstem join the hemispheres below it
    split = (z > 26 - 10 * (y / 30) ** 2) | (np.abs(y) > 38)
    brain = (hemi + wobble < 1) & ~(split & (np.abs(x) < 0.6 + 0.8 * (z > 0)))
    head = ((x / (ax[0] + 14)) ** 2 + (y / (ax[1] + 14)) ** 2 + ((z - 4) / (ax[2] + 16)) ** 2) < 1
    skull = ((x / (ax[0] + 9)) ** 2 + (y / (ax[1] + 9)) ** 2 + ((z - 5) / (ax[2] + 10)) ** 2) < 1
    inner = ((x / (ax[0] + 4)) ** 2 + (y / (ax[1] + 4)) ** 2 + ((z - 6) / (ax[2] + 5)) ** 2) < 1
    tissue = np.zeros(shape, np.uint8)
    tissue[head], tissue[skull], tissue[inner] = 10, 11, 12
    depth = ndimage.distance_transform_edt(brain, sampling=mm)
    thick = rng.uniform(2.2, 3.2) + 0.6 * _smooth_noise(rng, shape, 4.0 / mm)
    tissue[brain] = 8
    tissue[brain & (depth < thick)] = 7
    sulci = brain & (depth < thick + 3) & (_smooth_noise(rng, shape, max(0.5, 1.5 / mm)) > 1.3)
    tissue[sulci] = 2
    # cerebellum and brainstem below the posterior brain
    cb = ((x / 48) ** 2 + ((y + 52) / 30) ** 2 + ((z + 34) / 22) ** 2) < 1
    tissue[cb & ~brain] = 3
    tissue[cb & ~brain & (((x / 30) ** 2 + ((y + 52) / 18) ** 2 + ((z + 34) / 12) ** 2) < 1)] = 4
    stem = ((x / 11) ** 2 + ((y + 22) / 13) ** 2 < 1) & (z < -8) & (z > -60)
    tissue[stem] = 5
    # deep grey nuclei, then C-shaped lateral ventricles and the third ventricle
    for side in (-1, 1):
        tissue[(((x - side * 14) / 7) ** 2 + ((y - 10) / 14) ** 2 + ((z - 10) / 9) ** 2) < 1] = 6
        tissue[(((x - side * 11) / 9) ** 2 + ((y + 12) / 13) ** 2 + ((z - 2) / 10) ** 2) < 1] = 6
    size = rng.uniform(0.8, 1.6)  # atrophy
    vent = np.zeros(shape, bool)
    for t in np.linspace(-1, 1, 41):
        cy, cz = 30 * t, 14 - 10 * t**2
        for side in (-1, 1):
            r = (3.0 + 2.5 * size * (1 - abs(t))) * (1.3 if abs(t) > 0.8 else 1.0)
            vent |= (((x - side * (7 + 2 * size)) / (r * 0.8)) ** 2 + ((y - cy) / 3.5) ** 2
                     + ((z - cz) / r) ** 2) < 1
    vent |= ((x / (1.2 * size)) ** 2 + ((y + 5) / 12) ** 2 + ((z - 2) / 6) ** 2) < 1
    tissue[vent & brain] = 1
    return tissue


def _lesions(rng: np.random.Generator, tissue: np.ndarray, mm: float) -> np.ndarray:
    """Boolean WMH mask inside the white matter: caps, bands and deep lesions."""
    shape = tissue.shape
    wm = tissue == 8
    vdist = ndimage.distance_transform_edt(tissue != 1, sampling=mm)
    idx = np.indices(shape, dtype=_F) * mm
    les = np.zeros(shape, bool)
    vent = np.argwhere(tissue == 1)
    load = rng.uniform(0.2, 1.0)
    if len(vent):
        ys = vent[:, 1]
        horns = np.concatenate([vent[ys <= np.percentile(ys, 4)], vent[ys >= np.percentile(ys, 96)]])
        for p in horns[rng.integers(0, len(horns), 2 + int(6 * load))]:
            r = rng.uniform(3, 6 + 6 * load, 3)
            les |= (((idx - mm * p[:, None, None, None]) / r[:, None, None, None]) ** 2).sum(0) < 1
        les |= (vdist < 1 + 5 * load * (0.5 + 0.5 * _smooth_noise(rng, shape, 5.0 / mm))) & (vdist > 0)
    wm_pts = np.argwhere(wm)
    for p in wm_pts[rng.integers(0, len(wm_pts), rng.poisson(4 + 20 * load))]:
        r = rng.uniform(1.2, 2.5 + 4 * load, 3)
        reach = int(np.ceil(7 / mm))
        lo, hi = np.maximum(p - reach, 0), np.minimum(p + reach + 1, shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        sub = idx[(slice(None), *box)]
        les[box] |= (((sub - mm * p[:, None, None, None]) / r[:, None, None, None]) ** 2).sum(0) < 1
    return les & wm


def _signals(rng: np.random.Generator, tissue: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """T1w (spoiled gradient echo) and FLAIR (inversion recovery) signal of each voxel."""
    jit = lambda a: a * rng.uniform(0.9, 1.1, a.size).astype(_F)  # noqa: E731
    t1, t2, pd = jit(_T1), jit(_T2), jit(_PD)
    tr, ti, te = rng.uniform(6000, 10000), rng.uniform(2200, 2800), rng.uniform(80, 130)
    null = 2500.0 * rng.uniform(0.95, 1.1)  # incompletely nulled CSF in some scans
    flair = pd * np.abs(1 - 2 * np.exp(-ti / np.maximum(t1, 1)) + np.exp(-tr / np.maximum(t1, 1))) * np.exp(-te / t2)
    flair[[1, 2, 12]] *= rng.uniform(0.05, 0.5) * null / 2500.0
    tr_g, alpha, te_g = rng.uniform(8, 25), np.deg2rad(rng.uniform(8, 30)), rng.uniform(2, 5)
    e1 = np.exp(-tr_g / np.maximum(t1, 1))
    t1w = pd * np.sin(alpha) * (1 - e1) / (1 - np.cos(alpha) * e1) * np.exp(-te_g / t2)
    return t1w.astype(_F)[tissue], flair.astype(_F)[tissue]


def _native_affine(kind: str, rng: np.random.Generator, fov_mm) -> tuple[np.ndarray, tuple[int, int, int]]:
    """FLAIR grid over the object's field of view (centred on 0)."""
    if kind == "iso_ras":
        spacing, rot = np.array([1.0, 1.0, 1.0]) * rng.uniform(1.0, 1.2), np.eye(3)
    elif kind == "thick_lps":
        spacing, rot = np.array([0.9, 0.9, 3.0]), np.diag([-1.0, -1.0, 1.0])
    elif kind == "thick_axial":
        spacing, rot = np.array([1.0, 1.0, rng.uniform(4.0, 5.0)]), np.eye(3)
    else:
        a, b = np.deg2rad(rng.uniform(10, 20, 2)) * rng.choice([-1, 1], 2)
        rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
        rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
        spacing, rot = np.array([1.2, 1.2, 1.2]), rz @ rx
    fov = np.asarray(fov_mm, float) * (1.0 if kind != "oblique" else 0.92)
    shape = tuple(int(np.ceil(f / s)) for f, s in zip(fov, spacing, strict=True))
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(spacing)
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2) + rng.uniform(-3, 3, 3)
    return affine, shape  # type: ignore[return-value]


def _acquire(obj: np.ndarray, obj_affine: np.ndarray, affine: np.ndarray, shape, *, order: int) -> np.ndarray:
    """Mean of ``obj`` over each native voxel's footprint (``order`` 0: per-sample values, stacked)."""
    m = np.linalg.inv(obj_affine) @ affine
    steps = [max(1, int(np.ceil(np.linalg.norm(m[:3, j]) - 1e-6))) for j in range(3)]
    offsets = np.stack(np.meshgrid(*[(np.arange(k) + 0.5) / k - 0.5 for k in steps], indexing="ij"), -1).reshape(-1, 3)
    idx = np.indices(shape, dtype=np.float64).reshape(3, -1)
    samples = []
    for off in offsets:
        coords = m[:3, :3] @ (idx + off[:, None]) + m[:3, 3:4]
        samples.append(ndimage.map_coordinates(obj, coords, order=order, mode="constant", cval=0).reshape(shape))
    return np.stack(samples) if order == 0 else np.mean(samples, axis=0)


def _scanner(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Polynomial bias field, gain and Rician noise."""
    u = [np.linspace(-1, 1, n)[tuple(slice(None) if a == i else None for a in range(3))] for i, n in enumerate(img.shape)]
    poly = sum(rng.uniform(-0.25, 0.25) * u[i] * (u[j] if j < 3 else 1) for i in range(3) for j in range(i, 4))
    gain = float(np.exp(rng.uniform(np.log(50), np.log(4000))))
    out = img * np.exp(poly) * gain
    sigma = rng.uniform(0.01, 0.04) * float(np.percentile(out, 99))
    return np.hypot(out + rng.normal(0, sigma, out.shape), rng.normal(0, sigma, out.shape)).astype(_F)


def make_phantom(seed: int, kind: str | None = None, voxel_mm: float = 1.0, spacing_scale: float = 1.0) -> Phantom:
    """One phantom.

    Args:
        seed: everything random (anatomy, lesions, contrast, grid, scanner).
        kind: the FLAIR grid, one of :data:`GRID_KINDS` (default drawn from ``seed``).
        voxel_mm: voxel size of the object the scans are acquired from (and of the T1 grid).
        spacing_scale: multiplies the FLAIR voxel sizes (coarse phantoms for tests).
    """
    rng = np.random.default_rng([int(seed), 77])
    kind = GRID_KINDS[int(rng.integers(len(GRID_KINDS)))] if kind is None else kind
    if kind not in GRID_KINDS:
        raise InputError(f"kind={kind!r} is not one of {GRID_KINDS}")
    obj_shape = tuple(int(np.ceil(f / voxel_mm)) for f in _FOV_MM)
    tissue = _anatomy(rng, obj_shape, voxel_mm)
    lesion = _lesions(rng, tissue, voxel_mm)
    tissue[lesion] = 9
    obj_affine = np.diag([voxel_mm] * 3 + [1.0])
    obj_affine[:3, 3] = -(np.asarray(obj_shape) - 1) / 2 * voxel_mm
    t1_obj, flair_obj = _signals(rng, tissue)
    affine, shape = _native_affine(kind, rng, np.asarray(obj_shape) * voxel_mm)
    affine[:3, :3] *= spacing_scale
    shape = tuple(int(np.ceil(n / spacing_scale)) for n in shape)
    flair = _scanner(rng, _acquire(flair_obj, obj_affine, affine, shape, order=1))
    votes = _BISON[_acquire(tissue, obj_affine, affine, shape, order=0)]
    counts = np.stack([(votes == v).sum(0) for v in range(10)])
    label = counts.argmax(0).astype(np.uint8)
    t1_affine = obj_affine.copy()
    t1 = _scanner(rng, t1_obj)
    return Phantom(t1=t1, t1_affine=t1_affine, flair=flair, label=label, affine=affine,
                   wmh_mm3_true=float(lesion.sum() * voxel_mm**3), kind=kind)


def write_family(out_dir: str | os.PathLike, n_subjects: int = 4, seed: int = 0, voxel_mm: float = 1.0,
                 spacing_scale: float = 1.0, workers: int | None = None) -> Path:
    """Write ``n_subjects`` phantoms (grid kinds in turn) and ``manifest.csv``; reuse a finished set.

    Files: ``<out_dir>/ind<NN>_{T1w,FLAIR,label}.nii.gz``; the manifest has the usual columns plus
    ``kind`` and ``wmh_mm3_true``. ``workers``: processes making phantoms in parallel (default: the
    usable cores); each phantom depends on its own seed alone, so the set does not change with it.
    Returns the manifest's path.
    """
    if int(n_subjects) < 1:
        raise InputError(f"n_subjects={n_subjects!r} must be >= 1")
    out = Path(out_dir)
    manifest = out / "manifest.csv"
    stamp = f"{_VERSION} {int(n_subjects)} {int(seed)} {voxel_mm} {spacing_scale}"
    if manifest.is_file() and (out / ".settings").is_file() and (out / ".settings").read_text() == stamp:
        return manifest
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), f"ind{i:02d}", int(seed) * 1000 + i, GRID_KINDS[i % len(GRID_KINDS)], voxel_mm, spacing_scale)
            for i in range(int(n_subjects))]
    rows = process_map(_write_phantom, jobs, workers)
    atomic_write_csv(manifest, pd.DataFrame(rows))
    (out / ".settings").write_text(stamp)
    return manifest


def _write_phantom(job: tuple[str, str, int, str, float, float]) -> dict[str, object]:
    """Make one phantom, write its three images, and return its manifest row."""
    out, sid, seed, kind, voxel_mm, spacing_scale = job
    p = make_phantom(seed, kind, voxel_mm, spacing_scale)
    paths = {k: Path(out) / f"{sid}_{k}.nii.gz" for k in ("T1w", "FLAIR", "label")}
    atomic_save_nifti(nib.Nifti1Image(p.t1, p.t1_affine), paths["T1w"])
    atomic_save_nifti(nib.Nifti1Image(p.flair, p.affine), paths["FLAIR"])
    atomic_save_nifti(nib.Nifti1Image(p.label, p.affine), paths["label"])
    return {"subject_id": sid, "session_id": "1", "t1": paths["T1w"].name, "flair": paths["FLAIR"].name,
            "label": paths["label"].name, "kind": p.kind, "wmh_mm3_true": round(p.wmh_mm3_true, 1)}
