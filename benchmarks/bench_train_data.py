"""Goal 3: the training data pipeline never starves the network.

The ``synthetic`` experiment's configuration (``configs/train.yaml`` + ``experiment=synthetic``)
builds the real :class:`~wmhseg.data.datamodule.WMHDataModule` and
:class:`~wmhseg.models.module.WMHSegModule` several times, differing only in the data module's
``cache`` and ``num_workers``:

* ``cached``: the configured pipeline (``cache: memory``): the deterministic preprocessing is
  cached, only random sampling and augmentation run per batch;
* ``naive``: ``cache: none`` and no loader workers, i.e. a plain ``monai.data.Dataset`` with
  the same transforms, loading and preprocessing every volume from disk for every batch;
* ``other_layout``: the configured pipeline with the network in the other memory layout
  (``model.channels_last``: contiguous where the configuration gives channels-last 3-D);
* (full run) the configured cache with the other choice of loader workers (0 or 1).

They train side by side, in alternating blocks of steps, in one process. Timers split each
step into the wait for ``next(loader_iterator)`` and the compute (forward, loss, backward,
optimizer step). Reported: steps/s of each, their ratio, and the data-wait share of step time.

The process runs under ``train.py``'s OpenMP settings (:data:`wmhseg.cli.TRAIN_ENV`, which ``run.py``
puts in this section's environment before torch loads): idle OpenMP threads sleep instead of spinning.
Under PyTorch's default, spinning threads, the network's step took 2.6x as long while the loader
worker used a core (0.109 against 0.041 s), which is what ``train.py`` avoids.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from timing import loadavg, torch_threads

__all__ = ["run"]

ROOT = Path(__file__).resolve().parents[1]
WAIT_TARGET = 0.10
SPEED_TARGET = 3.0


def available() -> tuple[bool, str]:
    """Whether the data module, the model and the training helpers can be imported."""
    try:
        import wmhseg.data.datamodule  # noqa: F401
        import wmhseg.models.module  # noqa: F401
        import wmhseg.training  # noqa: F401
    except ImportError as exc:
        return False, f"not available: {exc}"
    return True, ""


def compose_config(data_dir: Path, out_dir: Path, overrides: list[str] | None = None) -> Any:
    """The ``synthetic`` experiment's training config, with run paths pointed at ``out_dir``."""
    from hydra import compose, initialize_config_dir

    from wmhseg.data.data_config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=[
            "experiment=synthetic",
            f"paths.root_dir={out_dir}",
            f"paths.output_dir={out_dir}",
            f"paths.work_dir={out_dir}",
            f"data.data_dir={data_dir}",
            *(overrides or []),
        ])


class _Pipeline:
    """One data module + model + optimizer, stepped by hand with timers, on the intra-op threads a
    training process gives its network (``torch_threads``, :mod:`wmhseg.models.cpu_threads`)."""

    def __init__(self, cfg: Any, cache: str, device: torch.device, num_workers: int | None = None,
                 channels_last: bool | str | None = None) -> None:
        from hydra.utils import instantiate
        from omegaconf import open_dict

        from wmhseg.models.cpu_threads import check_torch_threads, training_threads
        from wmhseg.training import build_module

        torch.manual_seed(0)
        extra = {} if num_workers is None else {"num_workers": num_workers}
        self.dm = instantiate(cfg.data, cache=cache, _convert_="all", **extra)
        self.dm.prepare_data()
        t = time.perf_counter()
        self.dm.setup("fit")
        self.setup_s = time.perf_counter() - t
        if channels_last is not None:  # the module built as train.py builds it, with model.channels_last set
            cfg = cfg.copy()
            with open_dict(cfg):
                cfg.model.channels_last = channels_last
        self.model = build_module(cfg, self.dm.label_spec, self.dm.preprocess_spec.to_dict()).to(device)
        self.model.apply_memory_format(device)  # what the trainer's setup does
        self.model.train()
        opt = self.model.configure_optimizers()
        self.opt = opt["optimizer"] if isinstance(opt, dict) else (opt[0][0] if isinstance(opt, tuple) else opt)
        if isinstance(self.opt, list | tuple):
            self.opt = self.opt[0]
        self.device = device
        self.loader = self.dm.train_dataloader()
        self._it: Iterator[Any] = iter(self.loader)
        setting = check_torch_threads(cfg.get("torch_threads", "auto"))
        self.threads = None if device.type != "cpu" else training_threads(setting, torch.get_num_threads(),
                                                                           self.dm.num_workers)
        self.wait: list[float] = []
        self.compute: list[float] = []
        self.batch_idx = 0

    def _next(self) -> Any:
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            return next(self._it)

    def step(self, record: bool = True) -> None:
        """One training step; the data wait and compute times are kept when ``record``."""
        t0 = time.perf_counter()
        batch = self._next()
        batch = {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        t1 = time.perf_counter()
        with warnings.catch_warnings(), torch_threads(self.threads):
            warnings.filterwarnings("ignore", message=r".*self\.log\(\)", category=UserWarning)
            loss = self.model.training_step(batch, self.batch_idx)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t2 = time.perf_counter()
        self.batch_idx += 1
        if record:
            self.wait.append(t1 - t0)
            self.compute.append(t2 - t1)

    def summary(self) -> dict[str, Any]:
        """Steps/s, mean step time and the data-wait share, over the recorded steps."""
        total = sum(self.wait) + sum(self.compute)
        n = len(self.wait)
        return {
            "steps": n,
            "steps_per_s": round(n / total, 3) if total else None,
            "mean_step_s": round(total / n, 4) if n else None,
            "mean_wait_s": round(sum(self.wait) / n, 4) if n else None,
            "mean_compute_s": round(sum(self.compute) / n, 4) if n else None,
            "data_wait_fraction": round(sum(self.wait) / total, 4) if total else None,
            "setup_s": round(self.setup_s, 2),
            "train_items_per_epoch": len(self.loader.dataset),
            "num_workers": self.dm.num_workers,
            "torch_threads": self.threads or torch.get_num_threads(),
            "cache": self.dm.cache,
            "channels_last": self.model.channels_last,
        }


def run(*, quick: bool = False, device: str | torch.device = "cpu", overrides: list[str] | None = None) -> dict[str, Any]:
    """Train both pipelines side by side and return the section's results."""
    ok, reason = available()
    if not ok:
        return {"name": "train_data", "available": False, "reason": reason, "rows": []}
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    blocks, block_steps, warm = (2, 5, 2) if quick else (4, 10, 2)
    with tempfile.TemporaryDirectory(prefix="wmhseg-bench-train-") as tmp:
        cfg = compose_config(Path(tmp) / "data", Path(tmp) / "run", overrides)
        workers = int(cfg.data.get("num_workers") or 0)
        cache = str(cfg.data.get("cache", "memory"))
        pipes = {"cached": _Pipeline(cfg, cache, device), "naive": _Pipeline(cfg, "none", device, num_workers=0)}
        layout = pipes["cached"].model.channels_last
        pipes["other_layout"] = _Pipeline(cfg, cache, device, channels_last=not layout)
        alt = 1 if workers == 0 else 0
        if not quick:
            pipes[f"cached_{alt}_workers"] = _Pipeline(cfg, cache, device, num_workers=alt)
        load_before = loadavg()
        for b in range(blocks):
            order = list(pipes) if b % 2 == 0 else list(pipes)[::-1]
            for name in order:
                # the first steps of a block are not recorded: a loader with workers has
                # prefetched them while the other pipelines ran
                for i in range(warm + block_steps):
                    pipes[name].step(record=i >= warm)
        load_after = loadavg()
        result = {name: p.summary() for name, p in pipes.items()}
        data_cfg = {k: cfg.data.get(k) for k in ("patch_size", "batch_size", "samples_per_volume", "num_workers",
                                                 "train_repeats")}
        data_cfg = {k: (list(v) if hasattr(v, "__iter__") and not isinstance(v, str) else v) for k, v in data_cfg.items()}
        synth = {k: v for k, v in cfg.data.synthetic.items() if not k.startswith("_")}
        synth = {k: (list(v) if hasattr(v, "__iter__") and not isinstance(v, str) else v) for k, v in synth.items()}
    cached, naive = result["cached"], result["naive"]
    speed = cached["steps_per_s"] / naive["steps_per_s"]
    rows = [{
        "goal": "3. training steps/s (synthetic experiment)",
        "baseline": f"naive uncached Dataset, 0 workers: {naive['steps_per_s']:.2f} steps/s",
        "candidate": (f"WMHDataModule as configured (cache {cached['cache']}, {cached['num_workers']} workers): "
                      f"{cached['steps_per_s']:.2f} steps/s"),
        "ratio": round(speed, 2),
        "target": f">= {SPEED_TARGET:g}x",
        "met": speed >= SPEED_TARGET,
    }, {
        "goal": "3. data wait share of step time",
        "baseline": f"naive: {100 * naive['data_wait_fraction']:.1f} %",
        "candidate": f"cached: {100 * cached['data_wait_fraction']:.1f} %",
        "ratio": None,
        "target": f"< {100 * WAIT_TARGET:g} %",
        "met": cached["data_wait_fraction"] < WAIT_TARGET,
    }]
    other = result["other_layout"]
    layouts = {cached["channels_last"]: cached, other["channels_last"]: other}
    rows.append({
        "goal": "3. network step (forward, loss, backward, optimizer), channels-last 3-D layout",
        "baseline": f"contiguous layout: {layouts[False]['mean_compute_s']:.4f} s",
        "candidate": f"channels-last: {layouts[True]['mean_compute_s']:.4f} s"
                     + (" (as configured)" if cached["channels_last"] else " (not configured on this device)"),
        "ratio": round(layouts[False]["mean_compute_s"] / layouts[True]["mean_compute_s"], 2),
        "target": "> 1x on CPU (measured only, elsewhere)",
        "met": layouts[False]["mean_compute_s"] > layouts[True]["mean_compute_s"] if device.type == "cpu" else None,
    })
    alt_name = f"cached_{1 if cached['num_workers'] == 0 else 0}_workers"
    if alt_name in result:
        w = result[alt_name]
        rows.append({
            "goal": f"3. same, cached with {w['num_workers']} loader workers",
            "baseline": f"naive: {naive['steps_per_s']:.2f} steps/s",
            "candidate": f"{w['steps_per_s']:.2f} steps/s, data wait {100 * w['data_wait_fraction']:.1f} %",
            "ratio": round(w["steps_per_s"] / naive["steps_per_s"], 2),
            "target": f">= {SPEED_TARGET:g}x, wait < {100 * WAIT_TARGET:g} %",
            "met": w["steps_per_s"] / naive["steps_per_s"] >= SPEED_TARGET and w["data_wait_fraction"] < WAIT_TARGET,
        })
    return {
        "name": "train_data",
        "available": True,
        "rows": rows,
        "details": {
            "pipelines": result,
            "blocks": blocks,
            "steps_per_block": block_steps,
            "unrecorded_steps_per_block": warm,
            "data": data_cfg,
            "synthetic": synth,
            "precision": str(cfg.trainer.get("precision", "32")),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (spinning threads)"),
            "note": "steps/s over data wait + compute; compute runs the module's training_step, backward, optimizer step",
            "loadavg_during": [load_before, load_after],
        },
    }
