"""Exceptions a user can cause: each message names the input (file, row, column) and the problem."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

__all__ = ["WmhsegError", "InputError", "ScanError", "ManifestError", "CheckpointError", "Interrupted",
           "check_known_keys", "closest", "did_you_mean"]


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


def closest(value: Any, options: Iterable[Any]) -> str | None:
    """The option ``value`` most likely meant: the same word in another case, else the closest
    spelling (:func:`difflib.get_close_matches`), else ``None``."""
    text, names = str(value).strip(), [str(o) for o in options]
    same = [n for n in names if n.lower() == text.lower()]
    close = same or difflib.get_close_matches(text, names, n=1)
    return close[0] if close else None


def did_you_mean(value: Any, options: Iterable[Any]) -> str:
    """``"; did you mean 'x'?"`` for the :func:`closest` option, or ``""`` when none is close."""
    hint = closest(value, options)
    return f"; did you mean {hint!r}?" if hint is not None else ""


def check_known_keys(given: Iterable[str], known: Iterable[str], section: str) -> None:
    """Raise :class:`InputError` for the first key of ``given`` not in ``known``, with the closest
    known key as a suggestion ("unknown <section> setting 'x'; did you mean 'y'?")."""
    known = list(known)
    for key in given:
        if key not in known:
            raise InputError(f"unknown {section} setting {key!r}{did_you_mean(key, known)} (known: {', '.join(known)})")
