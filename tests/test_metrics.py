"""Challenge metrics against values worked out by hand for the challenge's definitions, the
empty-mask conventions, and the contour and components against SimpleITK's filters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import KDTree

from wmhseg.metrics import (
    avd_percent,
    best_threshold,
    contour,
    dice,
    dice_by_threshold,
    hd95,
    label_lesions,
    lesion_detection,
    segmentation_metrics,
)

SPACING = (0.5, 1.0, 3.0)  # anisotropic: x 0.5 mm, y 1 mm, slices 3 mm


def _square(shape, x0: int, y0: int, z: int) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[x0:x0 + 3, y0:y0 + 3, z] = True
    return m


def test_two_squares_offset_by_two_voxels():
    # A: 3 x 3 x 1 square at x 1..3, y 1..3; B: the same square 2 voxels further along x (x 3..5).
    a, b = _square((8, 6, 3), 1, 1, 1), _square((8, 6, 3), 3, 1, 1)
    # Dice: they share the column x = 3 (3 voxels): 2 * 3 / (9 + 9) = 1/3
    assert dice(a, b) == pytest.approx(1 / 3, rel=1e-6)
    # contours: the in-plane erosion leaves each centre ((2, 1) of A, (4, 1) of B) -> rings of 8
    assert int(contour(a).sum()) == 8 and not contour(a)[2, 2, 1]
    # A's ring -> B's ring, x steps of 0.5 mm: x = 3 column is shared (0, 0, 0); (2, 1) and (2, 3)
    # are one x step from (3, 1), (3, 3) (0.5, 0.5); (1, 1), (1, 2), (1, 3) two steps (1, 1, 1).
    # Sorted [0, 0, 0, .5, .5, 1, 1, 1]: the 95th percentile sits at rank 0.95 * 7 = 6.65, between
    # two 1s -> 1.0 mm; B -> A is the mirror image -> HD95 = 1.0 mm (2 voxels of 0.5 mm).
    assert hd95(a, b, SPACING) == pytest.approx(1.0)
    assert hd95(a, b) == pytest.approx(2.0)  # the same in 1 mm voxels
    assert avd_percent(a, b) == 0.0  # 9 voxels each
    assert lesion_detection(a, b) == (1.0, 1.0)  # one lesion each, overlapping


def test_hd95_percentile_interpolates_on_in_plane_contours():
    # A: 3 x 3 x 1 square (x, y 1..3); B: the single voxel (4, 3). A's ring -> (4, 3), in mm with
    # dx 0.5, dy 1: (3,3) 0.5; (2,3) 1.0; (3,2) sqrt(.25+1) = 1.1180; (1,3) 1.5; (1,2) sqrt(2.25+1)
    # = 1.8028; (3,1) sqrt(.25+4) = 2.0616; (2,1) sqrt(1+4) = sqrt(5) = 2.2361; (1,1) sqrt(2.25+4) = 2.5.
    # Rank 0.95 * 7 = 6.65: sqrt(5) + 0.65 * (2.5 - sqrt(5)) = 2.40762. B -> A: (3, 3) at 0.5.
    a = _square((7, 6, 3), 1, 1, 1)
    b = np.zeros_like(a)
    b[4, 3, 1] = True
    expected = math.sqrt(5) + 0.65 * (2.5 - math.sqrt(5))
    assert hd95(a, b, SPACING) == pytest.approx(expected, abs=1e-5)
    assert hd95(b, a, SPACING) == pytest.approx(expected, abs=1e-5)
    # a 3-D (26-neighbour) erosion would keep A's centre (2, 2) at sqrt(1 + 1) in the contour:
    # 9 distances, rank 7.6 -> sqrt(5) + 0.6 * (2.5 - sqrt(5)) = 2.39443, not the challenge's value
    assert abs(hd95(a, b, SPACING) - (math.sqrt(5) + 0.6 * (2.5 - math.sqrt(5)))) > 0.01


def test_contour_is_in_plane_and_the_image_border_is_foreground():
    cube = np.zeros((5, 5, 5), bool)
    cube[1:4, 1:4, 1:4] = True
    # every slice keeps its own ring of 8; the middle column (2, 2, z) is inside in every slice,
    # top and bottom faces included -> 24 voxels, where a 3-D erosion would leave 26
    c = contour(cube)
    assert int(c.sum()) == 24 and not c[2, 2, 1:4].any()
    # a 3 x 3 square in the image corner: the outside counts as foreground, so the voxels whose
    # only background neighbours lie outside the image ((0,0), (1,0), (0,1), (1,1)) are not contour
    corner = np.zeros((5, 5, 1), bool)
    corner[0:3, 0:3, 0] = True
    assert sorted(map(tuple, np.argwhere(contour(corner))[:, :2])) == [(0, 2), (1, 2), (2, 0), (2, 1), (2, 2)]


def test_lesions_are_fully_connected_components():
    ref = np.zeros((10, 10, 3), bool)
    ref[0, 0, 0] = ref[1, 1, 1] = True  # R1: corners touch -> one lesion with 26-connectivity
    ref[5, 5, 1] = True  # R2
    ref[8, 1:3, 1] = True  # R3
    pred = np.zeros_like(ref)
    pred[1, 1, 1] = True  # P1 overlaps R1
    pred[5, 6, 1] = True  # P2 next to R2, no overlap: R2 missed, P2 false
    pred[8, 2:4, 1] = True  # P3 overlaps R3
    pred[3, 8, 2] = True  # P4 false
    assert label_lesions(ref)[1] == 3 and label_lesions(pred)[1] == 4
    # recall: R1, R3 of 3 = 2/3; precision: P1, P3 of 4 = 1/2; F1 = 2 (2/3)(1/2) / (2/3 + 1/2) = 4/7
    recall, f1 = lesion_detection(pred, ref)
    assert recall == pytest.approx(2 / 3) and f1 == pytest.approx(4 / 7)
    # Dice: overlap (1,1,1) and (8,2,1) = 2 of 5 + 5 voxels -> 0.4; AVD: 5 vs 5 -> 0 %
    m = segmentation_metrics(pred, ref, SPACING)
    assert m["dice"] == pytest.approx(0.4, rel=1e-6) and m["avd"] == 0.0
    assert (m["lesion_recall"], m["lesion_f1"]) == (pytest.approx(2 / 3), pytest.approx(4 / 7))


def test_avd_is_relative_to_the_reference():
    ref = np.zeros((4, 4, 4), bool)
    ref[:2, :2, :2] = True  # 8 voxels
    pred = ref.copy()
    pred[3, 3, 3] = pred[3, 3, 2] = True  # 10 voxels: |10 - 8| / 8 = 25 %
    assert avd_percent(pred, ref) == pytest.approx(25.0)
    assert avd_percent(ref, pred) == pytest.approx(20.0)  # |8 - 10| / 10


def test_both_empty_is_a_perfect_score():
    empty = np.zeros((6, 6, 3), bool)
    assert segmentation_metrics(empty, empty) == {"dice": 1.0, "hd95": 0.0, "avd": 0.0,
                                                  "lesion_recall": 1.0, "lesion_f1": 1.0}


def test_one_empty_mask():
    empty = np.zeros((6, 6, 3), bool)
    blob = _square((6, 6, 3), 1, 1, 1)
    # nothing to find, something found: recall 1 (no reference lesion), precision 0 -> F1 0
    m = segmentation_metrics(blob, empty)
    assert (m["dice"], m["lesion_recall"], m["lesion_f1"]) == (0.0, 1.0, 0.0)
    assert math.isnan(m["hd95"]) and math.isnan(m["avd"])
    # lesions to find, nothing found: recall 0, precision 1 (no predicted lesion) -> F1 0; AVD 100 %
    m = segmentation_metrics(empty, blob)
    assert (m["dice"], m["avd"], m["lesion_recall"], m["lesion_f1"]) == (0.0, 100.0, 0.0, 0.0)
    assert math.isnan(m["hd95"])


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        segmentation_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))


def _sitk_image(mask: np.ndarray, spacing) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(mask.transpose(2, 1, 0)).astype(np.uint8))  # sitk is z, y, x
    img.SetSpacing(tuple(float(s) for s in spacing))
    return img


def _sitk_hd95(pred: np.ndarray, ref: np.ndarray, spacing) -> float:
    """HD95 with SimpleITK's erosion (radius (1, 1, 0)) and physical points, as the challenge does."""
    def points(mask):
        img = _sitk_image(mask, spacing)
        edge = sitk.GetArrayFromImage(sitk.Subtract(img, sitk.BinaryErode(img, (1, 1, 0)))).transpose(2, 1, 0)
        return np.array([img.TransformIndexToPhysicalPoint([int(i) for i in v]) for v in np.argwhere(edge)])

    p, r = points(pred), points(ref)
    return max(np.percentile(KDTree(r).query(p)[0], 95), np.percentile(KDTree(p).query(r)[0], 95))


def _blobs(seed: int, shape=(24, 20, 7)) -> np.ndarray:
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), (1.5, 1.5, 0.7))
    return noise > np.quantile(noise, 0.85)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hd95_and_lesions_match_simpleitk(seed):
    spacing = (0.9, 1.1, 3.0)
    pred, ref = _blobs(2 * seed), _blobs(2 * seed + 1)
    assert hd95(pred, ref, spacing) == pytest.approx(_sitk_hd95(pred, ref, spacing), abs=1e-5)
    cc = sitk.ConnectedComponentImageFilter()
    cc.SetFullyConnected(True)
    cc.Execute(_sitk_image(ref, spacing))
    assert label_lesions(ref)[1] == cc.GetObjectCount()


@pytest.mark.parametrize("reference", ["lesions", "empty"])
def test_dice_by_threshold_is_the_dice_of_each_thresholded_mask(reference):
    rng = np.random.default_rng(3)
    prob = rng.random((14, 12, 9)).astype(np.float32)  # in [0, 1): nothing exceeds 1
    blobs = ndimage.uniform_filter(rng.random(prob.shape), 3) > 0.52
    ref = blobs if reference == "lesions" else np.zeros(prob.shape, bool)
    thresholds = [0.05, 0.3, 0.5, float(prob[0, 0, 0]), 0.97, 1.0]  # one equal to a voxel's value: not above it
    expected = [dice(prob > t, ref) for t in thresholds]  # MONAI's Dice of each mask (float32)
    assert dice_by_threshold(prob, ref, thresholds) == pytest.approx(expected, rel=1e-6)
    if reference == "empty":  # a non-empty mask scores 0, an empty one (threshold 1) 1
        assert expected[0] == 0 and expected[-1] == 1
    with pytest.raises(ValueError, match="shape"):
        dice_by_threshold(prob, ref[:-1], thresholds)


def test_best_threshold_finds_where_the_probability_crosses_the_lesion_edge():
    # the probability falls by 0.05 per voxel of distance and equals 0.7 on the spheres' surfaces
    # (radii between voxel centres' distances, so no voxel sits on a surface): above 0.7 is exactly
    # the lesion, and every other threshold of the grid adds or removes a shell of voxels
    grid = np.indices((30, 30, 30))
    thresholds = [round(0.2 + 0.05 * i, 2) for i in range(15)]
    curves = []
    for centre, radius in (((14, 15, 13), 6.5), ((12, 16, 15), 9.3)):
        distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)))
        prob = np.clip(0.7 + 0.05 * (radius - distance), 0.0, 1.0)
        curves.append(dice_by_threshold(prob, distance < radius, thresholds))
    threshold, mean_dice = best_threshold(curves, thresholds, default=0.5)
    assert threshold == 0.7 and mean_dice == pytest.approx(1.0)
    assert max(np.mean(curves, axis=0)[[thresholds.index(0.65), thresholds.index(0.75)]]) < 0.95
    # ties go to the threshold nearest the default; no curves leave the default
    assert best_threshold([[0.8, 0.9, 0.9, 0.9]], [0.3, 0.4, 0.5, 0.6], default=0.58) == (0.6, 0.9)
    assert best_threshold([], thresholds, default=0.5)[0] == 0.5
    with pytest.raises(ValueError, match="thresholds"):
        best_threshold([[0.8, 0.9]], [0.3, 0.4, 0.5], default=0.5)
