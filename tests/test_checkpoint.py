"""Checkpoints: pickled code is refused; a trained checkpoint is plain data that rebuilds the network."""

from __future__ import annotations

import functools
import os

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

import wmhseg
from wmhseg.checkpoint import build_network, load_checkpoint, read_meta
from wmhseg.errors import CheckpointError
from wmhseg.models.module import WMHSegModule

NET = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 2, "out_channels": 2,
       "channels": [4, 8], "strides": [2], "num_res_units": 1}


class _Payload:
    """Unpickling this runs ``os.system``: a stand-in for a hostile checkpoint."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _loaders():
    """Every way a user hands wmhseg a checkpoint file: the loader itself, inference, training's resume check."""
    from wmhseg.inference.predictor import Predictor
    from wmhseg.training import check_resume_compatible

    module = WMHSegModule(net_config=NET)
    return {"load_checkpoint": load_checkpoint, "Predictor.from_checkpoint": Predictor.from_checkpoint,
            "resume": lambda path: check_resume_compatible(str(path), module)}


@pytest.mark.parametrize("entry", ["load_checkpoint", "Predictor.from_checkpoint", "resume"])
def test_malicious_pickle_is_refused(tmp_path, entry):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "wmhseg": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refused"):
        _loaders()[entry](path)
    assert not marker.exists()


@pytest.mark.parametrize("entry", ["load_checkpoint", "Predictor.from_checkpoint", "resume"])
def test_missing_and_corrupt_checkpoints_are_named(tmp_path, entry):
    with pytest.raises(CheckpointError, match="nope.ckpt.*not found"):
        _loaders()[entry](tmp_path / "nope.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.ckpt"):
        _loaders()[entry](bad)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A module fitted for two epochs (AdamW + cosine schedule), with last and best checkpoints."""
    out = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    gen = np.random.default_rng(0)
    items = []
    for _ in range(2):
        label = (gen.random((16, 16, 16)) > 0.9).astype(np.int64)
        image = np.stack([gen.normal(size=label.shape), label + 0.3 * gen.normal(size=label.shape)]).astype(np.float32)
        items.append({"image": torch.from_numpy(image), "label": torch.from_numpy(label)[None]})
    module = WMHSegModule(
        net_config=NET,
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
        scheduler=functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=2),
        preprocessing={"spacing": [2.0, 2.0, 2.0]},
        labels={"mode": "binary"},
        inference={"roi_size": [16, 16, 16], "sw_batch_size": 1, "overlap": 0.5},
        config_yaml="seed: 1\n",
    )
    callback = ModelCheckpoint(dirpath=out, filename="epoch{epoch:03d}-dice{val/dice:.3f}",
                               auto_insert_metric_name=False, monitor="val/dice", mode="max", save_last=True)
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, callbacks=[callback],
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(items, batch_size=2), DataLoader(items, batch_size=1))
    return module, callback


def test_trained_checkpoint_is_plain_data(trained):
    module, callback = trained
    assert os.path.basename(callback.best_model_path).startswith("epoch")
    for path in (callback.last_model_path, callback.best_model_path):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # the whole file, no allow-listing
        assert {"state_dict", "optimizer_states", "lr_schedulers", "callbacks", "hyper_parameters"} <= set(ckpt)
        meta = read_meta(load_checkpoint(path), source=path)
        assert set(meta) == {"format_version", "wmhseg_version", "network", "preprocessing", "labels",
                             "inference", "config"}
        assert meta["format_version"] == 1
        assert meta["wmhseg_version"] == wmhseg.__version__
        assert meta["network"] == NET
        assert meta["labels"] == {"mode": "binary", "wmh_values": [9], "known_values": list(range(10))}
        assert meta["preprocessing"]["spacing"] == [2.0, 2.0, 2.0]
        assert meta["inference"] == {"roi_size": [16, 16, 16], "sw_batch_size": 1, "overlap": 0.5,
                                     "mode": "gaussian", "threshold": 0.5}
        assert meta["config"] == "seed: 1\n"


def test_checkpoint_rebuilds_the_network(trained):
    module, callback = trained
    ckpt = load_checkpoint(callback.last_model_path)
    meta = read_meta(ckpt)
    net = build_network(meta["network"])
    net.load_state_dict({k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")})
    net.eval()
    module.eval()
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(x), module.net(x))


def test_module_reloads_with_weights_only(trained):
    module, callback = trained
    clone = WMHSegModule.load_from_checkpoint(callback.last_model_path, map_location="cpu", weights_only=True)
    assert clone.hparams["net_config"] == NET
    for key, value in module.state_dict().items():
        torch.testing.assert_close(clone.state_dict()[key], value)
