"""End-to-end training: the smoke experiment through train.py, resuming, overfitting one scan, DDP."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from wmhseg.checkpoint import build_network, load_checkpoint, read_meta
from wmhseg.errors import InputError
from wmhseg.synth.images import write_dataset
from wmhseg.training import train

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def _train_py(*overrides: str, timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "train.py", *overrides, "callbacks.progress_bar.refresh_rate=0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"train.py {' '.join(overrides)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def _compose(out_dir: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=smoke", *overrides], return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.root_dir = str(out_dir)
        cfg.paths.output_dir = str(out_dir)
        if cfg.get("callbacks") and "progress_bar" in cfg.callbacks:
            cfg.callbacks.progress_bar.refresh_rate = 0
    return cfg


def _csv_metric(out_dir: Path, name: str) -> list[float]:
    rows = list(csv.DictReader(open(next((out_dir / "csv").glob("version_*/metrics.csv")))))
    return [float(r[name]) for r in rows if r.get(name)]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smoke")
    _train_py("experiment=smoke", f"hydra.run.dir={out}")
    return out


@pytest.mark.slow
def test_smoke_experiment_trains_end_to_end(smoke_run):
    out = smoke_run
    summary = json.loads((out / "train_summary.json").read_text())
    last, best = out / "checkpoints" / "last.ckpt", out / "checkpoints" / "best.ckpt"
    assert sorted(p.name for p in (out / "checkpoints").glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]  # documented
    assert summary["last_ckpt"] == str(last) and summary["best_ckpt"] == str(best)
    assert summary["metrics"]["val/dice"] == pytest.approx(_csv_metric(out, "val/dice")[-1])  # the last validation
    assert load_checkpoint(last)["global_step"] == summary["global_step"] == 90  # the latest state, not the best
    for path in (last, best):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        meta = read_meta(ckpt)
        assert meta["network"]["out_channels"] == 2 and meta["labels"]["mode"] == "binary"
        assert meta["inference"]["roi_size"] == [16, 16, 16]
        assert "task_name: smoke" in meta["config"]
    net = build_network(meta["network"])
    net.load_state_dict({k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")})
    assert len(_csv_metric(out, "val/dice")) == 6  # one validation per epoch
    # the log names the best checkpoint with its own score (the best of the validations), not the last one's
    logged = next(out.glob("*.log")).read_text()
    assert f"best.ckpt (val/dice {max(_csv_metric(out, 'val/dice')):.4g})" in logged


@pytest.mark.slow
def test_resume_continues_the_step_count(smoke_run, tmp_path):
    out = smoke_run
    last = out / "checkpoints" / "last.ckpt"
    saved = load_checkpoint(last)
    cfg = _compose(tmp_path, f"ckpt_path={last}", f"data.data_dir={out / 'data'}", "trainer.max_epochs=7",
                   "validate_best=true", "torch_threads=1")
    threads = torch.get_num_threads()
    result = train(cfg)
    assert torch.get_num_threads() == threads  # the run's own thread count is given back at its end
    assert saved["epoch"] == 5
    assert result["global_step"] > saved["global_step"] > 0
    resumed = load_checkpoint(result["last_ckpt"])
    assert resumed["epoch"] == 6 and resumed["global_step"] == result["global_step"]
    assert resumed["optimizer_states"][0]["state"], "optimizer state was not restored"
    # validate_best validates this run's best checkpoint again (the new output folder keeps its own
    # best): its Dice is the best this run logged
    assert result["metrics"]["best/val/dice"] == pytest.approx(max(_csv_metric(tmp_path, "val/dice")), abs=1e-5)


@pytest.mark.slow
def test_bad_resume_checkpoints_are_named(smoke_run, tmp_path):
    cfg = _compose(tmp_path, f"ckpt_path={tmp_path / 'nope.ckpt'}")
    with pytest.raises(InputError, match="nope.ckpt"):
        train(cfg)
    last = smoke_run / "checkpoints" / "last.ckpt"
    cfg = _compose(tmp_path, f"ckpt_path={last}", "model.net.channels=[8,16,64]", f"data.data_dir={smoke_run / 'data'}")
    with pytest.raises(InputError, match=r"different network config \(differs in \['channels'\]\)"):
        train(cfg)


@pytest.mark.slow
def test_overfits_one_scan(tmp_path):
    """Gradients reach the network and labels line up with images after all transforms.

    The manifest lists one scan twice under two subject IDs: the subject split trains on one copy
    and validates (whole volume, sliding window) on the other, i.e. on the training volume itself.
    """
    data = tmp_path / "data"
    write_dataset(data, n_subjects=1, shape=(32, 32, 32), seed=3, wmh_volume_mm3=800.0)
    rows = list(csv.DictReader(open(data / "manifest.csv")))
    with open(data / "twice.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["subject_id", "session_id", "t1", "flair", "label"],
                                extrasaction="ignore")
        writer.writeheader()
        for subject in ("A", "B"):
            writer.writerow({**rows[0], "subject_id": subject})
    out = tmp_path / "run"
    _train_py("experiment=smoke", f"hydra.run.dir={out}", f"data.manifest={data / 'twice.csv'}",
              "data.val_fraction=0.5", "data.augmentation.enabled=false", "data.train_repeats=10",
              "data.pos_fraction=0.7", "model.optimizer.lr=1e-2", "model.scheduler=null", "trainer.max_epochs=16",
              "trainer.check_val_every_n_epoch=16", "logger=none")
    metrics = json.loads((out / "train_summary.json").read_text())["metrics"]
    assert metrics["val/n_scans"] == 1
    assert metrics["val/dice"] > 0.8, metrics

    # the trained (batch-norm) network: infer.py's default one pass gives the sliding window's mask
    from wmhseg.inference import Predictor
    from wmhseg.metrics import dice as dice_score

    ckpt = out / "checkpoints" / "last.ckpt"
    one_pass = Predictor.from_checkpoint(ckpt, device="cpu", precision="fp32")
    window = Predictor.from_checkpoint(ckpt, device="cpu", precision="fp32", roi_size=[16, 16, 16], overlap=0.5)
    assert one_pass.roi_size is None
    prepared = one_pass.prepare(data / rows[0]["t1"], data / rows[0]["flair"])
    masks = [p.to_native(p.predict(prepared.image), prepared.shape, prepared.affine).mask for p in (one_pass, window)]
    truth = np.asarray(nib.load(data / rows[0]["label"]).dataobj) == 9
    dice = [dice_score(a, b) for a, b in ((masks[0], masks[1]), (masks[0], truth), (masks[1], truth))]
    assert dice[0] > 0.97, dice  # about 0.98: they differ where the 16^3 windows' borders see zero padding
    assert dice[1] > 0.8 and dice[1] > dice[2] - 0.02, dice  # and one pass is as close to the truth


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    """Two gloo ranks share the data; validation metrics count each of the 3 held-out scans once, and
    the threshold calibrated on them is the one a single process chooses."""
    out = tmp_path / "ddp"
    proc = _train_py("experiment=smoke", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                     "trainer.precision=32-true", "trainer.max_epochs=1", "data.val_fraction=0.75",
                     "model.calibrate_threshold=true", f"hydra.run.dir={out}")
    # the channels-last weights (on by default on the CPU) have the strides of their gradients
    assert "Grad strides do not match bucket view strides" not in proc.stderr + proc.stdout
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["global_step"] == 3  # 1 training subject x 10 repeats, 5 items per rank, batch 2
    assert summary["metrics"]["val/n_scans"] == 3  # rank 1's padded duplicate is not counted
    ckpt = load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert read_meta(ckpt)["network"]["_target_"] == "monai.networks.nets.UNet"
    assert read_meta(ckpt)["inference"]["threshold"] == pytest.approx(summary["metrics"]["val/threshold"])
    # one process validating the same weights on the same scans gives the same means
    cfg = _compose(tmp_path / "single", "train=false", f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}",
                   "data.val_fraction=0.75", f"data.data_dir={out / 'data'}", "logger=none",
                   "model.calibrate_threshold=true")
    single = train(cfg)["metrics"]
    assert single["val/n_scans"] == 3
    for name in ("val/dice", "val/avd", "val/lesion_f1", "val/loss", "val/threshold", "val/dice_calibrated"):
        assert single[name] == pytest.approx(summary["metrics"][name], rel=1e-4, abs=1e-6), name
