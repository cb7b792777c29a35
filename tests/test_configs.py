"""Every training config composes, and the objects it names can be built."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from wmhseg.checkpoint import build_network
from wmhseg.errors import InputError
from wmhseg.labels import LabelSpec
from wmhseg.training import check_patch_size, instantiate_callbacks, instantiate_loggers, network_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
GROUPS = ("data", "model", "trainer", "callbacks", "logger", "paths", "hydra", "experiment", "debug")


def _compose(tmp_path: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.root_dir = str(tmp_path)
        cfg.paths.output_dir = str(tmp_path / "run")
    return cfg


def _resolve(cfg: DictConfig, missing_ok: tuple[str, ...] = ()) -> dict:
    """Resolve every interpolation (``???`` allowed only at the keys in ``missing_ok``)."""
    job = cfg.copy()
    with open_dict(job):
        job.pop("hydra")
    container = OmegaConf.to_container(job, resolve=True, throw_on_missing=False)
    missing = [k for k in _missing_keys(cfg) if k not in missing_ok]
    assert not missing, f"mandatory values left unset: {missing}"
    return container


def _missing_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key in cfg:
        full = f"{prefix}{key}"
        if full == "hydra":
            continue
        if OmegaConf.is_missing(cfg, key):
            keys.append(full)
        elif isinstance(cfg[key], DictConfig):
            keys.extend(_missing_keys(cfg[key], f"{full}."))
    return keys


def test_train_yaml_lists_every_group_in_order():
    defaults = OmegaConf.load(CONFIGS / "train.yaml")["defaults"]
    names = [next(iter(d)) for d in defaults if not isinstance(d, str)]
    assert names == list(GROUPS)
    assert EXPERIMENTS == ["bison", "smoke", "synthetic"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes(tmp_path, experiment):
    cfg = _compose(tmp_path, f"experiment={experiment}")
    missing_ok = ("data.manifest",) if experiment == "bison" else ()
    resolved = _resolve(cfg, missing_ok)
    assert resolved["model"]["net"]["_target_"].startswith("monai.networks.nets.")
    assert resolved["callbacks"]["model_checkpoint"]["dirpath"] == str(tmp_path / "run" / "checkpoints")
    net = network_config(cfg.model.net, LabelSpec.from_dict(resolved["data"]["labels"]))
    check_patch_size(resolved["data"]["patch_size"], net)
    check_patch_size(resolved["model"]["inference"]["roi_size"], net)


@pytest.mark.parametrize(
    "overrides",
    [
        ("experiment=smoke", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"),
        ("experiment=bison", "data.manifest=/data/train.csv", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"),
        ("experiment=synthetic", "logger=tensorboard", "callbacks=with_early_stopping"),
        ("experiment=smoke", "model/net=dynunet", "data.labels.mode=bison"),
        ("experiment=smoke", "model/net=segresnet", "logger=many_loggers"),
        ("debug=fdr",),
        ("debug=limit",),
        ("debug=overfit",),
        ("debug=profiler",),
        ("trainer=gpu", "callbacks=none", "logger=none"),
    ],
)
def test_overrides_compose(tmp_path, overrides):
    cfg = _compose(tmp_path, *overrides)
    _resolve(cfg)


def test_trainer_configs(tmp_path):
    gpu = _compose(tmp_path, "trainer=gpu").trainer
    assert (gpu.accelerator, gpu.precision, gpu.benchmark) == ("gpu", "bf16-mixed", True)
    ddp = _compose(tmp_path, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                   "trainer.precision=32-true").trainer
    trainer = instantiate(ddp, logger=False)
    assert type(trainer.strategy).__name__ == "DDPStrategy"
    assert trainer.num_devices == 2
    cpu = instantiate(_compose(tmp_path, "experiment=smoke").trainer, logger=False)
    assert isinstance(cpu, L.Trainer) and cpu.accelerator.__class__.__name__ == "CPUAccelerator"


def test_callbacks_and_loggers_instantiate(tmp_path):
    cfg = _compose(tmp_path, "callbacks=with_early_stopping")
    names = sorted(type(c).__name__ for c in instantiate_callbacks(cfg.callbacks))
    assert names == ["EarlyStopping", "LearningRateMonitor", "ModelCheckpoint", "ModelCheckpoint", "ModelSummary",
                     "TQDMProgressBar"]
    loggers = instantiate_loggers(cfg.logger)
    assert [type(lg).__name__ for lg in loggers] == ["CSVLogger"]
    assert instantiate_callbacks(_compose(tmp_path, "callbacks=none").callbacks) == []


@pytest.mark.parametrize(("net", "mode", "channels", "size"), [("unet", "binary", 2, 32), ("dynunet", "bison", 10, 64),
                                                               ("segresnet", "binary", 2, 32)])
def test_networks_build_with_out_channels_from_labels(tmp_path, net, mode, channels, size):
    cfg = _compose(tmp_path, f"model/net={net}", f"data.labels.mode={mode}")
    config = network_config(cfg.model.net, LabelSpec(mode=mode))
    assert config["out_channels"] == channels
    model = build_network(config).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 2, size, size, size))
    assert out.shape == (1, channels, size, size, size)


def test_bad_network_settings_are_named(tmp_path):
    cfg = _compose(tmp_path, "+model.net.out_channels=3")
    with pytest.raises(InputError, match="out_channels=3"):
        network_config(cfg.model.net, LabelSpec())
    config = network_config(_compose(tmp_path).model.net, LabelSpec())
    with pytest.raises(InputError, match=r"data.patch_size=\[40, 40, 40\]"):
        check_patch_size([40, 40, 40], config)
    check_patch_size([48, 64, 32], config)


def test_tensorboard_logger_is_optional(tmp_path):
    cfg = _compose(tmp_path, "logger=tensorboard")
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        assert [type(lg).__name__ for lg in instantiate_loggers(cfg.logger)] == ["TensorBoardLogger"]
    else:
        with pytest.raises(InputError, match=r"logger.tensorboard needs a package .*wmhseg\[tensorboard\]"):
            instantiate_loggers(cfg.logger)
