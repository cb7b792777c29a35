"""File input/output: validated image reading, atomic writes, and safe file names.

Images are read with nibabel: NIfTI (``.nii``, ``.nii.gz``) and MINC (``.mnc``: MINC1/netCDF and
MINC2/HDF5), each as a 3-D array with its voxel-to-world (RAS mm) affine; MINC's world
coordinates are RAS, so both formats give the same geometry. Outputs are always NIfTI.
Everything here is torch-free. Reading checks what users get wrong most often (missing or
truncated files, NaNs, 2-D or 4-D data) and raises :class:`~wmhseg.errors.ScanError` naming the
file. Writing goes to a temporary name in the destination folder and is renamed into place, so
an interrupted run never leaves a half-written output.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from wmhseg.errors import InputError, ScanError

__all__ = [
    "NIFTI_SUFFIXES",
    "MINC_SUFFIXES",
    "IMAGE_SUFFIXES",
    "is_minc",
    "read_header",
    "load_nifti",
    "load_volume",
    "voxel_volume_mm3",
    "same_grid",
    "atomic_path",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_csv",
    "atomic_save_nifti",
    "check_safe_id",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
MINC_SUFFIXES = (".mnc",)
IMAGE_SUFFIXES = NIFTI_SUFFIXES + MINC_SUFFIXES
_UNSAFE_ID = re.compile(r"[/\\\x00-\x1f\x7f]")
_UMASK = os.umask(0)
os.umask(_UMASK)


def _as_3d_shape(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    """Accept 3-D data and 4-D data with a single volume; anything else is an error."""
    dims = tuple(int(s) for s in shape)
    if len(dims) == 4 and dims[3] == 1:
        dims = dims[:3]
    if len(dims) != 3:
        raise ScanError(f"{path}: expected a 3-D volume, got data of shape {dims}")
    if min(dims) < 2:
        raise ScanError(f"{path}: expected a 3-D volume, got shape {dims} (a 2-D slice?)")
    return dims  # type: ignore[return-value]


def is_minc(path: str | os.PathLike) -> bool:
    """True for a MINC file name (``.mnc``)."""
    return str(path).lower().endswith(MINC_SUFFIXES)


def read_header(path: str | os.PathLike) -> tuple[tuple[int, int, int], np.ndarray]:
    """Read an image header only (cheap): the 3-D shape and the voxel-to-world affine.

    Raises:
        ScanError: the file is missing, not NIfTI or MINC, or not a single 3-D volume.
    """
    path = Path(path)
    if not path.is_file():
        raise ScanError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for corrupt headers
        kind = "MINC" if is_minc(path) else "NIfTI"
        raise ScanError(f"{path}: not a readable {kind} file ({type(exc).__name__}: {exc})") from exc
    shape = _as_3d_shape(img.shape, path)
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ScanError(f"{path}: the affine is singular or not finite")
    return shape, affine


def load_nifti(path: str | os.PathLike, *, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI or MINC file fully and return ``(data, affine)`` with 3-D ``data``.

    The whole file is decompressed, so a truncated gzip is caught here rather than later.

    Raises:
        ScanError: missing, truncated or corrupt file; not a single 3-D volume.
    """
    path = Path(path)
    shape, affine = read_header(path)
    try:
        data = np.asarray(nib.load(str(path)).dataobj, dtype=dtype)
    except Exception as exc:  # EOFError, zlib.error, OSError, ValueError ...
        raise ScanError(f"{path}: cannot read the image data, the file is truncated or corrupt ({exc})") from exc
    return data.reshape(shape), affine


def load_volume(path: str | os.PathLike, *, repair_nonfinite: bool = True) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read an image for processing: ``(data, affine, warnings)``.

    Non-finite voxels are set to zero and reported in ``warnings`` when they are a minority of
    the image (``repair_nonfinite``); an image with no finite voxel at all is an error.
    """
    path = Path(path)
    data, affine = load_nifti(path)
    warnings: list[str] = []
    bad = ~np.isfinite(data)
    n_bad = int(bad.sum())
    if n_bad:
        if not repair_nonfinite or n_bad == data.size:
            raise ScanError(f"{path}: {n_bad} of {data.size} voxels are NaN or infinite")
        data[bad] = 0.0
        warnings.append(f"{path.name}: {n_bad} NaN/infinite voxels set to 0")
    return data, affine, warnings


def voxel_volume_mm3(affine: np.ndarray) -> float:
    """Volume of one voxel in mm^3: the absolute determinant of the affine's 3x3 part."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))


def same_grid(shape_a, affine_a, shape_b, affine_b, *, atol: float = 1e-3) -> bool:
    """True when two images share shape and affine (to ``atol`` mm)."""
    return tuple(shape_a) == tuple(shape_b) and np.allclose(affine_a, affine_b, atol=atol)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temporary name keeps the destination's suffixes (``.nii.gz`` stays compressed).
    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual mode
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return _atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (NaN written as null) atomically."""

    def clean(o: Any) -> Any:
        if isinstance(o, float) and not np.isfinite(o):
            return None
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if isinstance(o, np.generic):
            return clean(o.item())
        return o

    return atomic_write_text(path, json.dumps(clean(obj), indent=2) + "\n")


def atomic_write_csv(path: str | os.PathLike, frame) -> Path:
    """Write a pandas DataFrame as CSV (no index) atomically."""
    return _atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def atomic_save_nifti(img: nib.Nifti1Image, path: str | os.PathLike) -> Path:
    """Save a NIfTI image atomically (``.nii`` or ``.nii.gz`` decided by ``path``)."""
    return _atomic_write(path, lambda tmp: nib.save(img, str(tmp)))


def check_safe_id(value: str, *, name: str = "id") -> str:
    """Return ``value`` if it can be part of a file name, else raise :class:`InputError`.

    Refused: empty, a path separator, a control character, ``.`` or ``..`` anywhere as a
    component, or a leading dot (hidden files).
    """
    text = str(value)
    if not text or text.strip() != text:
        raise InputError(f"{name} {value!r} is empty or has leading/trailing spaces")
    if _UNSAFE_ID.search(text) or ".." in text or text.startswith("."):
        raise InputError(f"{name} {value!r} cannot be used in a file name (path separator, '..' or control character)")
    return text
