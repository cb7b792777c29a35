"""The brain found without the network: the box the one pass may run on, and the envelope that
WMH must touch.

The preprocessing (stored in each checkpoint, shared with training) crops to the head's bounding
box; with scalp, skull and neck that box keeps nearly the whole field. Inference can pass the
network only the brain's box, found cheaply at low resolution:

1. the FLAIR channel averaged over blocks of about ``coarse_mm`` (``torch.nn.functional.avg_pool3d``);
2. tissue: blocks brighter than the darkest block by ``threshold`` x (99th percentile - darkest),
   which holds on raw and z-scored intensities alike. At 0.2 (the preprocessing's head rule uses
   0.05) the skull and the CSF around the brain, dark on FLAIR, fall below it;
3. the brain: the tissue eroded by ``erode_mm`` (which cuts the bridges of partial volume across
   the dark ring between scalp and brain), its largest connected component, dilated back by
   ``erode_mm`` inside the tissue (``scipy.ndimage``);
4. that component's bounding box on the working grid plus ``margin`` working voxels of context on
   each side (the context a network needs is a number of its own voxels: its receptive field).

:func:`brain_box` gives ``None`` (predict on the head box) when the box is implausible: an axis
shorter than ``min_extent_mm`` (a brain is 120-180 mm along each axis; a scan that shows less, or a
failed mask, keeps the head box) or a box holding more than ``max_fraction`` of the head box's
voxels (nothing to gain). :meth:`BrainBox.touches` is the guard the predictor applies after the
network: foreground within a few voxels of a face that is not the head box's means the crop may
have cut something off, and the scan is predicted again on the head box.

:func:`brain_envelope` closes the same low-resolution brain (a ``close_mm`` ball, holes filled:
sulci, ventricles and the dark rims of lesions stay inside), grows it by ``margin_mm`` and brings
it onto the working grid; :func:`outside_brain` names the WMH components that have no voxel in it,
such as bright scalp fat where a thick slice cuts the top of the head. BISON segments within a
brain mask, and WMH-SynthSeg and nnU-Net pipelines on skull-stripped scans; this is that rule for
scans with scalp. The envelope is ``None`` (nothing dropped) when the brain it finds is
implausible, as for :func:`brain_box`: a field of view that shows less than ``min_extent_mm`` of
brain along an axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from wmhseg.geometry import bounding_box, padding_to_multiple

__all__ = ["BrainBox", "brain_box", "brain_envelope", "outside_brain"]


@dataclass(frozen=True)
class BrainBox:
    """``region`` (three slices) of a working grid of ``shape``; its faces on the grid's border are
    the head box's own faces (the working grid is the head box)."""

    region: tuple[slice, slice, slice]
    shape: tuple[int, int, int]

    @property
    def size(self) -> tuple[int, int, int]:
        return tuple(s.stop - s.start for s in self.region)  # type: ignore[return-value]

    @property
    def fraction(self) -> float:
        """The box's voxels over the head box's."""
        return float(np.prod(self.size) / np.prod(self.shape))

    def inner_faces(self) -> list[tuple[int, int]]:
        """``(axis, side)`` of the faces inside the grid (side 0: the low end, 1: the high end)."""
        faces = []
        for axis, (s, n) in enumerate(zip(self.region, self.shape, strict=True)):
            faces += [(axis, 0)] if s.start > 0 else []
            faces += [(axis, 1)] if s.stop < n else []
        return faces

    def touches(self, mask: torch.Tensor | np.ndarray, depth: int | Sequence[int]) -> bool:
        """True when ``mask`` (on the box, ``(X, Y, Z)``) has a voxel within ``depth`` voxels (per
        axis, or one number) of an inner face."""
        depths = [int(depth)] * 3 if isinstance(depth, (int, np.integer)) else [int(d) for d in depth]
        for axis, side in self.inner_faces():
            n, d = mask.shape[axis], depths[axis]
            index: list[slice] = [slice(None)] * 3
            index[axis] = slice(0, d) if side == 0 else slice(max(n - d, 0), n)
            if bool(mask[tuple(index)].any()):
                return True
        return False

    def aligned(self, divisor: Sequence[int]) -> tuple[BrainBox, tuple[slice, slice, slice]]:
        """This box grown onto the lattice of the head box padded to ``divisor`` (as the one pass
        pads it), and that window of the padded head box.

        A network whose strides multiply to ``divisor`` is equivariant to shifts by multiples of it
        only: on a window that starts off the lattice its strided layers sample other voxels, and
        the output changes everywhere (a trained U-Net's masks: Dice 0.5-0.9 against the head
        box's). On the lattice it gives what it gives on the padded head box, save for the context
        beyond the window's faces.
        """
        window, region = [], []
        pads = padding_to_multiple(self.shape, divisor)
        for s, n, (before, after), d in zip(self.region, self.shape, pads, divisor, strict=True):
            lo = (s.start + before) // d * d
            hi = min(-(-(s.stop + before) // d) * d, n + before + after)
            window.append(slice(lo, hi))
            region.append(slice(max(lo - before, 0), min(hi - before, n)))
        return BrainBox(tuple(region), self.shape), tuple(window)  # type: ignore[arg-type]

    def describe(self) -> dict[str, object]:
        return {"start": [int(s.start) for s in self.region], "stop": [int(s.stop) for s in self.region],
                "fraction": round(self.fraction, 3)}


def _ball(radius_vox: np.ndarray) -> np.ndarray:
    """An ellipsoidal structuring element with these half-axes (in voxels, per axis)."""
    grid = np.ogrid[tuple(slice(-int(n), int(n) + 1) for n in np.floor(radius_vox + 1e-6))]
    return sum((g / max(float(r), 1e-6)) ** 2 for g, r in zip(grid, radius_vox, strict=True)) <= 1.0


def _coarse_tissue(flair: torch.Tensor, block: Sequence[int], threshold: float) -> np.ndarray:
    """Tissue on blocks of ``block`` voxels (see the module)."""
    x = flair.detach().float()[None, None]
    coarse = F.avg_pool3d(x, kernel_size=tuple(block), stride=tuple(block), ceil_mode=True)[0, 0].cpu().numpy()
    lo = float(coarse.min())
    hi = float(np.percentile(coarse, 99))
    return coarse > lo + threshold * (hi - lo)


def _largest_core(tissue: np.ndarray, ball: np.ndarray) -> np.ndarray | None:
    """``tissue`` eroded by ``ball``, its largest component, dilated back inside ``tissue``."""
    core = ndimage.binary_erosion(tissue, structure=ball)
    labels, n = ndimage.label(core)
    if n == 0:
        return None
    sizes = ndimage.sum_labels(core, labels, index=np.arange(1, n + 1))
    largest = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_dilation(largest, structure=ball) & tissue


def _coarse_brain(flair: torch.Tensor, voxel_mm: Sequence[float], threshold: float, coarse_mm: float,
                  erode_mm: float, min_extent_mm: float) -> tuple[np.ndarray, np.ndarray, list[int], list[int]] | None:
    """Steps 1-3 of the module on ``flair`` ``(X, Y, Z)``: the brain on blocks, the block size, and the
    brain's box on the working grid (start, stop); ``None`` when no brain or an implausible one."""
    shape = tuple(int(n) for n in flair.shape)
    voxel = np.asarray(voxel_mm, dtype=float)
    if len(shape) != 3 or voxel.shape != (3,) or min(voxel) <= 0:
        raise ValueError(f"the brain needs a 3-D FLAIR and three positive voxel sizes, got {shape} and {voxel_mm}")
    block = np.maximum(np.rint(coarse_mm / voxel), 1).astype(int)
    tissue = _coarse_tissue(flair, block, threshold)
    brain = _largest_core(tissue, _ball(erode_mm / (voxel * block)))
    box = bounding_box(brain) if brain is not None else None
    if box is None:
        return None
    start = [s.start * b for s, b in zip(box, block, strict=True)]
    stop = [min(s.stop * b, n) for s, b, n in zip(box, block, shape, strict=True)]
    if min((b - a) * v for a, b, v in zip(start, stop, voxel, strict=True)) < min_extent_mm:
        return None
    return brain, block, start, stop


def brain_box(flair: torch.Tensor | np.ndarray, voxel_mm: Sequence[float], *, threshold: float = 0.2,
              coarse_mm: float = 3.0, erode_mm: float = 6.0, margin: int = 6,
              min_extent_mm: float = 100.0, max_fraction: float = 0.95) -> BrainBox | None:
    """The brain's box on the working grid, or ``None`` to keep the head box (see the module).

    Args:
        flair: the working grid's FLAIR channel ``(X, Y, Z)`` (raw or z-scored), on any device.
        voxel_mm: the working grid's voxel size along each axis.
        threshold: the tissue rule's fraction of the intensity range.
        coarse_mm: block size of the low-resolution mask.
        erode_mm: erosion that cuts the scalp off the brain (wider than the skull's dark ring
            leaves bright blocks across it).
        margin: context around the brain's box in working voxels, so that the network sees
            around the brain what it sees on the head box.
        min_extent_mm: shortest plausible brain along any axis.
        max_fraction: keep the head box when the brain's box holds more than this share of it.

    Example:
        >>> box = brain_box(image[1], voxel_sizes(image.affine))   # doctest: +SKIP
        >>> cropped = image[(slice(None), *box.region)]            # doctest: +SKIP
    """
    flair = torch.as_tensor(flair)
    shape = tuple(int(n) for n in flair.shape)
    found = _coarse_brain(flair, voxel_mm, threshold, coarse_mm, erode_mm, min_extent_mm)
    if found is None:
        return None
    _, _, start, stop = found
    region = tuple(slice(max(a - margin, 0), min(b + margin, n)) for a, b, n in zip(start, stop, shape, strict=True))
    out = BrainBox(region, shape)  # type: ignore[arg-type]
    return None if out.fraction > max_fraction else out


def brain_envelope(flair: torch.Tensor | np.ndarray, voxel_mm: Sequence[float], *, threshold: float = 0.2,
                   coarse_mm: float = 3.0, erode_mm: float = 6.0, close_mm: float = 9.0, margin_mm: float = 6.0,
                   min_extent_mm: float = 100.0) -> np.ndarray | None:
    """The brain's envelope on the working grid (boolean ``(X, Y, Z)``), or ``None`` when no
    plausible brain is found (see the module; the other arguments as for :func:`brain_box`).

    Args:
        close_mm: radius of the closing that fills sulci and notches before the holes are filled.
        margin_mm: the envelope's growth beyond the closed brain, so that a juxtacortical lesion
            at the brain's edge is inside it.
    """
    flair = torch.as_tensor(flair)
    found = _coarse_brain(flair, voxel_mm, threshold, coarse_mm, erode_mm, min_extent_mm)
    if found is None:
        return None
    brain, block, _, _ = found
    scale = np.asarray(voxel_mm, dtype=float) * block  # mm per block
    ball = _ball(close_mm / scale)
    pad = [(r, r) for r in np.asarray(ball.shape) // 2]
    closed = ndimage.binary_closing(np.pad(brain, pad), structure=ball)  # padded: closing does not erode the border
    closed = closed[tuple(slice(a, closed.shape[k] - b) for k, (a, b) in enumerate(pad))]
    envelope = ndimage.binary_dilation(ndimage.binary_fill_holes(closed), structure=_ball(margin_mm / scale))
    full = envelope.repeat(block[0], 0).repeat(block[1], 1).repeat(block[2], 2)
    return full[: flair.shape[0], : flair.shape[1], : flair.shape[2]]


def outside_brain(mask: np.ndarray, envelope: np.ndarray) -> np.ndarray:
    """The voxels of ``mask``'s 26-connected components that have no voxel inside ``envelope``."""
    mask = np.asarray(mask, bool)
    if not (mask & ~envelope).any():
        return np.zeros_like(mask)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    keep = np.zeros(n + 1, bool)
    keep[np.unique(labels[mask & envelope])] = True  # components with a voxel inside (np.unique: ndimage.maximum
    keep[0] = True                                   # over thousands of labels takes ten times longer)
    return ~keep[labels]
