"""infer.py imports MONAI without the optional packages it never uses, and they stay importable."""

from __future__ import annotations

import subprocess
import sys

from wmhseg.lean_imports import HIDDEN

_CHILD = """
import sys
from wmhseg.lean_imports import import_monai
import_monai()
import wmhseg.inference.runner  # everything a run of infer.py imports before its first scan
loaded = [name for name in {hidden!r} if name in sys.modules]
import monai.transforms, monai.inferers
import importlib
for name in {hidden!r}:
    importlib.import_module(name)  # un-hidden: a later import works
print("loaded:", loaded)
"""


def test_inference_imports_monai_without_its_unused_optional_packages():
    out = subprocess.run([sys.executable, "-c", _CHILD.format(hidden=HIDDEN)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "loaded: []" in out.stdout


def test_a_second_call_returns_the_imported_module():
    import monai

    from wmhseg.lean_imports import import_monai

    assert import_monai() is monai
