"""What a checkpoint carries for inference, and loading it safely.

A Lightning checkpoint written by :class:`wmhseg.models.module.WMHSegModule` holds, besides
``state_dict``, a plain-type dictionary under ``checkpoint["wmhseg"]``::

    {
      "format_version": 1,
      "wmhseg_version": "0.1.0",
      "network": {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, ...},  # resolved
      "preprocessing": {...},   # wmhseg.data.preprocessing.PreprocessSpec.to_dict()
      "labels": {...},          # wmhseg.labels.LabelSpec.to_dict()
      "inference": {...},       # sliding-window defaults (roi_size, overlap, ...)
      "config": "...",          # the full training config as YAML, for provenance
    }

Everything in it is made of str/int/float/bool/list/dict, so the file loads with
``torch.load(weights_only=True)``: no pickled code is ever executed. Nothing in it is ever given
to Hydra's ``instantiate``: the network is built by :func:`wmhseg.networks.build_network` from a
fixed registry of MONAI classes and plain, signature-checked arguments, so a checkpoint cannot
name or call any other function.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from wmhseg.errors import CheckpointError
from wmhseg.networks import build_network

__all__ = [
    "META_KEY",
    "FORMAT_VERSION",
    "load_checkpoint",
    "read_meta",
    "build_network",
    "file_sha256",
]

META_KEY = "wmhseg"
FORMAT_VERSION = 1
_REQUIRED = ("network", "preprocessing", "labels")


def file_sha256(path: str | os.PathLike, *, length: int = 16) -> str:
    """First ``length`` hex digits of the file's SHA-256: the model's identity in outputs."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length]


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no code execution).

    Raises:
        CheckpointError: missing file, unreadable file, or content that is not plain data
            (e.g. a pickle that would construct arbitrary objects).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused, the checkpoint holds objects other than tensors and plain data "
            f"(it would execute pickled code): {str(exc).splitlines()[0]}"
        ) from exc
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    return ckpt


def read_meta(ckpt: dict[str, Any], *, source: str | os.PathLike = "checkpoint") -> dict[str, Any]:
    """Return the ``wmhseg`` section of a loaded checkpoint, checked for what inference needs."""
    meta = ckpt.get(META_KEY)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{source}: no '{META_KEY}' section; it was not written by wmhseg training")
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise CheckpointError(f"{source}: the '{META_KEY}' section lacks {missing}")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{source}: format_version {version!r} is not an integer")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{source}: checkpoint format {version} is newer than this wmhseg ({FORMAT_VERSION})")
    return meta
