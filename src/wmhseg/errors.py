"""Exceptions a user can cause: each message names the input (file, row, column) and the problem."""

from __future__ import annotations

__all__ = ["WmhsegError", "InputError", "ScanError", "ManifestError", "CheckpointError", "Interrupted"]


class WmhsegError(Exception):
    """Base class of every error wmhseg raises on purpose."""


class InputError(WmhsegError, ValueError):
    """A file, table or configuration value given by the user is unusable."""


class ScanError(InputError):
    """One scan (a NIfTI file or a T1/FLAIR/label set) cannot be processed."""


class ManifestError(InputError):
    """A scan manifest (CSV or BIDS folder) is malformed; the message names the row."""


class CheckpointError(InputError):
    """A checkpoint is missing, corrupt, unsafe, or lacks what inference needs."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a command; the message says what was finished and how to resume."""
