"""Plain data: the only values wmhseg stores in a checkpoint, a record or a provenance file.

A config that reaches a file goes through :func:`to_plain` first, so nothing an unpickler or a
``_target_`` resolver could turn into code is ever written, and what is read back is the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import numpy as np

__all__ = ["to_plain"]


def to_plain(value: Any, where: str = "value") -> Any:
    """Convert ``value`` to str/int/float/bool/None/list/dict only (safe for ``weights_only`` loading).

    OmegaConf containers are resolved, tuples become lists, NumPy scalars and arrays become
    Python numbers and lists, paths become strings.

    Raises:
        TypeError: ``value`` holds something else (a module, a function, ...); the message names
            where it sits, e.g. ``net_config.act``.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return to_plain(OmegaConf.to_container(value, resolve=True), where)
    except ImportError:  # pragma: no cover - omegaconf comes with hydra
        pass
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): to_plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where}: {type(value).__name__} cannot be stored in a checkpoint (plain data only)")
