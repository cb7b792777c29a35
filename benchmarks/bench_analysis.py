"""Goal 5: the full analysis of a 439-subject cohort (all models, survival, figures, report).

The cohort is simulated with :func:`wmhseg.synth.cohort.simulate_cohort` (the study's 232 ALS
patients and 207 controls) and written as the two CSV tables. Two figures are reported:

* ``analyze()`` in a warm process (imports done): the analysis itself, with its stage split;
* ``python analyze.py ...`` in a fresh interpreter: what a user waits for, imports included;
* ``python analyze.py --help`` in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from timing import Samples, loadavg

__all__ = ["run"]

TARGET_S = 3.0
HELP_TARGET_S = 1.0
# the modules a fresh analyze.py run imports (Hydra, the statistics, statsmodels' formula engine, the figures)
IMPORTS = ("import hydra, omegaconf, wmhseg.stats.analysis, wmhseg.stats.figures, statsmodels.formula._manager, "
           "matplotlib.backends.backend_agg")
ROOT = Path(__file__).resolve().parents[1]


def available() -> tuple[bool, str]:
    """Whether the statistics and the cohort simulator can be imported."""
    try:
        import wmhseg.stats.analysis  # noqa: F401
        import wmhseg.synth.cohort  # noqa: F401
    except ImportError as exc:
        return False, f"not available: {exc}"
    return True, ""


def _in_process(paths: dict[str, Path], tmp: str, repeats: int) -> tuple[float, Samples, list[dict[str, float]]]:
    """``analyze()`` ``repeats + 1`` times; the first call (which also pays the imports) apart."""
    from wmhseg.stats.analysis import analyze

    warm = Samples("analyze_in_process")
    stages: list[dict[str, float]] = []
    first_s = 0.0
    for i in range(repeats + 1):
        t = time.perf_counter()
        out = analyze({"volumes": str(paths["volumes"]), "clinical": str(paths["clinical"]),
                       "out_dir": str(Path(tmp) / f"out{i}")})
        seconds = time.perf_counter() - t
        if i == 0:
            first_s = seconds
        else:
            warm.seconds.append(seconds)
            stages.append({k: round(float(v), 3) for k, v in out.get("seconds", {}).items()})
    return first_s, warm, stages


def _fresh(paths: dict[str, Path], tmp: str, repeats: int) -> dict[str, Any]:
    """``python analyze.py`` (median of ``repeats`` runs), ``--help`` and the imports alone, each in
    fresh interpreters."""
    script = ROOT / "analyze.py"
    if not script.is_file():
        return {"cold": None, "cold_runs": [], "imports_s": None, "help_s": None, "error": "analyze.py not found"}
    runs, error = Samples("analyze_fresh_process"), ""
    for i in range(repeats):
        cmd = [sys.executable, str(script), f"volumes={paths['volumes']}", f"clinical={paths['clinical']}",
               f"out_dir={Path(tmp) / f'out_cli{i}'}", f"hydra.run.dir={Path(tmp) / f'hydra{i}'}"]
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        runs.seconds.append(time.perf_counter() - t)
        if proc.returncode != 0:
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["failed"]
            error = f"exit {proc.returncode}: {last[0][:200]}"
            break
    # what a fresh process pays before any work: interpreter start-up and the imports
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORTS], cwd=ROOT, capture_output=True, check=False)
    imports_s = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT, capture_output=True, check=False)
    return {"cold": None if error else runs.median, "cold_runs": [round(x, 3) for x in runs.seconds],
            "imports_s": imports_s, "help_s": time.perf_counter() - t, "error": error}


def _rows(med: float, fresh: dict[str, Any]) -> list[dict[str, Any]]:
    cold, imports_s, help_s = fresh["cold"], fresh["imports_s"], fresh["help_s"]
    return [{
        "goal": "5. analysis of 439 subjects (in process)", "baseline": "-", "candidate": f"analyze(): {med:.2f} s",
        "ratio": None, "target": f"< {TARGET_S:g} s", "met": med < TARGET_S,
    }, {
        "goal": "5. analysis of 439 subjects (python analyze.py)", "baseline": "-",
        "candidate": (f"fresh process: {cold:.2f} s (median of {len(fresh['cold_runs'])}), of which start-up "
                      f"and imports {imports_s:.2f} s"
                      if cold is not None and imports_s is not None else f"failed ({fresh['error']})"),
        "ratio": None, "target": f"< {TARGET_S:g} s", "met": (cold < TARGET_S) if cold is not None else False,
    }, {
        "goal": "5. python analyze.py --help", "baseline": "-",
        "candidate": f"fresh process: {help_s:.2f} s" if help_s is not None else "not measured",
        "ratio": None, "target": f"< {HELP_TARGET_S:g} s", "met": (help_s < HELP_TARGET_S) if help_s is not None else False,
    }]


def run(*, quick: bool = False) -> dict[str, Any]:
    """Time the whole analysis in-process (repeated) and once as a fresh ``analyze.py`` process."""
    ok, reason = available()
    if not ok:
        return {"name": "analysis", "available": False, "reason": reason, "rows": []}
    from wmhseg.synth.cohort import CohortParams, simulate_cohort, write_cohort

    with tempfile.TemporaryDirectory(prefix="wmhseg-bench-analysis-") as tmp:
        t0 = time.perf_counter()
        cohort = simulate_cohort(CohortParams())
        paths = write_cohort(cohort, Path(tmp) / "cohort")
        simulate_s = time.perf_counter() - t0
        first_s, warm, stages = _in_process(paths, tmp, 1 if quick else 3)
        fresh = _fresh(paths, tmp, 1 if quick else 3)

    def rounded(x: float | None) -> float | None:
        return round(x, 3) if x is not None else None

    return {
        "name": "analysis",
        "available": True,
        "rows": _rows(warm.median, fresh),
        "details": {
            "n_subjects": int(cohort.volumes["subject_id"].nunique()),
            "n_scans": len(cohort.volumes),
            "simulate_and_write_s": round(simulate_s, 3),
            "analyze_first_call_s": round(first_s, 3),
            "analyze_in_process": warm.to_dict(),
            "stages_s": stages[-1] if stages else {},
            "cli_fresh_process_s": rounded(fresh["cold"]),
            "cli_fresh_process_runs_s": fresh["cold_runs"],
            "fresh_process_imports_s": rounded(fresh["imports_s"]),
            "help_fresh_process_s": rounded(fresh["help_s"]),
            "cli_error": fresh["error"] or None,
            "loadavg": loadavg(),
        },
    }
