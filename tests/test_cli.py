"""The three commands' user errors end in one line on stderr and exit 2; Ctrl-C in one line and exit
130; infer.py and analyze.py describe their own settings under --help; `make help` shows TORCH_SPEC."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from hydra.errors import InstantiationException
from inference_cases import infer_cfg, make_checkpoint, write_case, write_manifest
from lightning.pytorch.callbacks import Callback
from test_training import _compose

from wmhseg.cli import EXIT_INTERRUPTED, EXIT_USER_ERROR, guard, one_line, user_error
from wmhseg.errors import InputError, ScanError
from wmhseg.inference import pipeline, runner
from wmhseg.inference.infer_config import InferenceSettings
from wmhseg.training import train

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _one_error_line(proc: subprocess.CompletedProcess, command: str) -> str:
    assert proc.returncode == EXIT_USER_ERROR, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{command}: error: "), proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tables")
    pd.DataFrame({"subject_id": ["1"], "session_id": ["1"], "group": ["als"], "age": [60], "sex": ["M"],
                  "years_since_baseline": [0.0], "alsfrs_r": [40], "survival_months": [30], "event": [1]}
                 ).to_csv(folder / "clinical.csv", index=False)
    pd.DataFrame({"subject_id": ["1"], "session_id": ["1"], "wmh_mm3": [100.0], "status": ["ok"]}
                 ).to_csv(folder / "volumes.csv", index=False)
    return folder


@pytest.mark.slow
def test_infer_py_without_arguments_and_with_a_missing_manifest(tmp_path):
    line = _one_error_line(_run("infer.py"), "infer.py")
    assert "missing required settings ckpt_path, input, out_dir" in line and "usage: python infer.py" in line
    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    line = _one_error_line(_run("infer.py", f"ckpt_path={ckpt}", f"input={tmp_path / 'nope.csv'}",
                                f"out_dir={tmp_path / 'out'}"), "infer.py")
    assert "nope.csv: manifest not found" in line


@pytest.mark.slow
def test_analyze_py_names_the_bad_value_plainly(tables, tmp_path):
    line = _one_error_line(_run("analyze.py", f"volumes={tables / 'volumes.csv'}",
                                f"clinical={tables / 'clinical.csv'}", f"out_dir={tmp_path}"), "analyze.py")
    assert "column group has 'als'" in line and "np.str_" not in line and "did you mean 'ALS'" in line
    line = _one_error_line(_run("analyze.py", "volumes=x.csv", "cutoff_months=[1,"), "analyze.py")
    assert "no viable alternative at input" in line


@pytest.mark.slow
def test_train_py_bad_group_option_and_missing_manifest(tmp_path):
    line = _one_error_line(_run("train.py", "experiment=nope"), "train.py")
    assert "Could not find 'experiment/nope'" in line and "smoke" in line
    line = _one_error_line(_run("train.py", "experiment=smoke", "data.manifest=/nope/train.csv",
                                f"hydra.run.dir={tmp_path}"), "train.py")
    assert "/nope/train.csv: manifest not found" in line


@pytest.mark.parametrize("command, config", [("infer.py", "infer"), ("analyze.py", "analyze")])
def test_help_lists_the_commands_own_settings(command, config):
    proc = _run(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{command}: ") and f"Usage: python {command}" in proc.stdout
    settings = yaml.safe_load((ROOT / "configs" / f"{config}.yaml").read_text())
    for key in (k for k in settings if k not in ("hydra", "defaults")):
        assert f"\n{key}:" in proc.stdout, key
    assert "experiment" not in proc.stdout and "Config groups" not in proc.stdout  # no training groups


def test_ctrl_c_during_inference_says_what_was_finished_and_resumes(tmp_path, monkeypatch, capsys):
    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    case = write_case(tmp_path / "data", "c")
    manifest = write_manifest(tmp_path / "m.csv", [
        {"subject_id": str(i), "session_id": "1", "t1": case["t1"], "flair": case["flair"]} for i in range(3)])
    real = pipeline.predict_scan
    calls = []

    def interrupted_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "predict_scan", interrupted_on_the_second)
    with pytest.raises(SystemExit) as info:
        guard("infer.py", runner.infer, infer_cfg(ckpt, manifest, tmp_path / "out"))
    assert info.value.code == EXIT_INTERRUPTED
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("infer.py: interrupted: 1 of the 3 scans of this run were finished")
    assert "rerun the same command to resume" in err[0]
    monkeypatch.setattr(pipeline, "predict_scan", real)
    assert runner.infer(infer_cfg(ckpt, manifest, tmp_path / "out")) == 0
    assert "1 skipped (done before)" in capsys.readouterr().out


class InterruptInSecondEpoch(Callback):
    """Ctrl-C as the second epoch starts (after the first epoch's checkpoint)."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 1:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_ctrl_c_during_training_names_the_checkpoint_to_resume_from(tmp_path, capsys):
    cfg = _compose(tmp_path, "+callbacks.interrupt._target_=test_cli.InterruptInSecondEpoch", "logger=none")
    with pytest.raises(SystemExit) as info:
        guard("train.py", train, cfg)
    assert info.value.code == EXIT_INTERRUPTED
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("train.py: interrupted: training stopped in epoch 1")
    last = line.split("ckpt_path=")[1]
    assert Path(last).is_file() and torch.load(last, weights_only=True)["epoch"] == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_a_clear_error():
    with pytest.raises(InputError, match="inference.device='cuda' but CUDA is not available here"):
        InferenceSettings(device="cuda")
    with pytest.raises(InputError, match="is not one of auto, cpu, cuda, cuda:N"):
        InferenceSettings(device="gpu0")


def test_guard_and_messages(capsys):
    def bad():  # what Hydra's instantiate makes of an error raised while building an object
        raise InstantiationException("Error in call to target 'X':\nScanError(...)") from ScanError("a.nii: broken")

    with pytest.raises(SystemExit) as info:
        guard("x.py", bad)
    assert info.value.code == EXIT_USER_ERROR and capsys.readouterr().err == "x.py: error: a.nii: broken\n"
    assert user_error(InstantiationException("wrapped")) is None
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        guard("x.py", lambda: 1 / 0)
    assert one_line("3 of 4 scans failed validation:\nrow 1: a\nrow 2: b\n") == "3 of 4 scans failed validation: row 1: a; row 2: b"
    assert one_line("Could not find 'x'\n\nConfig search path:\n\tprovider=hydra") == "Could not find 'x'"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_help_shows_the_torch_spec_value():
    out = subprocess.run(["make", "-s", "help", "TORCH_SPEC=torch==9.9.9"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60).stdout
    assert "(torch==9.9.9 first)" in out and "$(TORCH_SPEC)" not in out
