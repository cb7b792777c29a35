"""Settings dataclasses read as OmegaConf structured configs.

A settings dataclass (:class:`~wmhseg.data.preprocessing.PreprocessSpec`,
:class:`~wmhseg.data.augment.AugmentSpec`, :class:`~wmhseg.data.synthesis.SynthesisSpec`,
:class:`~wmhseg.labels.LabelSpec`) is its own schema: OmegaConf checks the keys and converts or
rejects the types, naming the key; the dataclass's ``__post_init__`` checks the values.

Example:
    >>> from wmhseg.labels import LabelSpec
    >>> from_settings(LabelSpec, {"mode": "bison"}, "labels").num_classes
    10
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any, ClassVar, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from wmhseg.errors import InputError, check_known_keys
from wmhseg.plain import to_plain

__all__ = ["from_settings", "Settings"]

T = TypeVar("T")


def from_settings(cls: type[T], values: Mapping[str, Any] | None, section: str) -> T:
    """``cls`` built from a mapping of settings (missing keys take the defaults).

    Raises:
        InputError: an unknown key (with the closest known key: "did you mean"), a value of the
            wrong type (OmegaConf's message, naming ``section.key``) or out of range (the
            dataclass's own check).
    """
    given = to_plain(values or {}, section)
    if not isinstance(given, dict):
        raise InputError(f"{section} must be a mapping of settings, got {given!r}")
    check_known_keys(given, [f.name for f in fields(cls)], section)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), given)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        message = str(exc).splitlines()[0]
        raise InputError(f"{section}.{key}: {message}" if key else f"{section}: {message}") from None
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


class Settings:
    """What the settings dataclasses share: the plain form stored in checkpoints, building from a
    mapping (:func:`from_settings`) and the check of their ``*_prob`` chances."""

    SECTION: ClassVar[str] = "settings"  # the config section, named in error messages

    def to_dict(self) -> dict[str, Any]:
        """Plain-type form (tuples as lists), stored in checkpoints."""
        return to_plain(asdict(self), self.SECTION)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None):  # noqa: ANN206 - the subclass
        """From a config section or a checkpoint's plain dict; see :func:`from_settings`."""
        return from_settings(cls, d, cls.SECTION)

    def check_probabilities(self) -> None:
        """Raise :class:`InputError` for a ``prob`` or ``*_prob`` setting outside [0, 1]."""
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if (f.name == "prob" or f.name.endswith("_prob")) and not 0 <= float(value) <= 1:
                raise InputError(f"{self.SECTION}.{f.name}={value!r} must be a probability in [0, 1]")
