"""WMHDataModule: synthetic preparation, split, cached loaders, targets, DDP sampler, device augmentation."""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.utilities.data import _update_dataloader
from monai.data import MetaTensor
from torch.utils.data import DistributedSampler

from wmhseg.data.datamodule import WMHDataModule
from wmhseg.data.preprocessing import PreprocessSpec, preprocess_transforms
from wmhseg.errors import InputError, ManifestError
from wmhseg.synth.images import write_dataset

PATCH = (24, 24, 24)


def _dm(manifest, **kw) -> WMHDataModule:
    base = dict(manifest=str(manifest), patch_size=PATCH, batch_size=2, samples_per_volume=2, val_fraction=0.25,
                augmentation={"enabled": False}, validate="headers")
    base.update(kw)
    return WMHDataModule(**base)


@pytest.fixture(scope="module")
def ready(tiny_dataset: Path) -> WMHDataModule:
    dm = _dm(tiny_dataset, augmentation={"affine_prob": 0.5}, validate="full")
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_split_and_specs(ready: WMHDataModule) -> None:
    assert len(ready.train_scans) == 6 and len(ready.val_scans) == 2
    assert ready.preprocess_spec == PreprocessSpec() and ready.label_spec.num_classes == 2
    # a second module (another DDP rank) computes the same split
    other = _dm(ready.manifest_path, augmentation={"affine_prob": 0.5})
    other.setup("fit")
    assert [s.key for s in other.val_scans] == [s.key for s in ready.val_scans]


def test_train_batches(ready: WMHDataModule) -> None:
    batches = list(ready.train_dataloader())
    assert len(batches) == 3  # 6 training scans, 2 per batch
    for b in batches:
        assert b["image"].shape == (4, 2, *PATCH) and b["image"].dtype == torch.float32
        assert b["label"].shape == (4, 1, *PATCH) and b["label"].dtype == torch.int64
        assert not isinstance(b["image"], MetaTensor)
        assert set(b["label"].unique().tolist()) <= {0, 1}
        assert torch.isfinite(b["image"]).all()


def test_positive_patches_hold_wmh(tiny_dataset: Path) -> None:
    dm = _dm(tiny_dataset, pos_fraction=1.0, samples_per_volume=3, val_fraction=0.0)
    dm.setup("fit")
    for b in dm.train_dataloader():
        assert all(int(lab.sum()) > 0 for lab in b["label"])  # every patch is centred on WMH
    assert dm.val_dataloader() == []


def test_validation_volumes_match_preprocessing(ready: WMHDataModule) -> None:
    batches = list(ready.val_dataloader())
    assert len(batches) == 2
    scan = ready.val_scans[0]
    ref = preprocess_transforms(ready.preprocess_spec, with_label=True)(
        {"t1": str(scan.t1), "flair": str(scan.flair), "label": str(scan.label)})
    b = batches[0]
    assert b["key"] == [scan.key]
    assert isinstance(b["image"], MetaTensor) and b["image"].shape == (1, *ref["image"].shape)
    assert np.allclose(b["image"].affine[0].numpy(), ref["image"].affine.numpy())
    assert torch.allclose(b["image"][0].as_tensor(), ref["image"].as_tensor())
    assert torch.equal(b["label"][0].as_tensor(), (ref["label"].as_tensor() == 9).long())


def test_bison_mode_targets(tiny_dataset: Path) -> None:
    dm = _dm(tiny_dataset, labels={"mode": "bison"}, cache="none")
    dm.setup("fit")
    b = next(iter(dm.val_dataloader()))
    assert set(b["label"].unique().tolist()) == set(range(10))
    assert dm.label_spec.num_classes == 10


def test_distributed_sampler_partitions_the_epoch(ready: WMHDataModule) -> None:
    loader = ready.train_dataloader()
    seen = []
    for rank in (0, 1):
        sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=True, seed=0)
        keys = [k for b in _update_dataloader(loader, sampler) for k in b["key"]]
        seen.append(set(keys))
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 6


def test_disk_cache_is_reused(tiny_dataset: Path, tmp_path: Path) -> None:
    dm = _dm(tiny_dataset, cache="disk", cache_dir=str(tmp_path / "cache"), train_repeats=2)
    dm.setup("fit")
    first = list(dm.val_dataloader())[0]
    assert len(list((tmp_path / "cache").rglob("*.pt"))) == 2  # the validation scans
    assert len(list(dm.train_dataloader())) == 6  # 6 scans x 2 repeats / batch 2
    assert len(list((tmp_path / "cache").rglob("*.pt"))) == 8
    dm2 = _dm(tiny_dataset, cache="disk", cache_dir=str(tmp_path / "cache"))
    dm2.setup("fit")
    again = next(iter(dm2.val_dataloader()))
    assert torch.equal(first["image"].as_tensor(), again["image"].as_tensor())
    assert np.allclose(first["image"].affine.numpy(), again["image"].affine.numpy())


def test_device_augmentation_cuts_crops_to_patch(tiny_dataset: Path) -> None:
    dm = _dm(tiny_dataset, augmentation={"affine_prob": 1.0}, augment_on="device", val_fraction=0.0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[2] > PATCH[0]  # room for rotation
    dm.trainer = SimpleNamespace(training=True)
    out = dm.on_after_batch_transfer(batch, 0)
    assert out["image"].shape == (4, 2, *PATCH) and out["label"].shape == (4, 1, *PATCH)
    assert out["label"].dtype == torch.int64 and set(out["label"].unique().tolist()) <= {0, 1}


def test_synthetic_prepare_and_lightning_fit(tmp_path: Path) -> None:
    writer = functools.partial(write_dataset, n_subjects=3, shape=[32, 32, 32], seed=1)
    dm = WMHDataModule(synthetic=writer, data_dir=str(tmp_path / "syn"),
                       patch_size=PATCH, batch_size=1, samples_per_volume=1, val_fraction=0.34)
    dm.prepare_data()
    assert pd.read_csv(tmp_path / "syn" / "manifest.csv", dtype=str).subject_id.tolist() == ["001", "002", "003"]

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Conv3d(2, 2, 1)
            self.val_shapes = []

        def training_step(self, batch, _):
            assert batch["image"].shape[2:] == PATCH
            return torch.nn.functional.cross_entropy(self.net(batch["image"]), batch["label"][:, 0])

        def validation_step(self, batch, _):
            self.val_shapes.append(tuple(batch["image"].shape))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    model = Tiny()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 2 and model.val_shapes == [(1, 2, 32, 32, 32)]


def test_bad_settings(tiny_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="data.cache='ram' is not one of"):
        _dm(tiny_dataset, cache="ram")
    with pytest.raises(InputError, match="unknown preprocessing setting .spacingg.; did you mean .spacing."):
        _dm(tiny_dataset, preprocessing={"spacingg": [1, 1, 1]})
    with pytest.raises(InputError, match="data.cache='disk' needs data.cache_dir"):
        _dm(tiny_dataset, cache="disk")
    frame = pd.read_csv(tiny_dataset, dtype=str).drop(columns=["label"])
    frame["t1"] = [str(tiny_dataset.parent / p) for p in frame.t1]
    frame["flair"] = [str(tiny_dataset.parent / p) for p in frame.flair]
    frame.to_csv(tmp_path / "nolabel.csv", index=False)
    with pytest.raises(ManifestError, match="row 1 .*no label file"):
        _dm(tmp_path / "nolabel.csv").setup("fit")


def test_data_writers_come_from_the_config(tiny_dataset: Path) -> None:
    """The generators are named by the config (``_target_`` + ``_partial_``), never imported by the data package."""
    with pytest.raises(InputError, match="did you mean 'n_subjects'"):
        WMHDataModule(synthetic=functools.partial(_writer, n_subject=2))
    with pytest.raises(InputError, match="data writer"):
        WMHDataModule(manifest=str(tiny_dataset), independent={"n_subjects": 2})
    with pytest.raises(InputError, match="data.manifest is not set"):
        WMHDataModule()


def _writer(out_dir, n_subjects: int = 1, seed: int = 0) -> None:
    raise AssertionError("never called")
