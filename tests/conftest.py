"""Shared test fixtures: a tiny synthetic cohort written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from wmhseg.data.data_config import register_configs
from wmhseg.synth.images import write_dataset

register_configs()  # the data group's schema, as train.py registers it


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Manifest path of 4 subjects x 2 sessions of 32^3, 1 mm synthetic scans with labels.

    Subject IDs are ``"001"``-``"004"``, sessions ``"01"``, ``"02"``; the manifest also has a
    ``wmh_mm3`` column with each label's true WMH volume. Treat the files as read-only.
    """
    return write_dataset(tmp_path_factory.mktemp("tiny_dataset"), n_subjects=4, n_sessions=2,
                         shape=(32, 32, 32), seed=0, wmh_volume_mm3=(150.0, 400.0))
