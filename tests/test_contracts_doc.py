"""docs/contracts.md lists every contract column as the code defines it, in the code's order."""

import re
from pathlib import Path

import pytest

from wmhseg import schema

DOC = Path(__file__).resolve().parents[1] / "docs" / "contracts.md"
SECTIONS = {  # heading in the doc -> the code's columns; optional columns follow the required ones
    "manifest": schema.MANIFEST_REQUIRED + schema.MANIFEST_OPTIONAL,
    "clinical table": schema.CLINICAL_COLUMNS,
    "volumes.csv": schema.VOLUME_COLUMNS,
    "metrics.csv": schema.METRICS_COLUMNS,
    "progression.csv": schema.PROGRESSION_COLUMNS,
    "lesions.csv": schema.CHANGE_COLUMNS,
    "headline.json": schema.HEADLINE_KEYS + schema.ESTIMATE_FIELDS,
    "models.csv": schema.MODELS_COLUMNS,
    "left_out.csv": schema.LEFT_OUT_COLUMNS,
}


def _section_names(heading: str) -> list[str]:
    text = DOC.read_text()
    start = re.search(rf"^### {re.escape(heading)}\b.*$", text, flags=re.M)
    assert start, f"no section '### {heading}' in {DOC.name}"
    end = re.search(r"^##", text[start.end():], flags=re.M)
    body = text[start.end(): start.end() + end.start() if end else None]
    return re.findall(r"^\| `([^`]+)` \|", body, flags=re.M)


@pytest.mark.parametrize("heading", SECTIONS)
def test_doc_lists_the_code_columns_in_order(heading):
    assert _section_names(heading) == list(SECTIONS[heading])


def test_volume_tables_agree():
    assert schema.VOLUME_COLUMNS[: len(schema.VOLUME_CORE)] == schema.VOLUME_CORE
    assert schema.VOLUME_CORE[:3] == schema.VOLUME_REQUIRED
    assert len(set(schema.VOLUME_COLUMNS)) == len(schema.VOLUME_COLUMNS)


def test_readme_links_the_contracts():
    assert "docs/contracts.md" in (DOC.parents[1] / "README.md").read_text()
