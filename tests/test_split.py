"""Subject-level train/validation splits and k-fold."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from wmhseg.data.split import split_by_subject, subject_folds
from wmhseg.errors import InputError
from wmhseg.manifest import read_manifest


@dataclass(frozen=True)
class _S:
    subject_id: str
    session_id: str


def _cohort(n_subjects: int = 10, n_sessions: int = 3) -> list[_S]:
    return [_S(f"{s:03d}", f"{t:02d}") for s in range(n_subjects) for t in range(n_sessions)]


def test_no_subject_on_both_sides(tiny_dataset) -> None:
    scans = read_manifest(tiny_dataset)
    train, val = split_by_subject(scans, val_fraction=0.25, seed=1)
    assert len(train) == 6 and len(val) == 2
    assert not {s.subject_id for s in train} & {s.subject_id for s in val}
    assert sorted(s.key for s in train + val) == sorted(s.key for s in scans)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_fraction_rounding_and_order_independence(seed: int) -> None:
    scans = _cohort(10, 3)
    train, val = split_by_subject(scans, 0.2, seed)
    assert len({s.subject_id for s in val}) == 2 and len(val) == 6
    shuffled = scans[::-1]
    train2, val2 = split_by_subject(shuffled, 0.2, seed)
    assert {s.subject_id for s in val2} == {s.subject_id for s in val}  # rank-independent
    assert train == [s for s in scans if s in set(train)]  # input order kept


def test_kfold_partitions_subjects() -> None:
    scans = _cohort(11, 2)
    seen: list[str] = []
    for fold in range(4):
        train, val = split_by_subject(scans, seed=5, n_folds=4, fold=fold)
        val_subjects = {s.subject_id for s in val}
        assert not val_subjects & {s.subject_id for s in train}
        assert 2 <= len(val_subjects) <= 3
        seen += sorted(val_subjects)
    assert sorted(seen) == sorted({s.subject_id for s in scans})
    assert [len(f) for f in subject_folds([s.subject_id for s in scans], 4, seed=5)] == [3, 3, 3, 2]


def test_zero_fraction_and_bad_arguments() -> None:
    scans = _cohort(3, 1)
    assert split_by_subject(scans, 0.0) == (scans, [])
    with pytest.raises(InputError, match=r"data.val_fraction=1.0 must be in \[0, 1\)"):
        split_by_subject(scans, 1.0)
    with pytest.raises(InputError, match=r"data.fold=3 must be an integer in \[0, 3\)"):
        split_by_subject(scans, n_folds=3, fold=3)
    with pytest.raises(InputError, match="data.n_folds=4 is more than the 3 subjects"):
        split_by_subject(scans, n_folds=4, fold=0)
    with pytest.raises(InputError, match="data.fold=1 is set but data.n_folds is not"):
        split_by_subject(scans, fold=1)
    with pytest.raises(InputError, match="1 subject"):
        split_by_subject(_cohort(1, 3), 0.5)
    # at least one subject stays in training even with a large fraction
    train, val = split_by_subject(_cohort(2, 1), 0.9)
    assert len(train) == 1 and len(val) == 1
