"""Head anatomies for synthetic scans: tissue codes and periventricular distance on any grid.

Two anatomies share one interface (:meth:`sample` on a canonical grid under a head pose):

* :class:`ProceduralHead`: ellipsoidal head, skull, CSF, folded cortex, two hemispheres (a CSF
  fissure lined by medial cortex above the corpus callosum), lateral ventricles, deep grey matter,
  cerebellum and brainstem, defined analytically in a head frame, so any grid
  (any size, voxel size or pose) can be rendered in milliseconds for small grids.
* :class:`MNIHead`: tissue classes derived from the MNI152 2009 templates that nilearn ships
  (grey/white-matter probability maps and brain mask; offline), resampled under the pose.

Tissue codes are the BISON labels 0-8 (no WMH yet) plus :data:`SCALP` and :data:`SKULL`, which
are background (0) in the label map. numpy + scipy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

__all__ = ["SCALP", "SKULL", "Grid", "Pose", "Noise", "ProceduralHead", "MNIHead", "smooth_field"]

SCALP, SKULL = 10, 11
_F = np.float32


@dataclass(frozen=True)
class Grid:
    """A canonical (RAS, axis-aligned) voxel grid: ``world = origin + spacing * index``."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]  # world coordinate (mm) of voxel (0, 0, 0)

    @classmethod
    def centred(cls, shape, spacing, centre=(0.0, 0.0, 0.0)) -> Grid:
        shape = tuple(int(s) for s in shape)
        spacing = tuple(float(s) for s in spacing)
        origin = tuple(float(c) - (n - 1) / 2 * s for c, n, s in zip(centre, shape, spacing, strict=True))
        return cls(shape, spacing, origin)  # type: ignore[arg-type]

    @property
    def affine(self) -> np.ndarray:
        aff = np.diag([*self.spacing, 1.0])
        aff[:3, 3] = self.origin
        return aff

    @property
    def fov(self) -> np.ndarray:
        return np.asarray(self.shape) * np.asarray(self.spacing)

    def axes(self, stride: int = 1) -> list[np.ndarray]:
        """World coordinates along each axis; with ``stride`` > 1, a coarse lattice that
        includes both end voxels (so :func:`smooth_field` can zoom it back exactly)."""
        out = []
        for n, s, o in zip(self.shape, self.spacing, self.origin, strict=True):
            idx = np.linspace(0, n - 1, max(2, int(np.ceil((n - 1) / stride)) + 1)) if stride > 1 else np.arange(n)
            out.append((o + s * idx).astype(_F))
        return out


@dataclass(frozen=True)
class Pose:
    """Where the head sits in the scanner: ``world = rotation @ head_mm + centre``."""

    rotation: np.ndarray
    centre: np.ndarray

    def head_coords(self, grid: Grid, stride: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Head-frame mm coordinates of every (or every ``stride``-th) voxel of ``grid``."""
        ax = [a - c for a, c in zip(grid.axes(stride), self.centre.astype(_F), strict=True)]
        x, y, z = ax[0][:, None, None], ax[1][None, :, None], ax[2][None, None, :]
        r = self.rotation.astype(_F)  # head = R^T (world - centre)
        return tuple(r[0, i] * x + r[1, i] * y + r[2, i] * z for i in range(3))  # type: ignore[return-value]


def rotation_matrix(angles_deg) -> np.ndarray:
    """Rotation about x, then y, then z (degrees)."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


class Noise:
    """A smooth random field (sum of random cosines, unit variance); wavelengths ~``scale_mm``."""

    def __init__(self, rng: np.random.Generator, scale_mm: float, n_terms: int = 10):
        self.w = (rng.normal(size=(n_terms, 3)) * (2 * np.pi / scale_mm)).astype(_F)
        self.phase = rng.uniform(0, 2 * np.pi, n_terms).astype(_F)
        self.norm = _F(np.sqrt(2.0 / n_terms))
        self.scale_mm = float(scale_mm)

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), dtype=_F)
        for (a, b, c), p in zip(self.w, self.phase, strict=True):
            out += np.cos(a * x + b * y + c * z + p)
        return out * self.norm


def _upsample_linear(coarse: np.ndarray, shape) -> np.ndarray:
    """Separable linear interpolation from a lattice that includes both end voxels to ``shape``."""
    out = coarse
    for axis, n in enumerate(shape):
        m = out.shape[axis]
        if m == n:
            continue
        pos = np.linspace(0, m - 1, n)
        i0 = np.minimum(pos.astype(np.int64), m - 2)
        w = (pos - i0).astype(_F).reshape([-1 if a == axis else 1 for a in range(out.ndim)])
        out = np.take(out, i0, axis=axis) * (1 - w) + np.take(out, i0 + 1, axis=axis) * w
    return out.astype(_F, copy=False)


def smooth_field(noise: Noise, pose: Pose, grid: Grid) -> np.ndarray:
    """Evaluate ``noise`` (head frame) on ``grid`` at a coarse lattice and interpolate linearly."""
    stride = max(1, int(round(noise.scale_mm / 4.0 / max(grid.spacing))))
    coarse = noise(*pose.head_coords(grid, stride))
    return _upsample_linear(coarse, grid.shape)


def _ellipsoid(x, y, z, c, r) -> np.ndarray:
    return np.sqrt(((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2)


class ProceduralHead:
    """An analytic head whose size is ``radii_mm`` (half-axes of the scalp surface, x/y/z).

    Subject-level randomness (drawn from ``rng``): ventricle size (atrophy), cortical thickness
    and folding, brain shape, the fissure's width and the corpus callosum's thickness.
    """

    def __init__(self, rng: np.random.Generator, radii_mm):
        self.radii = np.asarray(radii_mm, dtype=_F)
        self.rmean = float(np.cbrt(np.prod(self.radii)))
        self.vscale = float(rng.uniform(0.8, 1.7))
        self.cortex = float(rng.uniform(0.06, 0.085))
        self.surface = Noise(rng, 0.6 * self.rmean)
        self.folds = Noise(rng, 0.25 * self.rmean, 14)
        self.sulci = Noise(rng, 0.2 * self.rmean, 14)
        self.lesion_scale = max(1.0, self.rmean / 75.0)
        # interhemispheric fissure: half-width (mm) and corpus callosum thickness (radius units)
        self.fissure_mm = float(rng.uniform(0.6, 2.0))
        self.callosum = float(rng.uniform(0.05, 0.1))

    def _ventricle_frame(self, uy):
        """The lateral ventricles' half-axes (radius units), and the front-back offset and height of
        their centre line at ``uy``."""
        v = self.vscale
        r = (0.045 * v, 0.30 * (0.9 + 0.1 * v), 0.08 * np.sqrt(v))
        dy = uy + 0.03
        return r, dy, 0.13 - 0.6 * dy**2

    def _ventricles(self, ux, uz, frame):
        r, dy, cz = frame
        ev = np.minimum(_ellipsoid(ux, dy, uz - cz, (0.09, 0, 0), r), _ellipsoid(ux, dy, uz - cz, (-0.09, 0, 0), r))
        horn = np.clip(np.abs(dy) / r[1], 0, 1.5)
        scale_mm = float(np.cbrt(np.prod(r))) * self.rmean
        return ev, horn, scale_mm

    def _classify(self, hx, hy, hz, surf, fold, sulci):
        ux, uy, uz = hx / self.radii[0], hy / self.radii[1], hz / self.radii[2]
        r = np.sqrt(ux**2 + uy**2 + uz**2)
        rb = 0.80 + 0.015 * surf
        codes = np.zeros(r.shape, dtype=np.uint8)
        codes[r < 1.0] = SCALP
        codes[r < 0.92] = SKULL
        codes[r < 0.86] = 2
        brain = r < rb
        inner = rb - self.cortex * (1.0 + 0.45 * fold)
        codes[brain] = 7
        codes[brain & (r < inner)] = 8
        codes[brain & (r > inner - 0.02) & (sulci > 0.9)] = 2
        frame = self._ventricle_frame(uy)  # shared by the fissure's lower edge and the ventricles
        self._hemispheres(codes, brain, hx, uz, fold, sulci, frame)
        codes[(_ellipsoid(ux, uy, uz, (0.2, -0.03, 0.02), (0.08, 0.15, 0.09)) < 1)
              | (_ellipsoid(ux, uy, uz, (-0.2, -0.03, 0.02), (0.08, 0.15, 0.09)) < 1)] = 6
        ev, horn, vmm = self._ventricles(ux, uz, frame)
        codes[ev < 1] = 1
        cb = _ellipsoid(ux, uy, uz, (0.0, -0.45, -0.5), (0.45, 0.26, 0.2))
        in_cb = (cb < 1) & brain
        codes[in_cb] = 3
        codes[in_cb & (cb < 0.6)] = 4
        codes[in_cb & (cb >= 0.6) & (sulci > 1.1)] = 2
        stem = (((ux / 0.08) ** 2 + ((uy + 0.12) / 0.09) ** 2) < 1) & (uz < -0.12) & brain
        codes[stem] = 5
        return codes, ((ev - 1.0) * vmm).astype(_F), horn.astype(_F)

    def _hemispheres(self, codes, brain, hx, uz, fold, sulci, frame) -> None:
        """Split the cerebrum at the midline: a CSF fissure lined by medial cortex (and its sulci)
        above the corpus callosum, and down to the base in front of and behind it."""
        r, dy, cz = frame
        callosum_top = cz + r[2] + self.callosum  # above the ventricles' roof
        split = brain & ((uz > callosum_top) | (np.abs(dy) > r[1] + 0.06))
        ribbon = self.cortex * self.rmean * (1.0 + 0.45 * fold)  # medial cortex thickness (mm)
        side = np.abs(hx)
        codes[split & (side < self.fissure_mm + ribbon) & (codes == 8)] = 7
        codes[split & (side < self.fissure_mm + ribbon + 2.0) & (codes == 7) & (sulci > 0.9)] = 2
        codes[split & (side < self.fissure_mm)] = 2

    def sample(self, grid: Grid, pose: Pose) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(codes uint8, ventricle distance mm float32, horn factor float32)`` on ``grid``."""
        fields = [smooth_field(n, pose, grid) for n in (self.surface, self.folds, self.sulci)]
        return self._classify(*pose.head_coords(grid), *fields)

    def wm_points(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` random white-matter points (head frame, mm), independent of any grid."""
        found: list[np.ndarray] = []
        for _ in range(20):
            p = rng.uniform(-0.7, 0.7, (max(64, 8 * n), 3)).astype(_F) * self.radii
            h = [p[:, i] for i in range(3)]
            codes, _, _ = self._classify(*h, *(f(*h) for f in (self.surface, self.folds, self.sulci)))
            found.append(p[codes == 8])
            if sum(len(f) for f in found) >= n:
                break
        pts = np.concatenate(found)
        return pts[:n] if len(pts) else np.zeros((0, 3), _F)


@lru_cache(maxsize=2)
def _mni_maps(resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Template tissue codes, ventricle distance (mm) and affine at 1 or 2 mm (cached)."""
    from nilearn import datasets  # imported here: slow to import, needed only for this anatomy

    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).get_fdata(), dtype=_F)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).get_fdata(), dtype=_F)
    mask_img = datasets.load_mni152_brain_mask(resolution=1)
    mask = np.asarray(mask_img.get_fdata(), dtype=_F)
    affine = np.asarray(mask_img.affine, dtype=float)
    if resolution == 2:  # 2x2x2 block means of the 1 mm maps
        def down(a):
            a = np.pad(a, [(0, s % 2) for s in a.shape], mode="edge")
            return a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2, a.shape[2] // 2, 2).mean((1, 3, 5))

        gm, wm, mask = down(gm), down(wm), down(mask)
        affine = affine @ np.diag([2.0, 2.0, 2.0, 1.0])
        affine[:3, 3] += 0.5 * np.diag(affine)[:3] / 2
    sp = float(resolution)
    brain = mask > 0.5
    csf = np.clip(1.0 - gm - wm, 0, 1)
    cls = np.argmax(np.stack([csf, gm, wm]), axis=0)
    depth = ndimage.distance_transform_edt(brain, sampling=sp)
    outside = ndimage.distance_transform_edt(~brain, sampling=sp)
    i, j, k = np.meshgrid(*[np.arange(n) for n in brain.shape], indexing="ij", sparse=True)
    x, y, z = (affine[d, d] * idx + affine[d, 3] for d, idx in zip(range(3), (i, j, k), strict=True))
    codes = np.zeros(brain.shape, dtype=np.uint8)
    codes[(outside > 0) & (outside <= 4)] = 2
    codes[(outside > 4) & (outside <= 9)] = SKULL
    codes[(outside > 9) & (outside <= 15)] = SCALP
    codes[brain & (cls == 0)] = 2
    codes[brain & (cls == 1)] = 7
    codes[brain & (cls == 2)] = 8
    central = (np.abs(x) < 32) & (y > -30) & (y < 25) & (z > -12) & (z < 22)
    codes[brain & (cls == 1) & central & (depth > 15)] = 6
    vent = brain & (cls == 0) & (depth > 14) & (np.abs(x) < 30) & (z > -15) & (z < 35)
    codes[vent] = 1
    cereb = brain & (y < -38) & (z < -15 + 0.5 * (-60 - y))
    codes[cereb & (cls == 1)] = 3
    codes[cereb & (cls == 2)] = 4
    stem = brain & ~cereb & (np.abs(x) < 14) & (y > -45) & (y < -8) & (z < -14)
    codes[stem & (cls > 0)] = 5
    vdist = np.asarray(ndimage.distance_transform_edt(~vent, sampling=sp), dtype=_F)
    return codes, vdist, affine


class MNIHead:
    """Tissue classes from nilearn's MNI152 templates, scaled by ``scale`` about the origin."""

    def __init__(self, rng: np.random.Generator, resolution: int = 2):
        self.resolution = int(resolution)
        self.scale = float(rng.uniform(0.93, 1.05))
        codes, _, affine = _mni_maps(self.resolution)
        vent = np.argwhere(codes == 1)
        y = affine[1, 1] * vent[:, 1] + affine[1, 3]
        self.vent_y, self.vent_half = float(np.median(y)), float(np.ptp(y) / 2 + 1e-3)
        self.lesion_scale = 1.0

    def wm_points(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` random white-matter points (head frame, mm) of the template."""
        codes, _, affine = _mni_maps(self.resolution)
        idx = np.flatnonzero(codes == 8)
        ijk = np.stack(np.unravel_index(idx[rng.integers(0, idx.size, n)], codes.shape), 1).astype(float)
        return ((ijk @ affine[:3, :3].T + affine[:3, 3]) * self.scale).astype(_F)

    def sample(self, grid: Grid, pose: Pose) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(codes uint8, ventricle distance mm float32, horn factor float32)`` on ``grid``."""
        codes_t, vdist_t, aff_t = _mni_maps(self.resolution)
        # template voxel = A^-1 (head/scale); head = R^T (world - centre); world = grid affine @ ijk
        head_from_world = np.eye(4)
        head_from_world[:3, :3] = pose.rotation.T / self.scale
        head_from_world[:3, 3] = -pose.rotation.T @ pose.centre / self.scale
        m = np.linalg.inv(aff_t) @ head_from_world @ grid.affine
        identity = np.allclose(m, np.eye(4), atol=1e-6) and tuple(grid.shape) == codes_t.shape
        if identity:
            codes, vdist = codes_t.copy(), vdist_t.copy()
        else:
            codes = ndimage.affine_transform(codes_t, m[:3, :3], m[:3, 3], output_shape=grid.shape, order=0)
            vdist = ndimage.affine_transform(vdist_t, m[:3, :3], m[:3, 3], output_shape=grid.shape, order=1,
                                             mode="nearest") * self.scale
        hy = pose.head_coords(grid)[1] / self.scale
        horn = np.clip(np.abs(hy - self.vent_y) / self.vent_half, 0, 1.5).astype(_F)
        return codes, vdist.astype(_F), np.broadcast_to(horn, grid.shape).astype(_F)
