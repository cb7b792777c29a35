"""Subject and session IDs: the one rule every command applies.

IDs are strings everywhere (``001`` stays ``001``). A cell that is empty or reads as a missing
value, ``NA``, ``N/A``, ``NaN``, ``null``, ``None`` or ``<NA>`` in any case, is not an ID: most table
tools (pandas, R) read these words as missing, so such a scan could not be joined with its
clinical data. ``infer.py`` fails that manifest row (its ``status`` is ``error``); ``analyze.py``
refuses a table holding one.
"""

from __future__ import annotations

import re
from typing import Any

from wmhseg.errors import InputError

__all__ = ["MISSING_WORDS", "is_missing_id", "missing_id_problem", "check_safe_id"]

_UNSAFE_ID = re.compile(r"[/\\\x00-\x1f\x7f]")
MISSING_WORDS = frozenset({"", "na", "n/a", "nan", "null", "none", "<na>"})


def is_missing_id(value: Any) -> bool:
    """True when ``value`` is ``None`` or, stripped and lower-cased, one of :data:`MISSING_WORDS`."""
    return value is None or str(value).strip().lower() in MISSING_WORDS


def missing_id_problem(value: Any, name: str) -> str | None:
    """Why ``value`` cannot be the ``name`` column's ID, or ``None`` when it can."""
    if not is_missing_id(value):
        return None
    return (f"{name} {str(value)!r} reads as a missing value (empty, NA, N/A, NaN, null, None); "
            "give the scan a real ID")


def check_safe_id(value: str, *, name: str = "id") -> str:
    """Return ``value`` if it can be part of a file name, else raise :class:`InputError`.

    Refused: empty, a path separator, a control character, ``.`` or ``..`` anywhere as a
    component, or a leading dot (hidden files).
    """
    text = str(value)
    if not text or text.strip() != text:
        raise InputError(f"{name} {value!r} is empty or has leading/trailing spaces")
    if _UNSAFE_ID.search(text) or ".." in text or text.startswith("."):
        raise InputError(f"{name} {value!r} cannot be used in a file name (path separator, '..' or control character)")
    return text

