"""Grid geometry against answers worked out by hand."""

import numpy as np
import pytest

from wmhseg.errors import InputError
from wmhseg.geometry import bounding_box, network_divisor, padding_to_multiple, voxel_sizes, voxel_volume_mm3


def test_voxel_sizes_and_volume_of_an_oblique_anisotropic_grid():
    # 0.9 x 0.9 x 3 mm voxels rotated 30 degrees about z, LPS-flipped x: column norms are the sizes
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    rot = np.array([[-c, -s, 0], [s, -c, 0], [0, 0, 1.0]])  # orthonormal columns: sizes and volume unchanged
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.9, 0.9, 3.0])
    affine[:3, 3] = [10, -20, 5]
    np.testing.assert_allclose(voxel_sizes(affine), [0.9, 0.9, 3.0])
    assert voxel_volume_mm3(affine) == pytest.approx(0.9 * 0.9 * 3.0)


def test_bounding_box_with_margin_is_clipped_to_the_array():
    mask = np.zeros((10, 8, 6), bool)
    mask[1, 3:5, 2] = True
    mask[4, 4, 4] = True
    assert bounding_box(mask) == (slice(1, 5), slice(3, 5), slice(2, 5))
    # margin 2: x 1-2 -> clipped at 0, z 5+2 -> clipped at 6
    assert bounding_box(mask, 2) == (slice(0, 7), slice(1, 7), slice(0, 6))
    assert bounding_box(mask, (0, 1, 0)) == (slice(1, 5), slice(2, 6), slice(2, 5))
    assert bounding_box(np.zeros((3, 3, 3), bool)) is None


def test_network_divisor_is_the_per_axis_product_of_strides():
    assert network_divisor({"strides": [2, 2, 2, 2]}) == (16, 16, 16)
    assert network_divisor({"strides": [[2, 2, 1], [2, 2, 2], 2]}) == (8, 8, 4)
    assert network_divisor({"blocks_down": [1, 2, 2, 4]}) == (8, 8, 8)
    assert network_divisor({"kernel_size": 3}) is None
    with pytest.raises(InputError, match="each stride must be a number or three numbers"):
        network_divisor({"strides": [[2, 2]]})


def test_padding_to_multiple_splits_evenly_with_the_odd_voxel_after():
    assert padding_to_multiple((13, 16, 9), (8, 8, 4)) == [(1, 2), (0, 0), (1, 2)]
    assert padding_to_multiple((15, 16, 17), (16, 16, 16)) == [(0, 1), (0, 0), (7, 8)]
