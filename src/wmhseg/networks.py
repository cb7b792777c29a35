"""Networks a configuration or a checkpoint may name, and building them from plain data.

A network is named by ``_target_`` and built from plain keyword arguments, without Hydra's
``instantiate`` and without importing anything the data names: the name is looked up in
:data:`NETWORK_NAMES` (MONAI's segmentation networks), and every other key must be a parameter of
that class's ``__init__`` holding a plain value (``None``, bool, int, float, str, lists of them,
mappings with string keys). So a checkpoint, which is data, can never make wmhseg call anything
else, whatever it holds (``_args_``, ``_partial_``, a nested ``_target_``, a dotted path through
module attributes such as ``monai.networks.nets.unet.torch.save``).

Accepted spellings of a name: ``UNet``, ``monai.networks.nets.UNet`` (what training configs and
checkpoints use) and the class's defining path ``monai.networks.nets.unet.UNet``.

Example:
    >>> net = build_network({"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 2,
    ...                      "out_channels": 2, "channels": [4, 8], "strides": [2]})
    >>> type(net).__name__
    'UNet'
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch

from wmhseg.errors import CheckpointError

__all__ = ["NETWORK_NAMES", "MONAI_PREFIX", "network_class", "network_kwargs", "build_network"]

MONAI_PREFIX = "monai.networks.nets."
# 3-D segmentation networks of monai.networks.nets that take plain arguments only
NETWORK_NAMES = ("UNet", "BasicUNet", "DynUNet", "SegResNet", "AttentionUnet", "UNETR", "SwinUNETR")
_PLAIN_SCALARS = (str, bool, int, float, type(None))


def _registry() -> dict[str, type[torch.nn.Module]]:
    """Name -> class, spelled out so that no name from data is ever resolved by import or getattr."""
    from monai.networks import nets

    classes = (nets.UNet, nets.BasicUNet, nets.DynUNet, nets.SegResNet, nets.AttentionUnet, nets.UNETR,
               nets.SwinUNETR)
    return dict(zip(NETWORK_NAMES, classes, strict=True))


def network_class(target: Any, *, source: str = "network") -> type[torch.nn.Module]:
    """The registered class that ``target`` names.

    Raises:
        CheckpointError: ``target`` is not one of the accepted spellings of a registered name.
    """
    registry = _registry()
    if isinstance(target, str):
        for name, cls in registry.items():
            if target in (name, MONAI_PREFIX + name, f"{cls.__module__}.{cls.__qualname__}"):
                return cls
    raise CheckpointError(
        f"{source}: _target_ {_shown(target)} is not allowed; a network is one of "
        f"{', '.join(MONAI_PREFIX + n for n in NETWORK_NAMES)}"
    )


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else f"of type {type(value).__name__}"


def _check_plain(value: Any, where: str) -> Any:
    """``value`` as plain data (tuples become lists); anything else raises :class:`CheckpointError`."""
    if isinstance(value, _PLAIN_SCALARS):
        return value
    if isinstance(value, (list, tuple)):
        return [_check_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for key, sub in value.items():
            if not isinstance(key, str):
                raise CheckpointError(f"{where}: key {key!r} is not a string")
            if key.startswith("_"):
                raise CheckpointError(f"{where}.{key}: a nested {key!r} is not allowed; network arguments are "
                                      "plain values, never objects to build")
            out[key] = _check_plain(sub, f"{where}.{key}")
        return out
    raise CheckpointError(f"{where}: {type(value).__name__} is not a plain value (None, bool, number, string, "
                          "list or mapping)")


def network_kwargs(config: Mapping[str, Any], *, source: str = "network") -> tuple[type[torch.nn.Module], dict]:
    """Check a ``{"_target_": NAME, **kwargs}`` config: ``(class, kwargs)`` ready to build.

    Raises:
        CheckpointError: not a mapping, an unknown network, a key starting with ``_`` other than
            ``_target_`` (``_args_``, ``_partial_``, ``_recursive_`` ...), a key that is not a
            parameter of the class, a missing required parameter, or a value that is not plain.
    """
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{source}: a network config must be a mapping, got {type(config).__name__}")
    cls = network_class(config.get("_target_"), source=source)
    kwargs = {k: v for k, v in config.items() if k != "_target_"}
    special = sorted(str(k) for k in kwargs if not isinstance(k, str) or k.startswith("_"))
    if special:
        raise CheckpointError(f"{source}: key(s) {special} are not allowed; a network config is _target_ plus "
                              "plain keyword arguments")
    params = {n: p for n, p in inspect.signature(cls.__init__).parameters.items()
              if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise CheckpointError(f"{source}: {cls.__name__} has no parameter(s) {unknown}; its parameters are "
                              f"{sorted(params)}")
    missing = sorted(n for n, p in params.items() if p.default is p.empty and n not in kwargs)
    if missing:
        raise CheckpointError(f"{source}: {cls.__name__} needs the parameter(s) {missing}")
    return cls, {k: _check_plain(v, f"{source}.{k}") for k, v in kwargs.items()}


def build_network(config: Mapping[str, Any], *, source: str = "network") -> torch.nn.Module:
    """Build a registered MONAI network from ``{"_target_": NAME, **plain kwargs}``.

    Args:
        config: e.g. ``{"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, ...}``.
        source: how messages name the config (a checkpoint path, ``model.net``).

    Raises:
        CheckpointError: the config is refused (see :func:`network_kwargs`) or the class rejects
            the values; the message names ``source`` and the key.
    """
    cls, kwargs = network_kwargs(config, source=source)
    try:
        return cls(**kwargs)
    except Exception as exc:  # MONAI raises ValueError, TypeError, AssertionError, KeyError ... on bad values
        raise CheckpointError(f"{source}: cannot build {cls.__name__} ({type(exc).__name__}: {exc})") from exc
