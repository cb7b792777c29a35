"""``python -m wmhseg.bison manifest --bison-csv CSV --labels-dir DIR --out MANIFEST``.

Exit code: 0 every row imported; 1 some rows left out (listed in ``<manifest stem>_missing.csv``
and on stderr); 2 nothing could be imported (bad CSV, bad option, no usable row).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wmhseg.bison.importer import LABEL_KINDS, import_bison_run, write_import
from wmhseg.errors import WmhsegError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m wmhseg.bison", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("manifest", help="a BISON run -> a wmhseg training manifest")
    m.add_argument("--bison-csv", required=True, type=Path, help="BISON's input CSV (Subjects,T1s,FLAIRs,Masks,XFMs)")
    m.add_argument("--labels-dir", required=True, type=Path, help="BISON's output folder (RF0_<Subjects>_Label.mnc)")
    m.add_argument("--out", required=True, type=Path, help="the manifest to write (CSV)")
    m.add_argument("--id-pattern", default="{subject}_{session}",
                   help="how Subjects splits into IDs (default: {subject}_{session}; without {session}: --session)")
    m.add_argument("--session", default="1", help="session ID when --id-pattern has no {session} (default: 1)")
    m.add_argument("--classifier", default="RF0", help="BISON's -c option, the outputs' prefix (default: RF0)")
    m.add_argument("--label-kind", default="Label", choices=LABEL_KINDS, help="Label (mask grid) or Labelr")
    m.add_argument("--label-dir", type=Path, default=None,
                   help="where labels resampled onto the FLAIR grid go (default: <out folder>/labels)")
    m.add_argument("--base-dir", type=Path, default=None, help="folder of relative paths in the CSV (default: its own)")
    m.add_argument("--xfm-pattern", default=None,
                   help="linear native->stereotaxic transform of each row, e.g. 'xfm/{Subjects}_t1_stx.xfm' "
                        "(placeholders {Subjects} {subject} {session}); gives native volumes at inference")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    label_dir = args.label_dir or args.out.resolve().parent / "labels"
    try:
        result = import_bison_run(args.bison_csv, args.labels_dir, label_dir, id_pattern=args.id_pattern,
                                  session=args.session, classifier=args.classifier, label_kind=args.label_kind,
                                  base_dir=args.base_dir, xfm_pattern=args.xfm_pattern)
    except WmhsegError as exc:
        print(f"wmhseg.bison: error: {exc}", file=sys.stderr)
        return 2
    for problem in result.problems:
        print(f"wmhseg.bison: left out {problem['bison_subject']}: {problem['problem']}", file=sys.stderr)
    if not result.rows:
        print("wmhseg.bison: error: no row could be imported", file=sys.stderr)
        return 2
    manifest, missing = write_import(result, args.out)
    print(f"wmhseg.bison: {len(result.rows)} scans -> {manifest}"
          + (f"; {len(result.problems)} left out, listed in {missing}" if missing else ""))
    return 1 if result.problems else 0


if __name__ == "__main__":
    sys.exit(main())
