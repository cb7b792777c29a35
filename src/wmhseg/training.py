"""Build everything a training run needs from a Hydra config and fit.

:func:`train` is what ``python train.py`` calls; tests call it directly with a composed config.
The network config is resolved here, ``out_channels`` injected from the label spec, and the
module, data module, callbacks, loggers and trainer are built from their ``_target_`` configs.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf, open_dict

from wmhseg.checkpoint import build_network, load_checkpoint, read_meta
from wmhseg.errors import InputError, Interrupted
from wmhseg.files import atomic_write_json
from wmhseg.geometry import network_divisor
from wmhseg.labels import LabelSpec
from wmhseg.models.cpu_threads import CpuThreads, check_torch_threads
from wmhseg.models.module import WMHSegModule
from wmhseg.plain import to_plain

__all__ = [
    "train",
    "network_config",
    "check_patch_size",
    "build_module",
    "check_resume_compatible",
    "checkpoint_paths",
    "instantiate_callbacks",
    "trainer_config",
    "instantiate_loggers",
    "config_to_yaml",
]

log = logging.getLogger(__name__)


def config_to_yaml(cfg: DictConfig) -> str:
    """The resolved configuration as YAML, without Hydra's own ``hydra`` node."""
    job = cfg.copy()
    with open_dict(job):
        job.pop("hydra", None)
    return OmegaConf.to_yaml(OmegaConf.create(OmegaConf.to_container(job, resolve=True)))


def network_config(net_cfg: DictConfig | Mapping[str, Any], label_spec: LabelSpec) -> dict[str, Any]:
    """Resolve a network's ``_target_`` config to plain types and inject ``out_channels``.

    Raises:
        InputError: the config has no ``_target_``, or sets ``out_channels`` to a number other
            than the label spec's ``num_classes``.
    """
    config = to_plain(net_cfg, "model.net")
    if not isinstance(config, dict) or "_target_" not in config:
        raise InputError(f"model.net must be a _target_ config of a MONAI network, got {config!r}")
    given = config.get("out_channels")
    if given is not None and given != label_spec.num_classes:
        raise InputError(
            f"model.net.out_channels={given} contradicts data.labels.mode={label_spec.mode!r} "
            f"({label_spec.num_classes} classes); leave out_channels out, it is set from the labels"
        )
    config["out_channels"] = label_spec.num_classes
    return config


def check_patch_size(patch_size: Any, config: Mapping[str, Any], name: str = "data.patch_size") -> None:
    """Raise :class:`InputError` unless every patch dimension is a multiple of the network's stride."""
    patch = [patch_size] * 3 if isinstance(patch_size, int) else list(patch_size)
    divisor = network_divisor(config) or (1, 1, 1)
    if len(patch) != 3 or any(int(p) <= 0 or int(p) % d for p, d in zip(patch, divisor, strict=True)):
        raise InputError(
            f"{name}={patch_size!r} must be three positive sizes divisible by {divisor} "
            f"(the total stride of {config.get('_target_')})"
        )


def build_module(cfg: DictConfig, label_spec: LabelSpec, preprocessing: Mapping[str, Any]) -> WMHSegModule:
    """The LightningModule with its network, loss, optimizer and scheduler built from ``cfg.model``."""
    model_cfg = cfg.model
    net_config = network_config(model_cfg.net, label_spec)
    net = build_network(net_config, source="model.net")
    inference = to_plain(model_cfg.get("inference") or {}, "model.inference")
    if "roi_size" in inference:
        check_patch_size(inference["roi_size"], net_config, "model.inference.roi_size")
    scheduler_cfg = model_cfg.get("scheduler")
    return WMHSegModule(
        net=net,
        net_config=net_config,
        loss=instantiate(model_cfg.loss) if model_cfg.get("loss") is not None else None,
        optimizer=instantiate(model_cfg.optimizer) if model_cfg.get("optimizer") is not None else None,
        scheduler=instantiate(scheduler_cfg) if scheduler_cfg is not None else None,
        scheduler_interval=model_cfg.get("scheduler_interval", "epoch"),
        scheduler_monitor=model_cfg.get("scheduler_monitor", "val/dice"),
        preprocessing=preprocessing,
        labels=label_spec.to_dict(),
        inference=inference,
        config_yaml=config_to_yaml(cfg),
        channels_last=model_cfg.get("channels_last", "auto"),
        calibrate_threshold=model_cfg.get("calibrate_threshold", False),
    )


def _instantiate_group(group: DictConfig | None, kind: str) -> list[Any]:
    objects: list[Any] = []
    if not group:
        return objects
    if not isinstance(group, (DictConfig, Mapping)):
        raise InputError(f"{kind} config must be a mapping of name -> _target_ config, got {group!r}")
    for name, sub in group.items():
        if isinstance(sub, (DictConfig, Mapping)) and "_target_" in sub:
            try:
                objects.append(instantiate(sub))
            except InstantiationException as exc:
                if not isinstance(exc.__cause__, ImportError) and "not available" not in str(exc):
                    raise
                hint = " (pip install 'wmhseg[tensorboard]')" if "tensorboard" in str(name).lower() else ""
                raise InputError(f"{kind}.{name} needs a package that is not installed{hint}: {exc}") from exc
        elif sub is not None:
            raise InputError(f"{kind}.{name} has no _target_: {sub!r}")
    return objects


def instantiate_callbacks(callbacks_cfg: DictConfig | None) -> list[Callback]:
    """Lightning callbacks from a ``name -> _target_ config`` mapping (``None`` entries skipped)."""
    return _instantiate_group(callbacks_cfg, "callbacks")


def instantiate_loggers(logger_cfg: DictConfig | None) -> list[Logger]:
    """Lightning loggers from a ``name -> _target_ config`` mapping (``None`` entries skipped)."""
    return _instantiate_group(logger_cfg, "logger")


def _resume_path(cfg: DictConfig) -> str | None:
    path = cfg.get("ckpt_path")
    if path in (None, ""):
        return None
    if not Path(str(path)).is_file():
        raise InputError(f"ckpt_path={path!r}: no such checkpoint file")
    return str(path)


def check_resume_compatible(ckpt_path: str, model: WMHSegModule) -> None:
    """Raise :class:`InputError` when a checkpoint's network or labels differ from the configured ones."""
    meta = read_meta(load_checkpoint(ckpt_path), source=ckpt_path)
    mine = {"network": model.hparams["net_config"], "labels": model.label_spec.to_dict()}
    for key, value in mine.items():
        if meta[key] != value:
            diff = sorted(k for k in set(value) | set(meta[key]) if value.get(k) != meta[key].get(k))
            raise InputError(
                f"ckpt_path={ckpt_path!r} was trained with a different {key} config (differs in {diff}); "
                f"use the same model/data settings to resume or validate it"
            )


def checkpoint_paths(trainer: L.Trainer) -> tuple[str | None, str | None]:
    """``(best, last)`` checkpoint files written by the trainer's ``ModelCheckpoint`` callbacks.

    Best: the first callback that monitors a metric. Last: a callback without a monitor (it keeps
    only its latest file), else a ``save_last`` file.
    """
    best = last = None
    for cb in trainer.checkpoint_callbacks:
        if not isinstance(cb, ModelCheckpoint):
            continue
        if cb.monitor is None:
            last = last or cb.best_model_path or None
        else:
            best = best or cb.best_model_path or None
            last = last or cb.last_model_path or None
    return best, last


def _best_score(trainer: L.Trainer) -> str:
    """`` (val/dice 0.757)``: the score of the checkpoint :func:`checkpoint_paths` calls best (the
    first callback that monitors a metric), or ``""`` without one."""
    best = next((cb for cb in trainer.checkpoint_callbacks
                 if isinstance(cb, ModelCheckpoint) and cb.monitor is not None and cb.best_model_path), None)
    if best is None or best.best_model_score is None:
        return ""
    return f" ({best.monitor} {float(best.best_model_score):.4g})"


def _lightning_logs_once() -> None:
    """Under an application's logging (Hydra: console and log file), Lightning's messages go through it
    alone: the ``lightning`` package also prints them on stderr through a handler of its own."""
    if not logging.getLogger().handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
            logger.removeHandler(handler)
        logger.propagate = True


def _resume_hint(trainer: L.Trainer) -> str:
    """What an interrupted fit finished and how to go on from it."""
    _, last = checkpoint_paths(trainer)
    done = f"training stopped in epoch {trainer.current_epoch} at step {trainer.global_step}"
    if last and Path(last).is_file():
        return f"{done}; resume from the last checkpoint with the same settings and ckpt_path={last}"
    return f"{done}, before any checkpoint was written; rerun the same command to start over"


def _float_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def _data_specs(datamodule: Any) -> tuple[LabelSpec, dict[str, Any]]:
    missing = [a for a in ("label_spec", "preprocess_spec") if not hasattr(datamodule, a)]
    if missing:
        raise InputError(f"data: {type(datamodule).__name__} lacks {missing}; use wmhseg.data.datamodule.WMHDataModule")
    return datamodule.label_spec, datamodule.preprocess_spec.to_dict()


def trainer_config(trainer_cfg: DictConfig) -> DictConfig:
    """The ``trainer`` config, with ``sync_batchnorm`` off for CPU processes.

    torch synchronises batch-norm statistics across GPU processes only (``SyncBatchNorm`` raises
    on CPU tensors), so DDP over CPU processes (gloo) normalises each rank's batch on its own.
    """
    cfg = trainer_cfg.copy()
    accelerator = str(cfg.get("accelerator") or "auto")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if cfg.get("sync_batchnorm") and on_cpu:
        log.warning("trainer.sync_batchnorm=true needs GPU processes; each CPU process normalises its own batch")
        with open_dict(cfg):
            cfg.sync_batchnorm = False
    return cfg


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train (or, with ``train=false``, validate) a model as ``cfg`` says.

    Args:
        cfg: the composed ``configs/train.yaml`` (groups ``data``, ``model``, ``trainer``,
            ``callbacks``, ``logger``, ``paths``) plus ``seed``, ``ckpt_path``, ``train``,
            ``validate_best`` and ``torch_threads``.

    Returns:
        ``{"metrics": {name: float}, "best_ckpt": str|None, "last_ckpt": str|None,
        "output_dir": str, "global_step": int, "epoch": int, "wall_s": float}``; also written to
        ``<output_dir>/train_summary.json`` by the rank-0 process.

    Raises:
        InputError: a bad configuration value (named in the message) or a missing ``ckpt_path``.
    """
    start = time.perf_counter()
    _lightning_logs_once()
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)
    ckpt_path = _resume_path(cfg)
    if not cfg.get("train", True) and ckpt_path is None:
        raise InputError("train=false needs ckpt_path=<checkpoint> to validate")

    datamodule = instantiate(cfg.data, _convert_="all")
    label_spec, preprocessing = _data_specs(datamodule)
    if cfg.data.get("patch_size") is not None:
        check_patch_size(to_plain(cfg.data.patch_size), network_config(cfg.model.net, label_spec))
    model = build_module(cfg, label_spec, preprocessing)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    threads = check_torch_threads(cfg.get("torch_threads", "auto"))
    if threads is not None:  # the CPU's cores shared with the loader workers (wmhseg.models.cpu_threads)
        callbacks.append(CpuThreads(threads))
    loggers = instantiate_loggers(cfg.get("logger"))
    if not loggers:  # LearningRateMonitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if ckpt_path is not None:
        check_resume_compatible(ckpt_path, model)
    try:
        trainer: L.Trainer = instantiate(trainer_config(cfg.trainer), callbacks=callbacks, logger=loggers or False)
    except InstantiationException as exc:  # e.g. accelerator=gpu on a machine without one
        raise InputError(f"trainer: {exc.__cause__ or exc}") from exc

    if cfg.get("train", True):
        log.info("Training; outputs in %s", cfg.paths.output_dir)
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except SystemExit:  # Lightning turns Ctrl-C into exit(1) after its own clean-up
            if trainer.interrupted:
                raise Interrupted(_resume_hint(trainer)) from None
            raise
    else:
        trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = _float_metrics(trainer.callback_metrics)

    best, last = checkpoint_paths(trainer)
    if cfg.get("train", True) and cfg.get("validate_best") and best:
        trainer.validate(model, datamodule=datamodule, ckpt_path=best, weights_only=True)
        metrics.update({f"best/{k}": v for k, v in _float_metrics(trainer.callback_metrics).items()})

    result: dict[str, Any] = {
        "metrics": {k: (None if math.isnan(v) else v) for k, v in metrics.items()},
        "best_ckpt": best,
        "last_ckpt": last,
        "output_dir": str(cfg.paths.output_dir),
        "global_step": int(trainer.global_step),
        "epoch": int(trainer.current_epoch),
        "wall_s": round(time.perf_counter() - start, 2),
    }
    if trainer.is_global_zero:
        atomic_write_json(Path(str(cfg.paths.output_dir)) / "train_summary.json", result)
        log.info("Best checkpoint: %s%s; last: %s (val/dice %s at the last validation)", best, _best_score(trainer),
                 last, result["metrics"].get("val/dice"))
    return result

