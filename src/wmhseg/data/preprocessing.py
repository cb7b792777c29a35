"""The deterministic preprocessing shared by training and inference.

:class:`PreprocessSpec` is stored in every checkpoint, so inference reproduces exactly the
geometry and intensities the network was trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from wmhseg.errors import InputError

__all__ = ["PreprocessSpec"]

_NORMALISATIONS = ("zscore", "none")


@dataclass(frozen=True)
class PreprocessSpec:
    """Geometry and intensity preprocessing of a T1w + FLAIR pair.

    Args:
        spacing: target voxel size in mm (x, y, z) after orienting to ``orientation``.
        orientation: axis codes of the working grid (``"RAS"``).
        normalisation: ``"zscore"`` per channel over the head (voxels above the head
            threshold), after clipping to ``clip_percentiles``; or ``"none"``.
        clip_percentiles: lower/upper intensity percentiles inside the head used for clipping.
        crop_foreground: crop to the head's bounding box (plus ``crop_margin`` voxels).
        crop_margin: margin in voxels around the head's bounding box.
        head_threshold: a voxel belongs to the head when its FLAIR intensity exceeds this
            fraction of the FLAIR's 99th percentile.
    """

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    orientation: str = "RAS"
    normalisation: str = "zscore"
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    crop_foreground: bool = True
    crop_margin: int = 4
    head_threshold: float = 0.05

    def __post_init__(self) -> None:
        spacing = tuple(float(s) for s in self.spacing)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise InputError(f"preprocessing.spacing={self.spacing!r} must be three positive numbers (mm)")
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "clip_percentiles", tuple(float(p) for p in self.clip_percentiles))
        if self.normalisation not in _NORMALISATIONS:
            raise InputError(f"preprocessing.normalisation={self.normalisation!r} is not one of {_NORMALISATIONS}")
        if len(self.orientation) != 3:
            raise InputError(f"preprocessing.orientation={self.orientation!r} must be three axis codes, e.g. 'RAS'")
        lo, hi = self.clip_percentiles
        if not 0 <= lo < hi <= 100:
            raise InputError(f"preprocessing.clip_percentiles={self.clip_percentiles!r} must satisfy 0 <= lo < hi <= 100")
        if self.crop_margin < 0:
            raise InputError(f"preprocessing.crop_margin={self.crop_margin!r} must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain-type form, stored in checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        known = {k: v for k, v in dict(d).items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise InputError(f"unknown preprocessing settings {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**known)
