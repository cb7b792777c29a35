"""Grid geometry shared by every stage: voxel sizes and volumes, bounding boxes, size divisors.

Each rule lives here once, so training, inference, QC and export measure a grid the same way.
Torch-free: affines are 4x4 voxel-to-world (RAS mm) NumPy arrays, as nibabel gives them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from wmhseg.errors import InputError

__all__ = ["voxel_sizes", "voxel_volume_mm3", "bounding_box", "network_divisor", "padding_to_multiple"]


def voxel_sizes(affine: Any) -> np.ndarray:
    """Voxel size in mm along each array axis: the column norms of the affine's 3x3 part.

    Exact for oblique and sheared grids too (a column is the world step of one voxel).
    """
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def voxel_volume_mm3(affine: Any) -> float:
    """Volume of one voxel in mm^3: the absolute determinant of the affine's 3x3 part."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))


def bounding_box(mask: np.ndarray, margin: Sequence[int] | int = 0) -> tuple[slice, ...] | None:
    """Bounding box of the non-zero voxels of ``mask``, grown by ``margin`` voxels per axis and
    clipped to the array, or ``None`` for an empty mask."""
    margins = [int(margin)] * mask.ndim if np.isscalar(margin) else [int(m) for m in margin]  # type: ignore[arg-type]
    slices = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        nz = np.flatnonzero(mask.any(axis=other))
        if nz.size == 0:
            return None
        lo = max(int(nz[0]) - margins[axis], 0)
        hi = min(int(nz[-1]) + 1 + margins[axis], mask.shape[axis])
        slices.append(slice(lo, hi))
    return tuple(slices)


def network_divisor(config: Mapping[str, Any]) -> tuple[int, int, int] | None:
    """Per-axis number that an input's size must be a multiple of for a MONAI network config.

    The product of its strides (``UNet``: ``strides``, a number or three per level), or
    ``2 ** (levels - 1)`` for an encoder given as ``blocks_down`` (``SegResNet``); ``None`` when
    the config says neither. Training checks patch sizes against it; inference pads to it.
    """
    strides = config.get("strides")
    if strides is not None:
        divisor = [1, 1, 1]
        for s in strides:
            per_axis = list(s) if isinstance(s, (list, tuple)) else [s] * 3
            if len(per_axis) != 3:
                raise InputError(f"model.net.strides={list(strides)!r}: each stride must be a number or three numbers")
            divisor = [d * int(p) for d, p in zip(divisor, per_axis, strict=True)]
        return tuple(divisor)  # type: ignore[return-value]
    if "blocks_down" in config:
        return (2 ** (len(config["blocks_down"]) - 1),) * 3
    return None


def padding_to_multiple(size: Sequence[int], divisor: Sequence[int]) -> list[tuple[int, int]]:
    """``(before, after)`` padding per axis that makes ``size`` a multiple of ``divisor``,
    split evenly (the odd voxel after)."""
    pads = []
    for n, d in zip(size, divisor, strict=True):
        extra = (-int(n)) % int(d)
        pads.append((extra // 2, extra - extra // 2))
    return pads
