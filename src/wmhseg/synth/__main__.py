"""``python -m wmhseg.synth``: write synthetic data sets to disk.

    python -m wmhseg.synth study OUT_DIR [--n-als 30 --n-control 30 --seed 0 --spacing 2 --followups realistic]
    python -m wmhseg.synth cohort OUT_DIR [--n-als 232 --n-control 207 --seed 0]
    python -m wmhseg.synth study OUT_DIR --visit-probabilities 0 0.5 0.5 --p-survival-data 0.9   # 2-3 visits
    python -m wmhseg.synth bison OUT_DIR [--n-subjects 4 --seed 0]
    python -m wmhseg.synth independent OUT_DIR [--n-subjects 4 --seed 0]
    python -m wmhseg.synth score STUDY NAME=RUN_DIR [NAME=RUN_DIR ...]   # infer.py runs against a study's truth

``study`` writes scans + manifest + clinical table + truth (:func:`wmhseg.synth.study.write_study`);
its follow-ups are ``realistic`` (repositioned head, contrast drift, a scanner change for some
subjects: :mod:`wmhseg.synth.followups`) or ``ideal`` (the baseline's grid, pose and scanner);
``cohort`` writes a volume table + clinical table + truth without images
(:func:`wmhseg.synth.cohort.write_cohort`); ``bison`` writes a BISON run in MINC, as BISON and
PELICAN leave it (:func:`wmhseg.synth.bison_run.write_bison_run`); ``independent`` writes
phantoms of the independent validation family with a manifest
(:func:`wmhseg.synth.independent.write_family`); ``score`` prints, for each ``infer.py`` output
folder on a study, the within-subject error SD, the share of the true change measured and the
new-lesion recall and precision (:mod:`wmhseg.synth.scoring`).
"""

from __future__ import annotations

import argparse
import json

from wmhseg.synth.cohort import CohortParams, simulate_cohort, write_cohort


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wmhseg.synth", description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("study", "cohort", "bison", "independent", "score"),
                        help="scans + tables, tables only, a BISON run (MINC), independent validation phantoms, "
                             "or infer.py runs scored against a study's truth")
    parser.add_argument("out_dir", help="the folder to write (score: the study)")
    parser.add_argument("runs", nargs="*", metavar="NAME=RUN_DIR", help="score: infer.py output folders on the study")
    parser.add_argument("--n-als", type=int, default=None)
    parser.add_argument("--n-control", type=int, default=None)
    parser.add_argument("--n-subjects", type=int, default=4,
                        help="subjects of a BISON run (two visits each) or independent phantoms")
    parser.add_argument("--visit-probabilities", type=float, nargs="+", default=None, metavar="P",
                        help="probabilities of 1, 2, ... visits per subject (study, cohort; sum to 1)")
    parser.add_argument("--p-survival-data", type=float, default=None,
                        help="share of patients with survival data (study, cohort)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spacing", type=float, default=2.0, help="voxel size of the scans (study)")
    parser.add_argument("--shape", type=int, nargs=3, default=None, help="grid size of the scans (study)")
    parser.add_argument("--anatomy", default="mni", choices=("mni", "procedural"))
    parser.add_argument("--followups", default="realistic", choices=("realistic", "ideal"),
                        help="how follow-up scans are acquired (study)")
    args = parser.parse_args(argv)

    if args.what == "score":
        return _score(parser, args.out_dir, args.runs)
    if args.runs:
        parser.error(f"unexpected arguments {args.runs} (only score takes NAME=RUN_DIR)")
    if args.what == "independent":
        from wmhseg.synth.independent import write_family

        print(json.dumps({"manifest": str(write_family(args.out_dir, n_subjects=args.n_subjects, seed=args.seed))}))
        return 0
    design = {"n_als": args.n_als, "n_control": args.n_control, "p_survival_data": args.p_survival_data,
              "visit_probabilities": tuple(args.visit_probabilities) if args.visit_probabilities else None}
    try:
        params = CohortParams(seed=args.seed, **{k: v for k, v in design.items() if v is not None})
    except ValueError as exc:
        parser.error(str(exc))
    if args.what == "bison":
        from wmhseg.synth.bison_run import write_bison_run

        paths = write_bison_run(args.out_dir, n_subjects=args.n_subjects, seed=args.seed)
    elif args.what == "study":
        from wmhseg.synth.followups import IDEAL, FollowUps
        from wmhseg.synth.study import write_study

        followups = IDEAL if args.followups == "ideal" else FollowUps()
        paths = write_study(args.out_dir, params, anatomy=args.anatomy, spacing=args.spacing, shape=args.shape,
                            followups=followups)
    else:
        paths = write_cohort(simulate_cohort(params), args.out_dir)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0


def _score(parser: argparse.ArgumentParser, study: str, runs: list[str]) -> int:
    import pandas as pd

    from wmhseg.errors import InputError
    from wmhseg.synth.scoring import score_table

    named = dict(r.split("=", 1) for r in runs if "=" in r)
    if not runs or len(named) != len(runs):
        parser.error("score needs one or more NAME=RUN_DIR (e.g. longitudinal=demo_out/infer)")
    try:
        table = score_table(study, named)
    except InputError as exc:
        parser.exit(2, f"python -m wmhseg.synth score: error: {exc}\n")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
