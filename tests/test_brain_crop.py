"""The brain found without the network. inference.brain_crop: the brain's box holds every brain and
WMH voxel of the truth on both phantom families, the guard predicts again on the head box when
foreground reaches the box's face, and a trained network's masks are those of the head box.
inference.outside_brain: the brain's envelope holds every white-matter and WMH voxel of the truth on
both families and the MNI anatomy, with scalp or skull-stripped, and a bright blob in the scalp is
the only thing dropped."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from wmhseg.data.preprocessing import PreprocessSpec, preprocess_transforms
from wmhseg.errors import InputError
from wmhseg.geometry import voxel_sizes
from wmhseg.inference.brain_box import BrainBox, brain_box, brain_envelope, outside_brain
from wmhseg.inference.infer_config import InferenceSettings
from wmhseg.inference.predictor import FALLBACK_WARNING, Predictor
from wmhseg.labels import LabelSpec
from wmhseg.synth.images import write_scan
from wmhseg.synth.independent import GRID_KINDS, make_phantom

SPEC = PreprocessSpec(spacing=(2.0, 2.0, 2.0))


def _working(paths: dict) -> tuple[torch.Tensor, np.ndarray]:
    """The working-grid image and its label (nearest neighbour) through the training preprocessing."""
    out = preprocess_transforms(SPEC, with_label=True)({k: paths[k] for k in ("t1", "flair", "label")})
    return out["image"], np.asarray(out["label"][0])


def _independent(folder, seed: int, kind: str, spacing_scale: float) -> dict:
    p = make_phantom(seed, kind, voxel_mm=2.0, spacing_scale=spacing_scale)
    paths = {k: folder / f"{kind}_{k}.nii.gz" for k in ("t1", "flair", "label")}
    nib.save(nib.Nifti1Image(p.t1, p.t1_affine), paths["t1"])
    nib.save(nib.Nifti1Image(p.flair, p.affine), paths["flair"])
    nib.save(nib.Nifti1Image(p.label, p.affine), paths["label"])
    return paths


def _check_box_holds_the_truth(image: torch.Tensor, label: np.ndarray) -> BrainBox:
    box = brain_box(image[1], voxel_sizes(image.affine), max_fraction=1.0)
    assert box is not None
    inside = np.zeros(label.shape, bool)
    inside[box.region] = True
    assert (label > 0).sum() > 1000 and (label == 9).sum() > 10
    assert not (label > 0)[~inside].any()  # every brain voxel (CSF around it included) and so every WMH voxel
    _check_envelope_holds_the_truth(image, label)
    return box


def _check_envelope_holds_the_truth(image: torch.Tensor, label: np.ndarray) -> np.ndarray:
    """Every white-matter and WMH voxel lies in the envelope, which leaves the scalp out. (The
    outer cortex and the CSF around the brain may reach a few mm beyond it.)"""
    envelope = brain_envelope(image[1], voxel_sizes(image.affine))
    assert envelope is not None and envelope.shape == label.shape
    assert (label == 9).sum() > 10 and not np.isin(label, (8, 9))[~envelope].any()
    assert envelope.mean() < 0.6
    return envelope


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """Two heads of the training generator at 2 mm (scalp and skull around the brain)."""
    folder = tmp_path_factory.mktemp("heads")
    return [_working(write_scan(folder, f"{i:03d}", "01", wmh_volume_mm3=6000.0, seed=i, anatomy="procedural",
                                shape=(80, 96, 80), spacing=(2.0, 2.0, 2.0))) for i in (1, 2)]


def test_box_holds_the_brain_of_the_training_generator(heads):
    for image, label in heads:
        box = _check_box_holds_the_truth(image, label)
        assert box.fraction < 0.75  # the scalp, skull and the empty field around the head are left out


@pytest.mark.parametrize("kind", [pytest.param(k, marks=() if k == "oblique" else pytest.mark.slow) for k in GRID_KINDS])
def test_box_holds_the_brain_of_the_independent_family(kind, tmp_path):
    image, label = _working(_independent(tmp_path, 3, kind, spacing_scale=1.5))
    _check_box_holds_the_truth(image, label)


@pytest.mark.slow
def test_box_holds_the_brain_of_the_mni_anatomy(tmp_path):
    image, label = _working(write_scan(tmp_path, "001", "01", wmh_volume_mm3=8000.0, seed=4, anatomy="mni",
                                       spacing=(2.0, 2.0, 2.0)))
    assert _check_box_holds_the_truth(image, label).fraction < 0.75


def test_envelope_holds_a_skull_stripped_brain(heads):
    """Skull-stripped (everything outside the labelled brain set to the background's level), the
    brain's edge is the image's edge: lesions there (juxtacortical) stay inside the envelope."""
    for image, label in heads:
        stripped = image.clone()
        stripped[:, torch.from_numpy(label == 0)] = float(image[1].min())
        _check_envelope_holds_the_truth(stripped, label)


def test_a_blob_in_the_scalp_is_all_that_is_dropped(heads):
    image, label = heads[0]
    flair = image[1].numpy()
    envelope = brain_envelope(image[1], voxel_sizes(image.affine))
    # a 3 x 3 x 3 blob on the scalp's outer edge along the x axis (air lies below the head's lowest tenth)
    y, z = label.shape[1] // 2, label.shape[2] // 2
    x = int(np.flatnonzero(flair[:, y, z] > np.percentile(flair, 10) + 0.5)[0])
    blob = np.zeros(label.shape, bool)
    blob[x - 1:x + 2, y - 1:y + 2, z - 1:z + 2] = True
    assert not (blob & envelope).any() and not (label[blob] > 0).any()
    truth = label == 9
    dropped = outside_brain(truth | blob, envelope)
    assert np.array_equal(dropped, blob)  # the blob, and none of the lesions
    assert not outside_brain(truth, envelope).any()

    net = _Stub(2, level=50.0)  # WMH where the FLAIR channel exceeds 50: nowhere in the head but the blob and lesions
    painted = image.clone()
    painted[1, torch.from_numpy(truth | blob)] = 100.0
    make = lambda rule: Predictor(net, SPEC, LabelSpec(), settings=InferenceSettings(  # noqa: E731
        device="cpu", precision="fp32", roi_size=None, outside_brain=rule), size_divisor=2)
    kept, dropped = ((make(rule).predict(painted).wmh > 0.5).numpy() for rule in ("keep", "drop"))
    assert np.array_equal(kept, truth | blob) and np.array_equal(dropped, truth)
    # the uncertainty modes measure the same probability the volume comes from
    assert torch.equal(make("drop").wmh_probability(painted), make("drop").predict(painted).wmh)
    assert not make("drop").predict(painted).warnings

    # most of the mask outside the brain (a brain found wrongly, or a network failing on the scan):
    # nothing is dropped, and the scan's warnings say so
    outer = np.argwhere(~envelope & (flair > np.percentile(flair, 10) + 0.5))
    cap = outer[np.argsort(outer[:, 0], kind="stable")[: 2 * truth.sum()]]  # the left-most scalp: twice the WMH
    painted[(1, *torch.from_numpy(cap).T)] = 100.0  # under 1 % of the field: the brain found stays the same
    doubtful = make("drop").predict(painted)
    assert torch.equal(doubtful.wmh, make("keep").predict(painted).wmh)
    assert len(doubtful.warnings) == 1 and "nothing was dropped" in doubtful.warnings[0]
    assert make("drop").describe()["outside_brain"] == "drop"
    with pytest.raises(InputError, match="did you mean 'drop'"):
        InferenceSettings(outside_brain="dorp")


def test_implausible_boxes_keep_the_head_box():
    small = torch.zeros(40, 40, 40)
    small[5:35, 5:35, 5:35] = 1.0  # a 60 mm "brain" at 2 mm
    assert brain_box(small, (2.0, 2.0, 2.0)) is None
    assert brain_box(torch.zeros(60, 60, 60), (2.0, 2.0, 2.0)) is None  # nothing above the rule
    assert brain_box(torch.ones(60, 60, 60), (2.0, 2.0, 2.0)) is None
    assert brain_envelope(small, (2.0, 2.0, 2.0)) is None  # too little brain to judge: nothing is dropped
    box = BrainBox((slice(0, 10), slice(3, 20), slice(2, 30)), (10, 20, 40))
    assert box.inner_faces() == [(1, 0), (2, 0), (2, 1)]  # faces on the grid's border are the head box's
    aligned, window = box.aligned((4, 4, 4))  # padded head box: (1, 1) on axis 0, (0, 0) on 1 and 2
    assert window == (slice(0, 12), slice(0, 20), slice(0, 32)) and aligned.region[1] == slice(0, 20)


class _Stub(torch.nn.Module):
    """A pointwise "network": foreground (WMH in binary mode, white matter in BISON mode) where the
    FLAIR channel exceeds ``level``."""

    def __init__(self, out_channels: int, level: float = 20.0):
        super().__init__()
        self.out_channels, self.level = out_channels, level
        self.scale = torch.nn.Parameter(torch.tensor(10.0), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.full((x.shape[0], self.out_channels, *x.shape[2:]), -100.0, dtype=x.dtype, device=x.device)
        logits[:, 0] = 0.0
        logits[:, 1 if self.out_channels == 2 else 8] = self.scale * (x[:, 1] - self.level)
        return logits


def _blob_across_a_face(image: torch.Tensor, box: BrainBox) -> tuple[slice, ...]:
    """Paint a bright 6 x 4 x 4 blob on the FLAIR across the low face of the box with most room
    outside it (half inside, half outside); the region outside the box along that axis."""
    axis = int(np.argmax([s.start for s in box.region]))
    start = box.region[axis].start
    assert start >= 3
    blob = [slice((s.start + s.stop) // 2 - 2, (s.start + s.stop) // 2 + 2) for s in box.region]
    blob[axis] = slice(start - 3, start + 3)
    image[(1, *blob)] = 100.0
    outside = [slice(None)] * 3
    outside[axis] = slice(0, start)
    return tuple(outside)


@pytest.mark.parametrize("mode", ["binary", "bison"])
def test_foreground_at_the_box_face_sends_the_scan_to_the_head_box(heads, mode):
    spec = LabelSpec(mode=mode)
    net = _Stub(spec.num_classes)
    make = lambda crop: Predictor(net, SPEC, spec, settings=InferenceSettings(  # noqa: E731
        device="cpu", precision="fp32", roi_size=None, brain_crop=crop, outside_brain="keep"), size_divisor=2)
    cropped, head = make("auto"), make("off")
    image = heads[0][0].clone()
    plain = cropped.predict(image)
    assert plain.box is not None and plain.box.fraction < 0.9 and not plain.warnings
    box = plain.box
    outside = _blob_across_a_face(image, box)
    assert cropped.brain_box(image).aligned(cropped.size_divisor)[0] == box  # the blob does not move the box
    reference = head.predict(image)
    assert (reference.wmh > 0.5)[outside].any() or (reference.classes[outside] != 0).any()  # foreground outside
    guarded = cropped.predict(image)
    assert guarded.warnings == [FALLBACK_WARNING] and guarded.box is None
    torch.testing.assert_close(guarded.wmh, reference.wmh, rtol=0, atol=0)
    if mode == "bison":
        assert torch.equal(guarded.classes, reference.classes)


def _trained_unet(heads, steps: int = 160, size: int = 32) -> torch.nn.Module:
    """A small batch-norm U-Net (divisor 4) fitted to the heads on patches (Dice + CE); 80 steps left
    it finding 30 and 77 of the heads' 750 WMH voxels, 160 about 700 (Dice 0.2-0.5)."""
    from monai.losses import DiceCELoss

    from wmhseg.checkpoint import build_network

    torch.manual_seed(0)
    net = build_network({"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 2,
                         "out_channels": 2, "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1,
                         "norm": "BATCH"})
    loss_fn, opt = DiceCELoss(to_onehot_y=True, softmax=True), torch.optim.Adam(net.parameters(), lr=2e-2)
    rng = np.random.default_rng(0)
    lesions = [np.argwhere(label == 9) for _, label in heads]
    net.train()
    for _ in range(steps):
        xs, ys = [], []
        for (image, label), points in zip(heads, lesions, strict=True):
            # half the patches around WMH, half anywhere in the field (scalp and skull are negatives too)
            centre = (points[rng.integers(len(points))] + rng.integers(-size // 3, size // 3, 3) if rng.random() < 0.5
                      else rng.integers(0, label.shape))
            corner = np.clip(centre - size // 2, 0, np.asarray(label.shape) - size)
            box = tuple(slice(int(c), int(c) + size) for c in corner)
            xs.append(torch.as_tensor(image)[(slice(None), *box)])
            ys.append(torch.as_tensor(label[box] == 9, dtype=torch.float32)[None])
        opt.zero_grad()
        loss_fn(net(torch.stack(xs)), torch.stack(ys)).backward()
        opt.step()
    return net.eval()


@pytest.mark.slow
def test_trained_network_masks_match_the_head_box(heads):
    net = _trained_unet(heads)
    make = lambda crop: Predictor(net, SPEC, LabelSpec(), settings=InferenceSettings(  # noqa: E731
        device="cpu", precision="fp32", brain_crop=crop), size_divisor=4)
    cropped, head = make("auto"), make("off")
    assert cropped.roi_size is None  # batch norm: one pass, where the brain crop applies
    for image, label in heads:
        brain, whole = cropped.predict(image), head.predict(image)
        assert brain.box is not None and brain.box.fraction < 0.9 and not brain.warnings  # the crop was used
        a, b = (brain.wmh > 0.5).numpy(), (whole.wmh > 0.5).numpy()
        truth = label == 9
        assert b.sum() > 200 and 2 * (b & truth).sum() / (b.sum() + truth.sum()) > 0.1  # it found WMH
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.999


def test_brain_crop_setting():
    assert InferenceSettings().brain_crop == "off"
    assert InferenceSettings(brain_crop=False).brain_crop == "off"  # YAML's bare off
    assert InferenceSettings(brain_crop="auto").brain_crop == "auto"
    with pytest.raises(InputError, match="did you mean 'auto'"):
        InferenceSettings(brain_crop="aut")


def test_the_fallback_is_named_in_the_scans_warnings(tmp_path):
    from wmhseg.inference.loading import prepare_scan
    from wmhseg.inference.pipeline import process_prepared
    from wmhseg.inference.records import ResultStore
    from wmhseg.manifest import Scan

    paths = write_scan(tmp_path / "in", "001", "01", wmh_volume_mm3=6000.0, seed=5, anatomy="procedural",
                       shape=(80, 96, 80), spacing=(2.0, 2.0, 2.0))
    predictor = Predictor(_Stub(2), SPEC, LabelSpec(), settings=InferenceSettings(  # the blob lies beyond the brain
        device="cpu", precision="fp32", roi_size=None, brain_crop="auto", outside_brain="keep"), size_divisor=2)
    prepared = prepare_scan(paths["t1"], paths["flair"], SPEC)
    _blob_across_a_face(prepared.image, predictor.brain_box(prepared.image).aligned(predictor.size_divisor)[0])
    scan = Scan("001", "01", paths["t1"], paths["flair"], None, row=1)
    record = process_prepared(predictor, ResultStore(tmp_path / "out", "stub"), scan, prepared)
    assert record["status"] == "ok" and FALLBACK_WARNING in record["warnings"]
    assert record["wmh_mm3"] == pytest.approx(6 * 4 * 4 * 8.0, rel=0.3)  # the whole blob, both sides of the face
