"""Goal 3, start-up: what a fresh ``infer.py --help`` costs beyond the interpreter's own start.

Whole processes, as a user runs them: ``python -c pass`` (the interpreter alone, the floor no
code of ours can lower), ``python infer.py --help`` and ``python analyze.py --help``, called in
turn round after round so a change of load hits all three alike. Each process's wall time and
its CPU time (user + system of the child, from ``resource.getrusage``) are recorded: on a shared
machine the wall time carries the wait for a core, the CPU time only the work.
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from timing import loadavg

__all__ = ["run", "HELP_TARGET_S", "fresh_process"]

ROOT = Path(__file__).resolve().parents[1]
HELP_TARGET_S = 1.0
COMMANDS = {
    "interpreter": ["-c", "pass"],
    "infer_help": [str(ROOT / "infer.py"), "--help"],
    "analyze_help": [str(ROOT / "analyze.py"), "--help"],
}


def fresh_process(args: list[str]) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and exit code of ``python *args`` in a fresh interpreter."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, check=False)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.returncode


def run(*, quick: bool = False) -> dict[str, Any]:
    """Median wall and CPU seconds of each command over alternating rounds; rows for the table."""
    rounds = 3 if quick else 7
    wall: dict[str, list[float]] = {k: [] for k in COMMANDS}
    cpu: dict[str, list[float]] = {k: [] for k in COMMANDS}
    codes: dict[str, set[int]] = {k: set() for k in COMMANDS}
    load_before = loadavg()
    for _ in range(rounds):
        for name, args in COMMANDS.items():
            w, c, code = fresh_process(args)
            wall[name].append(w)
            cpu[name].append(c)
            codes[name].add(code)
    load_after = loadavg()
    med = {k: {"wall_s": round(statistics.median(wall[k]), 3), "cpu_s": round(statistics.median(cpu[k]), 3)}
           for k in COMMANDS}
    floor = med["interpreter"]
    rows = []
    for name, script in (("infer_help", "infer.py"), ("analyze_help", "analyze.py")):
        m, ok = med[name], codes[name] == {0}
        rows.append({
            "goal": f"3. python {script} --help (fresh process)",
            "baseline": f"python -c pass: {floor['wall_s']:.2f} s wall, {floor['cpu_s']:.2f} s CPU",
            "candidate": (f"{m['wall_s']:.2f} s wall, {m['cpu_s']:.2f} s CPU "
                          f"({m['cpu_s'] - floor['cpu_s']:.2f} s beyond the interpreter)" if ok
                          else f"exit codes {sorted(codes[name])}"),
            "ratio": None,
            "target": f"< {HELP_TARGET_S:g} s",
            "met": ok and m["wall_s"] < HELP_TARGET_S,
        })
    return {"name": "startup", "available": True, "rows": rows,
            "details": {"rounds": rounds, "median": med, "wall_s": wall, "cpu_s": cpu,
                        "loadavg_during": [load_before, load_after]}}
