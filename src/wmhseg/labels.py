"""BISON label maps and the training targets derived from them.

BISON (Dadar et al., 2017; VANDAlab/BISON-WMH) labels nine tissue classes:

==  ======================  ==  ======================
1   ventricles              6   deep grey matter
2   extraventricular CSF    7   cortical grey matter
3   cerebellar grey matter  8   white matter
4   cerebellar white matter 9   white-matter hyperintensity
5   brainstem
==  ======================  ==  ======================

and 0 for background. :class:`LabelSpec` says which values make the WMH class and whether the
network learns a binary WMH target or all BISON classes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from wmhseg.errors import InputError

__all__ = ["BISON_CLASSES", "LabelSpec"]

BISON_CLASSES: dict[int, str] = {
    0: "background",
    1: "ventricles",
    2: "csf",
    3: "cerebellar_gm",
    4: "cerebellar_wm",
    5: "brainstem",
    6: "deep_gm",
    7: "cortical_gm",
    8: "white_matter",
    9: "wmh",
}
_MODES = ("binary", "bison")


@dataclass(frozen=True)
class LabelSpec:
    """How BISON label values become network targets.

    Args:
        mode: ``"binary"`` (0 = not WMH, 1 = WMH) or ``"bison"`` (one class per BISON value,
            0-9, WMH = the values in ``wmh_values``).
        wmh_values: label values that make the WMH class (default ``(9,)``).
        known_values: every value a label map may hold; anything else is an error.

    Example:
        >>> spec = LabelSpec()
        >>> spec.to_target(np.array([0, 8, 9])).tolist()
        [0, 0, 1]
    """

    mode: str = "binary"
    wmh_values: tuple[int, ...] = (9,)
    known_values: tuple[int, ...] = field(default=tuple(BISON_CLASSES))

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise InputError(f"labels.mode={self.mode!r} is not one of {_MODES}")
        object.__setattr__(self, "wmh_values", tuple(int(v) for v in self.wmh_values))
        object.__setattr__(self, "known_values", tuple(int(v) for v in self.known_values))
        if not self.wmh_values:
            raise InputError("labels.wmh_values is empty: at least one label value must mean WMH")
        missing = set(self.wmh_values) - set(self.known_values)
        if missing:
            raise InputError(f"labels.wmh_values {sorted(missing)} are not in labels.known_values")
        if self.mode == "bison" and max(self.known_values) > 255:
            raise InputError("labels.known_values must be 0-255 in 'bison' mode")

    @property
    def num_classes(self) -> int:
        """Number of network output channels (background included)."""
        return 2 if self.mode == "binary" else max(self.known_values) + 1

    @property
    def wmh_channels(self) -> tuple[int, ...]:
        """Output channels whose probabilities add up to the WMH probability."""
        return (1,) if self.mode == "binary" else self.wmh_values

    @property
    def ventricle_channel(self) -> int | None:
        """Channel of BISON's ventricle class when the network predicts it, else ``None``."""
        return 1 if self.mode == "bison" and 1 in self.known_values and 1 not in self.wmh_values else None

    def unknown_values(self, label: np.ndarray) -> list[int]:
        """Values in ``label`` that are not in ``known_values`` (non-integers included)."""
        values = np.unique(label)
        rounded = np.round(values)
        bad = values[(np.abs(values - rounded) > 1e-3) | ~np.isin(rounded, self.known_values)]
        return [float(v) if not float(v).is_integer() else int(v) for v in bad]

    def binary_mask_problem(self, label: np.ndarray) -> str | None:
        """Why ``label`` looks like a binary WMH mask given as a BISON label map, else ``None``.

        A map whose values are exactly {0, 1} is a binary mask (BISON's 1 means ventricles): with
        ``wmh_values`` not containing 1 it would train a scan with no WMH at all.
        """
        if 1 in self.wmh_values or set(np.unique(np.rint(label)).tolist()) != {0, 1}:
            return None
        return ("the label map holds only the values 0 and 1: a binary WMH mask, not a BISON label map "
                f"(in BISON, 1 means ventricles and WMH is {list(self.wmh_values)}); if 1 marks WMH in these "
                "maps, set data.labels.wmh_values=[1]")

    def to_target(self, label: np.ndarray) -> np.ndarray:
        """Map a BISON label array to the integer target the network learns (same shape)."""
        lab = np.rint(np.asarray(label)).astype(np.int64)
        if self.mode == "binary":
            return np.isin(lab, self.wmh_values).astype(np.int64)
        return lab

    def wmh_mask(self, label: np.ndarray) -> np.ndarray:
        """Boolean WMH mask of a BISON label array."""
        return np.isin(np.rint(np.asarray(label)), self.wmh_values)

    def to_dict(self) -> dict[str, Any]:
        """Plain-type form, stored in checkpoints."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelSpec:
        return cls(
            mode=str(d.get("mode", "binary")),
            wmh_values=tuple(d.get("wmh_values", (9,))),
            known_values=tuple(d.get("known_values", tuple(BISON_CLASSES))),
        )
