"""Lesion change classes on hand-built masks."""

from __future__ import annotations

import numpy as np
import pytest

from wmhseg.changes import CHANGE_CODES, lesion_changes


def test_each_change_class_on_hand_built_lesions():
    before = np.zeros((30, 10, 10), bool)
    after = before.copy()
    after[1:3, 1:3, 1:3] = True                                  # new: 8 voxels
    before[6:8, 1:3, 1:3] = True
    after[6:9, 1:3, 1:4] = True  # 8 -> 18: enlarging
    before[12:15, 1:4, 1:4] = True
    after[12:14, 1:4, 1:4] = True  # 27 -> 18: shrinking
    before[18:21, 1:4, 1:4] = True
    after[18:21, 1:4, 1:3] = True
    after[18, 1, 3] = True  # 27 -> 19: -8 > 6.75
    before[24:26, 1:3, 1:3] = True                               # vanished: shrinking
    labels, table = lesion_changes(before, after, voxel_mm3=2.0)
    assert table["change"].tolist() == ["new", "enlarging", "shrinking", "shrinking", "shrinking"]
    assert table["before_mm3"].tolist() == [0.0, 16.0, 54.0, 54.0, 16.0]
    assert table["after_mm3"].tolist() == [16.0, 36.0, 36.0, 38.0, 0.0]
    assert labels[1, 1, 1] == CHANGE_CODES["new"] and labels[8, 2, 3] == CHANGE_CODES["enlarging"]
    assert labels[14, 1, 1] == CHANGE_CODES["shrinking"], "voxels of the earlier lesion carry its class too"


def test_small_changes_are_stable_and_bad_input_is_refused():
    before = np.zeros((10, 10, 10), bool)
    before[2:6, 2:6, 2:6] = True                                 # 64 voxels
    after = before.copy()
    after[6, 2:6, 2:4] = True                                    # +8 voxels < 25% of 64
    labels, table = lesion_changes(before, after, voxel_mm3=1.0)
    assert table["change"].tolist() == ["stable"] and set(np.unique(labels)) == {0, CHANGE_CODES["stable"]}
    one = np.zeros((10, 10, 10), bool)
    one[0, 0, 0] = True
    two = one.copy()
    two[0, 0, 1] = True  # 1 -> 2 voxels: below the two-voxel floor
    assert lesion_changes(one, two, voxel_mm3=1.0)[1]["change"].tolist() == ["stable"]
    assert lesion_changes(before, before, voxel_mm3=1.0)[1]["change"].tolist() == ["stable"]
    with pytest.raises(ValueError, match="shapes"):
        lesion_changes(before, after[:9], voxel_mm3=1.0)
    with pytest.raises(ValueError, match="voxel_mm3"):
        lesion_changes(before, after, voxel_mm3=0.0)
