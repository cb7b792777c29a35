"""Cheaper start-up: MONAI without the optional packages it loads for features wmhseg never uses,
and imports without Python's cyclic garbage collector.

``import monai`` imports every MONAI submodule, and through them, at import time, optional
packages for features outside segmentation: matplotlib's ``pyplot`` (notebook helpers),
``scipy.signal`` (ultrasound confidence maps) and scikit-learn (embedding metrics). MONAI imports
them through ``optional_import`` or a guarded ``import``, so an absent package only disables
that feature. :func:`import_monai` hides those packages while MONAI is imported (an entry of
``None`` in ``sys.modules`` makes an import raise ``ImportError``) and un-hides them afterwards, so
later code can still import them. ``infer.py`` calls it before anything imports MONAI: about a
third of MONAI's import time (0.55 of 1.56 s on a 2-core Xeon).

Importing torch, MONAI and pandas creates a few hundred thousand objects, and the cyclic garbage
collector runs over them again and again while they are created, though none of them is garbage:
about 0.3 of 1.8 s of ``infer.py``'s imports. :func:`quick_imports` pauses it while a command
imports its libraries and then freezes what exists (:func:`gc.freeze`, the pattern Python's
documentation gives for long-lived start-up objects), so later collections, and the one at the
interpreter's exit, no longer walk them.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

__all__ = ["HIDDEN", "import_monai", "quick_imports"]

#: packages MONAI imports for features wmhseg does not use
HIDDEN = ("matplotlib.pyplot", "scipy.signal", "sklearn")


def import_monai() -> ModuleType:
    """``import monai`` with :data:`HIDDEN` hidden (those already imported are left alone); the
    module. A second call, or a call after MONAI was imported elsewhere, only returns it."""
    if "monai" in sys.modules:
        return sys.modules["monai"]
    hidden = [name for name in HIDDEN if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import monai
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
    return monai


@contextmanager
def quick_imports() -> Iterator[None]:
    """The cyclic garbage collector paused inside the block (the imports of a command's start-up),
    then everything alive frozen into the permanent generation (:func:`gc.freeze`) and the
    collector restored as it was. Objects created later are collected as usual."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
