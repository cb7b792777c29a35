"""WMHSegModule: validation metrics against wmhseg.metrics, training steps, argument checks."""

from __future__ import annotations

import functools
import math

import lightning as L
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from torch import nn
from torch.utils.data import DataLoader

from wmhseg.checkpoint import load_checkpoint, read_meta
from wmhseg.errors import InputError
from wmhseg.metrics import segmentation_metrics
from wmhseg.models.module import WMHSegModule, _spacing, check_inference_settings
from wmhseg.plain import to_plain

UNET = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 2, "out_channels": 2,
        "channels": [4, 8], "strides": [2], "num_res_units": 0}


class FlairSign(nn.Module):
    """Voxel-wise 'network': WMH logit = 10 * FLAIR channel, so the prediction is FLAIR > 0 exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([-x[:, 1], x[:, 1]], dim=1) * self.scale


def _ball(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


def _case(pred: np.ndarray, ref: np.ndarray) -> dict[str, torch.Tensor]:
    flair = np.where(pred, 1.0, -1.0).astype(np.float32)
    image = torch.from_numpy(np.stack([np.zeros_like(flair), flair]))
    return {"image": image, "label": torch.from_numpy(ref.astype(np.int64))[None]}


def _trainer(**kw) -> L.Trainer:
    args = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(**{**args, **kw})


def _module(net: nn.Module | None = None, **kw) -> WMHSegModule:
    args = dict(net=net, net_config=UNET, preprocessing={"spacing": [1.0, 1.0, 2.0]}, labels={"mode": "binary"},
                inference={"roi_size": [16, 16, 16], "sw_batch_size": 2, "overlap": 0.25})
    return WMHSegModule(**{**args, **kw})


def test_validation_metrics_match_wmhseg_metrics():
    shape = (24, 24, 20)
    ref1 = _ball(shape, (10, 10, 10), 5) | _ball(shape, (20, 20, 4), 1.5)
    pred1 = _ball(shape, (11, 10, 10), 5) | _ball(shape, (3, 3, 16), 1)  # one lesion missed, one false
    ref2 = _ball(shape, (12, 12, 8), 4)
    pred2 = _ball(shape, (12, 12, 8), 3)
    ref3 = np.zeros(shape, bool)  # empty reference: HD95 and AVD are NaN, left out of the means
    pred3 = _ball(shape, (5, 5, 5), 1)
    cases = [(pred1, ref1), (pred2, ref2), (pred3, ref3)]
    loader = DataLoader([_case(p, r) for p, r in cases], batch_size=1)
    trainer = _trainer()
    trainer.validate(_module(FlairSign()), dataloaders=loader, verbose=False)
    logged = trainer.callback_metrics

    expected = [segmentation_metrics(p, r, spacing=(1.0, 1.0, 2.0)) for p, r in cases]
    for name in ("dice", "hd95", "avd", "lesion_recall", "lesion_f1"):
        values = [e[name] for e in expected if not math.isnan(e[name])]
        assert float(logged[f"val/{name}"]) == pytest.approx(np.mean(values), rel=1e-5), name
    # independent check of the first case's Dice
    inter = np.logical_and(pred1, ref1).sum()
    dice1 = 2 * inter / (pred1.sum() + ref1.sum())
    assert expected[0]["dice"] == pytest.approx(dice1)
    assert float(logged["val/n_scans"]) == 3
    assert math.isfinite(float(logged["val/loss"]))


class FlairIsProbability(nn.Module):
    """Voxel-wise 'network' whose WMH probability is the FLAIR channel itself."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = x[:, 1].clamp(1e-6, 1 - 1e-6)
        return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1) + self.unused


@pytest.mark.parametrize("calibrate", [True, False])
def test_calibrated_threshold_is_stored_in_the_checkpoint(tmp_path, calibrate):
    # probabilities that cross 0.7 exactly at the lesions' edges (0.05 per voxel of distance)
    grid = np.indices((24, 24, 20))
    cases = []
    for centre, radius in (((11, 12, 9), 5.5), ((12, 11, 10), 7.3)):
        distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)))
        prob = np.clip(0.7 + 0.05 * (radius - distance), 0.01, 0.99).astype(np.float32)
        cases.append({"image": torch.from_numpy(np.stack([np.zeros_like(prob), prob])),
                      "label": torch.from_numpy((distance < radius).astype(np.int64))[None]})
    trainer = _trainer()
    module = _module(FlairIsProbability(), calibrate_threshold=calibrate)
    trainer.validate(module, dataloaders=DataLoader(cases, batch_size=1), verbose=False)
    logged = trainer.callback_metrics
    assert float(logged["val/dice"]) < 0.9  # at the configured 0.5 the masks reach 4 voxels beyond the edges
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    stored = read_meta(load_checkpoint(tmp_path / "model.ckpt"))["inference"]["threshold"]
    if calibrate:
        assert float(logged["val/threshold"]) == pytest.approx(0.7)
        assert float(logged["val/dice_calibrated"]) == pytest.approx(1.0)
        assert stored == pytest.approx(0.7)
        # a module resumed from that checkpoint carries the threshold on before it validates again
        resumed = _module(FlairIsProbability(), calibrate_threshold=True)
        resumed.on_load_checkpoint(torch.load(tmp_path / "model.ckpt", weights_only=True))
        assert resumed.inference_meta()["inference"]["threshold"] == pytest.approx(0.7)
    else:
        assert "val/threshold" not in logged and stored == 0.5


def test_bison_mode_sums_wmh_channels():
    net_config = {**UNET, "out_channels": 10}
    module = WMHSegModule(net_config=net_config, labels={"mode": "bison"},
                          inference={"roi_size": [8, 8, 8]})
    logits = torch.zeros(1, 10, 2, 2, 2)
    logits[:, 9] = 2.0  # channel 9 alone: softmax e^2 / (e^2 + 9)
    prob = module.wmh_probability(logits)
    assert prob.shape == (1, 2, 2, 2)
    assert float(prob[0, 0, 0, 0]) == pytest.approx(math.exp(2) / (math.exp(2) + 9), rel=1e-5)


def test_spacing_from_metatensor_affine():
    image = MetaTensor(torch.zeros(1, 2, 4, 4, 4), affine=torch.diag(torch.tensor([0.5, 2.0, 3.0, 1.0])))
    assert _spacing(image, (1.0, 1.0, 1.0)) == pytest.approx((0.5, 2.0, 3.0))
    assert _spacing(torch.zeros(1), (1.0, 1.0, 2.0)) == (1.0, 1.0, 2.0)


def _ball_batch() -> dict[str, torch.Tensor]:
    """A noisy 16^3 scan whose FLAIR shows a ball of WMH, with its label (seeded)."""
    torch.manual_seed(0)
    shape = (16, 16, 16)
    ref = _ball(shape, (8, 8, 8), 4)
    image = torch.randn(2, *shape) * 0.3
    image[1] += torch.from_numpy(ref.astype(np.float32))
    return {"image": image, "label": torch.from_numpy(ref.astype(np.int64))[None]}


def test_training_steps_reduce_the_loss():
    batch = _ball_batch()
    loader = DataLoader([batch] * 4, batch_size=2)
    module = _module(optimizer=functools.partial(torch.optim.AdamW, lr=1e-2))
    with torch.no_grad():
        before = float(module.loss(module(loader.dataset[0]["image"][None]), batch["label"][None]))
    _trainer(max_epochs=8, limit_val_batches=0).fit(module, train_dataloaders=loader)
    with torch.no_grad():
        after = float(module.loss(module(batch["image"][None]), batch["label"][None]))
    assert after < 0.6 * before


def test_channels_last_training_computes_what_the_contiguous_layout_does(tmp_path):
    batch = _ball_batch()
    image = batch["image"]
    loader = DataLoader([batch] * 4, batch_size=2)
    trained = {}
    for layout in (False, True):
        torch.manual_seed(1)
        module = _module(optimizer=functools.partial(torch.optim.AdamW, lr=1e-2), channels_last=layout)
        trainer = _trainer(max_epochs=3, limit_val_batches=0, enable_checkpointing=True,
                           default_root_dir=tmp_path / str(layout))
        trainer.fit(module, train_dataloaders=loader)
        trained[layout] = module
    weights = {k: v for k, v in trained[True].net.state_dict().items() if v.dim() == 5}
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last_3d) and not w.is_contiguous()
                           for w in weights.values())
    assert not any(w.is_contiguous(memory_format=torch.channels_last_3d) and not w.is_contiguous()
                   for w in trained[False].net.state_dict().values())
    # 6 optimizer steps in either layout: the same network, to float rounding (compared by its
    # output: Adam turns the rounding noise of a bias that a norm cancels into whole steps)
    with torch.no_grad():
        outputs = [trained[layout].eval()(image[None]) for layout in (False, True)]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-3, atol=1e-3)
    torch.manual_seed(1)
    with torch.no_grad():
        untrained = _module().eval()(image[None])
    assert (outputs[0] - untrained).abs().max() > 0.1  # the steps did change the network
    # the "auto" default takes channels-last on a CPU trainer
    auto = _module()
    auto.trainer = _trainer()
    auto.setup("fit")
    assert auto.channels_last


def test_optimizer_and_scheduler_from_partials():
    module = _module(
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=3),
        scheduler_interval="step",
    )
    conf = module.configure_optimizers()
    assert isinstance(conf["optimizer"], torch.optim.SGD)
    assert isinstance(conf["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)
    assert conf["lr_scheduler"]["interval"] == "step"
    assert isinstance(_module().configure_optimizers(), torch.optim.AdamW)


def test_hparams_are_plain_and_module_reloads_from_them():
    module = _module()
    for value in module.hparams.values():
        assert to_plain(value) == value
    clone = WMHSegModule(**dict(module.hparams))
    assert clone.label_spec == module.label_spec
    assert clone.inference_settings == module.inference_settings


def test_to_plain():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"a": [1, 2], "b": {"c": "${a}"}})
    assert to_plain(cfg) == {"a": [1, 2], "b": {"c": [1, 2]}}
    assert to_plain((np.float32(1.5), np.int64(2), np.array([1, 2]))) == [1.5, 2, [1, 2]]
    with pytest.raises(TypeError, match=r"x\.fn"):
        to_plain({"fn": print}, "x")


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"roi_size": [16, 16]}, "roi_size"),
        ({"roi_size": [16, 0, 16]}, "roi_size"),
        ({"overlap": 1.0}, "overlap"),
        ({"mode": "gausian"}, "gausian"),
        ({"sw_batch_size": 0}, "sw_batch_size"),
        ({"threshold": 1.5}, "threshold"),
        ({"roi": [1, 2, 3]}, "roi"),
    ],
)
def test_bad_inference_settings(settings, match):
    with pytest.raises(InputError, match=match):
        check_inference_settings(settings)


def test_inference_settings_defaults():
    s = check_inference_settings({"roi_size": 32})
    assert s == {"roi_size": [32, 32, 32], "sw_batch_size": 2, "overlap": 0.25, "mode": "gaussian", "threshold": 0.5}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"net_config": {"spatial_dims": 3}}, "_target_"),
        ({"net_config": {**UNET, "out_channels": 3}}, "out_channels=3"),
        ({"labels": {"mode": "tissue"}}, "tissue"),
        ({"net_config": {**UNET, "deep_supervision": True}}, "deep_supervision"),
        ({"scheduler_interval": "batch"}, "batch"),
        ({"channels_last": "yes"}, "channels_last='yes'"),
        ({"calibrate_threshold": "yes"}, "calibrate_threshold='yes'"),
        ({"preprocessing": {"spacing": [1, 1]}}, "spacing"),
    ],
)
def test_bad_module_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        _module(**kwargs)
