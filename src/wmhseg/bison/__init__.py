"""BISON interoperability: turn a BISON run (its CSV and label outputs) into a training manifest.

``python -m wmhseg.bison manifest --bison-csv CSV --labels-dir DIR --out MANIFEST``; see
:mod:`wmhseg.bison.importer`.
"""

from __future__ import annotations

from wmhseg.bison.importer import ImportResult, import_bison_run, write_import

__all__ = ["ImportResult", "import_bison_run", "write_import"]
