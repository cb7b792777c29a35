"""Exceptions a user can cause: each message names the input (file, row, column) and the problem."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["WmhsegError", "InputError", "ScanError", "ManifestError", "CheckpointError", "Interrupted",
           "check_known_keys"]


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


def check_known_keys(given: Iterable[str], known: Iterable[str], section: str) -> None:
    """Raise :class:`InputError` for the first key of ``given`` not in ``known``, with the closest
    known key as a suggestion ("unknown <section> setting 'x'; did you mean 'y'?")."""
    known = list(known)
    for key in given:
        if key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            raise InputError(f"unknown {section} setting {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
                             + f" (known: {', '.join(known)})")
