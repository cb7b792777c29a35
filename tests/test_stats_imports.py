"""Importing the analysis stays light: the heavy libraries load only where a run uses them.

A fresh ``python analyze.py`` pays for every module imported at start-up, so the figures'
matplotlib, scikit-survival and statsmodels' models must not be pulled in by importing
:mod:`wmhseg.stats.analysis` itself. Checked in a fresh interpreter through ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("matplotlib", "sksurv", "sklearn", "statsmodels", "torch")


def test_importing_the_analysis_loads_no_heavy_library():
    code = (
        "import json, sys; import wmhseg.stats.analysis; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing wmhseg.stats.analysis loaded {loaded[:10]}"
