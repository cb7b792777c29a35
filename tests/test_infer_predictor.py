"""The predictor: safe checkpoint loading, the three layers, whole-volume vs sliding window."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from inference_cases import make_checkpoint, write_case

from wmhseg.errors import CheckpointError, InputError, ScanError
from wmhseg.inference.infer_config import InferenceSettings
from wmhseg.inference.loading import prepare_scan
from wmhseg.inference.predictor import Predictor


@pytest.fixture(scope="module")
def binary_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "threshold.ckpt")


@pytest.fixture(scope="module")
def lps_case(tmp_path_factory):
    return write_case(tmp_path_factory.mktemp("lps"), "lps", codes="LPS", origin=(3.3, -7.9, 12.1))


def test_incomplete_or_unsafe_checkpoints_are_refused(tmp_path, binary_ckpt):
    ckpt = torch.load(binary_ckpt, weights_only=True)
    no_meta = {k: v for k, v in ckpt.items() if k != "wmhseg"}
    torch.save(no_meta, tmp_path / "no_meta.ckpt")
    with pytest.raises(CheckpointError, match="no 'wmhseg' section"):
        Predictor.from_checkpoint(tmp_path / "no_meta.ckpt")
    bad_target = {**ckpt, "wmhseg": {**ckpt["wmhseg"], "network": {"_target_": "os.system", "command": "true"}}}
    torch.save(bad_target, tmp_path / "target.ckpt")
    with pytest.raises(CheckpointError, match="not allowed"):
        Predictor.from_checkpoint(tmp_path / "target.ckpt")
    wrong = {**ckpt, "state_dict": {"net.other.weight": torch.zeros(1)}}
    torch.save(wrong, tmp_path / "weights.ckpt")
    with pytest.raises(CheckpointError, match="weights"):
        Predictor.from_checkpoint(tmp_path / "weights.ckpt")


def test_settings_are_validated():
    with pytest.raises(InputError, match="did you mean 'fp32'"):
        InferenceSettings(precision="fp33")
    with pytest.raises(InputError, match="roi_size"):
        InferenceSettings(roi_size=[96, 96])
    with pytest.raises(InputError, match="tta_flips"):
        InferenceSettings(tta_flips=[[3]])
    with pytest.raises(InputError, match="channels_last"):
        InferenceSettings(channels_last="yes")
    with pytest.raises(InputError, match="unknown inference setting 'roi_sise'; did you mean 'roi_size'"):
        InferenceSettings.from_dict({"roi_sise": 3})
    assert InferenceSettings(roi_size=64).roi_size == [64, 64, 64]


def test_auto_precision_keeps_fp32_on_cpu(binary_ckpt):
    """bf16 moved a trained network's masks (Dice 0.998 against fp32): on CPU it is opt-in."""
    assert Predictor.from_checkpoint(binary_ckpt, device="cpu").precision == "fp32"
    assert Predictor.from_checkpoint(binary_ckpt, device="cpu", precision="bf16").precision == "bf16"


def test_fp32_on_a_gpu_is_ieee_fp32(binary_ckpt):
    """On a GPU ``auto`` is fp32 too, and fp32 turns TF32 off while the network runs (then restores it).

    The predictor is built on the CPU and pointed at CUDA afterwards: resolving the precision and
    entering its context touch torch's backend flags only, which CPU builds carry as well.
    """
    predictor = Predictor.from_checkpoint(binary_ckpt, device="cpu")
    predictor.device = torch.device("cuda")
    assert predictor._resolve_precision("auto") == "fp32"
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision = "tf32"  # what cuDNN's convolutions default to
    try:
        with predictor._autocast():
            assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
        assert conv.fp32_precision == "tf32"
        with pytest.raises(RuntimeError, match="inside"), predictor._autocast():
            raise RuntimeError("inside")
        assert conv.fp32_precision == "tf32"  # restored after an error too
    finally:
        conv.fp32_precision, matmul.fp32_precision = before


def test_three_layers_recover_the_known_mask(binary_ckpt, lps_case):
    predictor = Predictor.from_checkpoint(binary_ckpt, device="cpu", precision="fp32", roi_size=None)
    assert predictor.roi_size is None and predictor.size_divisor == (1, 1, 1) and len(predictor.model_id) == 16
    prepared = prepare_scan(lps_case["t1"], lps_case["flair"], predictor.preprocess_spec)
    assert tuple(prepared.image.shape[1:]) != lps_case["shape"]  # cropped working grid
    working = predictor.predict(prepared.image)
    native = predictor.to_native(working, prepared.shape, prepared.affine)
    truth = nib.load(lps_case["label"]).get_fdata() == 9
    np.testing.assert_array_equal(native.mask, truth)
    # the reference path (MONAI Gaussian sliding window on the training window) agrees
    assert Predictor.from_checkpoint(binary_ckpt).roi_size is None  # default: one pass (no instance norm)
    assert Predictor.from_checkpoint(binary_ckpt, roi_size="checkpoint").roi_size == [48, 48, 48]
    window = Predictor.from_checkpoint(binary_ckpt, device="cpu", precision="fp32", roi_size=[16, 16, 16],
                                       tta_flips=[[0]])
    native_w = window.to_native(window.predict(prepared.image), prepared.shape, prepared.affine)
    np.testing.assert_array_equal(native_w.mask, truth)


@pytest.mark.parametrize(("norm", "one_pass"), [
    ("BATCH", True),
    (("INSTANCE", {"track_running_stats": True}), True),  # fixed statistics at inference
    ("INSTANCE", False),
    (("GROUP", {"num_groups": 2}), False),
])
def test_auto_takes_one_pass_only_where_the_window_cannot_matter(norm, one_pass):
    from wmhseg.checkpoint import build_network
    from wmhseg.data.preprocessing import PreprocessSpec
    from wmhseg.inference.predictor import context_free
    from wmhseg.labels import LabelSpec

    net = build_network({"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 2,
                         "out_channels": 2, "channels": [4, 8], "strides": [2], "num_res_units": 1, "norm": norm})
    assert context_free(net) is one_pass
    predictor = Predictor(net, PreprocessSpec(), LabelSpec(), checkpoint_inference={"roi_size": [16, 16, 16]},
                          settings=InferenceSettings(device="cpu"))
    assert predictor.roi_size == (None if one_pass else [16, 16, 16])
    assert predictor.describe()["roi_size"] == predictor.roi_size


def test_folding_batch_norm_keeps_the_output_and_the_original_network():
    from wmhseg.checkpoint import build_network
    from wmhseg.inference.optimize import fold_batch_norm

    torch.manual_seed(0)
    net = build_network({"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 2,
                         "out_channels": 2, "channels": [4, 8, 8], "strides": [2, 2], "num_res_units": 1,
                         "norm": "BATCH"})
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    for m in norms:  # trained-looking statistics and affine parameters
        m.running_mean.uniform_(-1, 1)
        m.running_var.uniform_(0.5, 2)
        m.weight.data.uniform_(0.5, 1.5)
        m.bias.data.uniform_(-0.5, 0.5)
    net.eval()
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.inference_mode():
        reference = net(x)
        folded, count = fold_batch_norm(net)
        out = folded(x)
    # every conv/transposed conv of the U-Net is followed by its batch norm except the output layer
    assert count == len(norms) and count > 0
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm3d) for m in net.modules()) == len(norms)  # original untouched
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)
    instance = build_network({"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 2,
                              "out_channels": 2, "channels": [4, 8], "strides": [2], "num_res_units": 1})
    assert fold_batch_norm(instance) == (instance, 0)


@pytest.mark.parametrize(("c_in", "c_out", "kernel", "stride", "padding", "output_padding", "size", "bias"), [
    (5, 2, 3, 2, 1, 1, (7, 6, 5), True),  # the U-Net's up-sampling layer, odd sizes
    (4, 3, 2, 2, 0, 0, (5, 4, 6), False),  # kernel = stride, no bias
    (3, 2, (3, 1, 4), (2, 1, 3), (1, 0, 1), (1, 0, 2), (6, 5, 4), True),  # anisotropic, kernel < stride
    (2, 2, 4, 2, 1, 0, (3, 3, 3), True),  # kernel 2 x stride
    (2, 3, 3, 3, 2, 1, (4, 5, 3), True),  # stride 3, padding 2
    (1, 1, 1, 2, 0, 1, (3, 4, 2), True),  # 1 x 1 x 1 kernel: zeros between the input voxels
])
def test_a_sub_pixel_convolution_is_the_transposed_convolution(c_in, c_out, kernel, stride, padding, output_padding,
                                                                size, bias):
    from wmhseg.inference.optimize import SubPixelConvTranspose3d

    torch.manual_seed(0)
    layer = torch.nn.ConvTranspose3d(c_in, c_out, kernel, stride=stride, padding=padding,
                                     output_padding=output_padding, bias=bias)
    x = torch.randn(2, c_in, *size)
    with torch.inference_mode():
        expected, got = layer(x), SubPixelConvTranspose3d(layer)(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_only_narrow_transposed_convolutions_become_sub_pixel_ones():
    from wmhseg.checkpoint import build_network
    from wmhseg.inference.optimize import SubPixelConvTranspose3d, subpixel_transposed

    torch.manual_seed(1)
    net = build_network({"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 2,
                         "out_channels": 2, "channels": [16, 32, 32], "strides": [2, 2], "num_res_units": 1,
                         "norm": "BATCH"}).eval()
    rewritten, count = subpixel_transposed(net)
    kinds = [type(m) for m in rewritten.modules()]
    # the 2-class output layer is rewritten; the 32 -> 16 up-sampling layer is wide enough as it is
    assert count == 1 and kinds.count(SubPixelConvTranspose3d) == 1 and kinds.count(torch.nn.ConvTranspose3d) == 1
    assert sum(isinstance(m, torch.nn.ConvTranspose3d) for m in net.modules()) == 2  # the original untouched
    x = torch.randn(1, 2, 16, 24, 16)
    with torch.inference_mode():
        torch.testing.assert_close(rewritten(x), net(x), rtol=1e-5, atol=1e-5)
    grouped = torch.nn.Sequential(torch.nn.ConvTranspose3d(4, 2, 3, stride=2, groups=2))
    assert subpixel_transposed(grouped) == (grouped, 0)
    with pytest.raises(ValueError, match="groups=1"):
        SubPixelConvTranspose3d(grouped[0])


@pytest.mark.parametrize("channels_last", [True, False])
def test_rewritten_network_gives_the_raw_networks_probabilities(channels_last):
    """Folding and channels-last change the speed, not the output: both paths against raw MONAI."""
    from monai.data import MetaTensor
    from monai.inferers import sliding_window_inference

    from wmhseg.checkpoint import build_network
    from wmhseg.data.preprocessing import PreprocessSpec
    from wmhseg.labels import LabelSpec

    torch.manual_seed(1)
    net = build_network({"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 2,
                         "out_channels": 2, "channels": [4, 8, 8], "strides": [2, 2], "num_res_units": 1,
                         "norm": "BATCH"})
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    net.eval()
    x = torch.randn(1, 2, 24, 20, 16)
    image = MetaTensor(x[0], affine=torch.eye(4, dtype=torch.float64))
    with torch.inference_mode():
        whole_ref = torch.softmax(net(x), 1)[0]
        window_ref = torch.softmax(sliding_window_inference(x, (16, 16, 16), 2, net, overlap=0.25, mode="gaussian"), 1)[0]
    for roi, reference in ((None, whole_ref), ([16, 16, 16], window_ref)):
        predictor = Predictor(net, PreprocessSpec(), LabelSpec(), size_divisor=4, settings=InferenceSettings(
            device="cpu", precision="fp32", roi_size=roi, sw_batch_size=2, overlap=0.25, channels_last=channels_last))
        assert predictor.folded_norms > 0 and predictor.channels_last is channels_last
        torch.testing.assert_close(predictor.probabilities(image), reference, rtol=1e-4, atol=1e-5)
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in net.modules())  # the caller's network is unchanged


def test_whole_volume_pads_to_the_network_divisor(tmp_path):
    from wmhseg.checkpoint import build_network
    from wmhseg.data.preprocessing import PreprocessSpec
    from wmhseg.labels import LabelSpec

    net = build_network({"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 2,
                         "out_channels": 2, "channels": [4, 8, 8], "strides": [2, 2], "num_res_units": 1})
    from monai.data import MetaTensor

    torch.manual_seed(0)
    image = MetaTensor(torch.randn(2, 13, 10, 7), affine=torch.eye(4, dtype=torch.float64))
    out = {}
    for precision in ("bf16", "fp32"):
        predictor = Predictor(net, PreprocessSpec(), LabelSpec(), size_divisor=4,
                              settings=InferenceSettings(device="cpu", precision=precision, roi_size=None))
        out[precision] = predictor.predict(image).wmh
    assert tuple(out["bf16"].shape) == (13, 10, 7)
    # the odd sizes were padded to 16 x 12 x 8 and cropped back: bf16 gives the fp32 probabilities to
    # within its 8-bit mantissa (relative 2^-8 per operation, a few operations deep)
    torch.testing.assert_close(out["bf16"].float(), out["fp32"].float(), rtol=0, atol=0.03)


def test_bison_mode_gives_ventricles_and_tissue_classes(tmp_path):
    ckpt = make_checkpoint(tmp_path / "bison.ckpt", mode="bison")
    case = write_case(tmp_path, "v", ventricles=True, codes="LAS")
    predictor = Predictor.from_checkpoint(ckpt, device="cpu", precision="fp32")
    prepared = predictor.prepare(case["t1"], case["flair"], label=case["label"])
    working = predictor.predict(prepared.image)
    native = predictor.to_native(working, prepared.shape, prepared.affine)
    label = nib.load(case["label"]).get_fdata()
    np.testing.assert_array_equal(native.mask, label == 9)
    np.testing.assert_array_equal(native.ventricles, label == 1)
    assert int((working.classes > 0).sum()) == int((label > 0).sum())


def test_unreadable_scans_raise_scan_errors_naming_the_file(tmp_path, lps_case):
    from wmhseg.data.preprocessing import PreprocessSpec

    truncated = tmp_path / "cut_FLAIR.nii.gz"
    data = lps_case["flair"].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ScanError, match="cut_FLAIR.nii.gz.*truncated or corrupt"):
        prepare_scan(lps_case["t1"], truncated, PreprocessSpec())
    flat = tmp_path / "flat_FLAIR.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.float32), np.eye(4)), flat)
    with pytest.raises(ScanError, match="flat_FLAIR.nii.gz.*3-D"):
        prepare_scan(lps_case["t1"], flat, PreprocessSpec())


def test_fast_paths_agree_with_the_fp32_reference():
    """bf16 autocast stays close to the fp32 reference on a real (tiny) U-Net."""
    from monai.data import MetaTensor

    from wmhseg.checkpoint import build_network
    from wmhseg.data.preprocessing import PreprocessSpec
    from wmhseg.labels import LabelSpec

    torch.manual_seed(0)
    net = build_network({"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 2,
                         "out_channels": 2, "channels": [4, 8, 8], "strides": [2, 2], "num_res_units": 1})
    image = MetaTensor(torch.randn(2, 16, 16, 16), affine=torch.eye(4, dtype=torch.float64))

    def run(precision: str) -> np.ndarray:
        predictor = Predictor(net, PreprocessSpec(), LabelSpec(), size_divisor=4,
                              settings=InferenceSettings(device="cpu", precision=precision, roi_size=None))
        return np.asarray(predictor.predict(image).wmh, dtype=np.float64)

    reference, fast = run("fp32"), run("bf16")
    assert np.abs(fast - reference).max() < 0.05  # bf16 keeps 8 mantissa bits: ~1e-2 on probabilities
    assert np.abs(fast - reference).mean() < 0.01
