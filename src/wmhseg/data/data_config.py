"""The structured config of the ``data`` group: Hydra checks its keys and types when it composes.

:class:`DataConfig` is the schema ``configs/data/default.yaml`` names first in its defaults list
(stored in Hydra's ConfigStore as ``data/schema`` by :func:`register_configs`). Its nested
sections have the fields, types and defaults of the settings dataclasses
(:class:`~wmhseg.data.preprocessing.PreprocessSpec`, :class:`~wmhseg.labels.LabelSpec`,
:class:`~wmhseg.data.augment.AugmentSpec`, :class:`~wmhseg.data.synthesis.SynthesisSpec`; derived
from them, never written twice), so an unknown key or a value of the wrong type anywhere under
``data`` is reported by Hydra, naming the key. The values are checked when the
data module builds the dataclasses (:func:`~wmhseg.data.structured.from_settings`, which also
names the closest key for a misspelt one when the module is built from a plain mapping).
"""

from __future__ import annotations

import typing
from dataclasses import MISSING, dataclass, field, fields, make_dataclass
from typing import Any

from wmhseg.data.augment import AugmentSpec
from wmhseg.data.preprocessing import PreprocessSpec
from wmhseg.data.synthesis import SynthesisSpec
from wmhseg.labels import LabelSpec

__all__ = ["DataConfig", "register_configs"]


def _schema(spec: type) -> type:
    """``spec``'s fields, types and defaults as a mutable dataclass: OmegaConf makes a frozen
    dataclass read-only, and Hydra must merge the config files into the schema."""
    hints = typing.get_type_hints(spec)
    return make_dataclass(f"{spec.__name__}Schema", [
        (f.name, hints[f.name], field(default=f.default if f.default is not MISSING else f.default_factory()))
        for f in fields(spec)])


PreprocessSchema = _schema(PreprocessSpec)
LabelSchema = _schema(LabelSpec)
AugmentSchema = _schema(AugmentSpec)
SynthesisSchema = _schema(SynthesisSpec)


@dataclass
class DataConfig:
    """``data``: the arguments of :class:`~wmhseg.data.datamodule.WMHDataModule` (see there)."""

    _target_: str = "wmhseg.data.datamodule.WMHDataModule"
    manifest: str | None = None
    synthetic: Any = None  # a data writer: _target_ + _partial_: true
    independent: Any = None
    data_dir: str = "data/synthetic"
    preprocessing: PreprocessSchema = field(default_factory=PreprocessSchema)
    labels: LabelSchema = field(default_factory=LabelSchema)
    patch_size: list[int] = field(default_factory=lambda: [96, 96, 96])
    batch_size: int = 2
    samples_per_volume: int = 2
    pos_fraction: float = 0.5
    val_fraction: float = 0.2
    n_folds: int | None = None
    fold: int | None = None
    seed: int = 0
    cache: str = "memory"
    cache_dir: str | None = None
    num_workers: int = 0
    augmentation: AugmentSchema = field(default_factory=AugmentSchema)
    synthesis: SynthesisSchema = field(default_factory=SynthesisSchema)
    augment_on: str = "auto"
    train_repeats: int = 1
    validate: str = "full"
    pin_memory: bool | None = None


def register_configs() -> None:
    """Store :class:`DataConfig` in Hydra's ConfigStore as ``schema`` of the ``data`` group."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="data", name="schema", node=DataConfig)
