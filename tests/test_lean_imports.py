"""infer.py imports MONAI without the optional packages it never uses, and they stay importable;
the commands import without the cyclic garbage collector and freeze what they imported."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

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


@pytest.mark.parametrize("enabled", [True, False])
def test_quick_imports_pause_the_collector_then_freeze_and_restore_it(enabled):
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        before = gc.get_freeze_count()
        from wmhseg.lean_imports import quick_imports

        with quick_imports():
            assert not gc.isenabled()
            kept = [[i] for i in range(1000)]  # objects made inside are frozen with the rest
        assert gc.isenabled() is enabled
        assert gc.get_freeze_count() >= before + len(kept)
    finally:
        gc.unfreeze()  # the test process's objects go back to the collector
        (gc.enable if was else gc.disable)()


def test_quick_imports_restore_the_collector_when_an_import_fails():
    from wmhseg.lean_imports import quick_imports

    assert gc.isenabled()
    try:
        with pytest.raises(ModuleNotFoundError), quick_imports():
            import wmhseg_no_such_module  # noqa: F401
        assert gc.isenabled()
    finally:
        gc.unfreeze()
