"""The independent phantom family: no shared code with the training generator, sane scans on
every grid kind, a reusable written set."""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from same_images import assert_same_sets

import wmhseg.synth.independent as independent
from wmhseg.synth.independent import GRID_KINDS, make_phantom, write_family

_TRAINING_SIDE = ("wmhseg.synth.images", "wmhseg.synth.anatomy", "wmhseg.data", "wmhseg.synth.cohort",
                  "wmhseg.synth.study")


def test_imports_nothing_of_the_training_generator():
    tree = ast.parse(Path(independent.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    own = {n for n in names if n.startswith("wmhseg")}
    # file writers, error types and the process pool only
    assert own <= {"wmhseg.files", "wmhseg.image_io", "wmhseg.errors", "wmhseg.parallel"}, own
    # nor through what it imports: a fresh interpreter never loads the training side
    code = ("import sys, wmhseg.synth.independent; "
            f"print([m for m in sys.modules if m.startswith({_TRAINING_SIDE!r})])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("kind", GRID_KINDS)
def test_phantom_on_each_grid_kind(kind):
    p = make_phantom(5, kind, voxel_mm=3.0, spacing_scale=2.0)
    assert p.label.shape == p.flair.shape and p.label.dtype == np.uint8
    assert set(np.unique(p.label)) <= set(range(10)) and {1, 7, 8, 9} <= set(np.unique(p.label))
    assert np.isfinite(p.flair).all() and p.flair.min() >= 0
    rot = p.affine[:3, :3] / np.linalg.norm(p.affine[:3, :3], axis=0)
    if kind == "thick_lps":
        assert rot[0, 0] < 0 and rot[1, 1] < 0
    if kind == "oblique":
        assert np.abs(rot - np.diag(np.diag(rot))).max() > 0.1
    if kind.startswith("thick"):
        sizes = np.linalg.norm(p.affine[:3, :3], axis=0)
        assert sizes[2] > 2.5 * sizes[0]
    # the contrast model: WMH brighter than white matter on FLAIR
    assert np.median(p.flair[p.label == 9]) > np.median(p.flair[p.label == 8])
    # not skull-stripped: signal outside the brain label
    assert p.flair[p.label == 0].max() > np.median(p.flair[p.label == 8])
    assert p.t1.shape != p.flair.shape or not np.allclose(p.t1_affine, p.affine)


def test_fissure_stops_at_the_corpus_callosum():
    """The hemispheres are split by a CSF fissure above the callosum and joined by white matter
    between the callosum and the base, as in a real brain."""
    mm = 2.0
    tissue = independent._anatomy(np.random.default_rng(3), (82, 98, 82), mm)  # x = +-1 mm at 40, 41
    c = (np.asarray(tissue.shape) - 1) / 2
    y, z = ((np.arange(n) - ci) * mm for n, ci in zip(tissue.shape[1:], c[1:], strict=True))
    plane = tissue[40]
    high = (np.abs(y)[:, None] < 30) & (z[None, :] > 45) & ~np.isin(plane, (0, 10, 11))  # inside the skull
    assert high.sum() > 50 and (plane[high] == 12).all()  # the fissure above the callosum
    joined = (np.abs(y)[:, None] < 10) & (z[None, :] > 10) & (z[None, :] < 18)
    assert (plane[joined] == 12).sum() == 0 and (plane[joined] == 8).mean() > 0.5  # callosum, no fissure


def test_written_family_is_a_manifest_and_is_reused(tmp_path):
    manifest = write_family(tmp_path, n_subjects=2, seed=3, voxel_mm=4.0, spacing_scale=2.5)
    table = pd.read_csv(manifest, dtype=str)
    assert list(table["kind"]) == list(GRID_KINDS[:2])
    for row in table.itertuples():
        assert nib.load(tmp_path / row.flair).shape == nib.load(tmp_path / row.label).shape
        assert float(row.wmh_mm3_true) > 0
    stamp = manifest.stat().st_mtime_ns
    assert write_family(tmp_path, n_subjects=2, seed=3, voxel_mm=4.0, spacing_scale=2.5) == manifest
    assert manifest.stat().st_mtime_ns == stamp


def test_written_family_does_not_depend_on_the_worker_count(tmp_path):
    kw = dict(n_subjects=3, seed=3, voxel_mm=4.0, spacing_scale=2.5)
    assert_same_sets(write_family(tmp_path / "one", workers=1, **kw), write_family(tmp_path / "two", workers=2, **kw))


@pytest.mark.slow
def test_datamodule_validates_on_the_family_as_a_second_loader(tiny_dataset, tmp_path):
    from wmhseg.data.datamodule import WMHDataModule
    from wmhseg.errors import InputError

    dm = WMHDataModule(manifest=str(tiny_dataset), data_dir=str(tmp_path), patch_size=(16, 16, 16),
                       val_fraction=0.25, validate="headers", augmentation={"enabled": False},
                       independent=functools.partial(write_family, n_subjects=1, seed=2, voxel_mm=4.0,
                                                     spacing_scale=2.5))
    dm.prepare_data()
    dm.setup("fit")
    in_family, other = dm.val_dataloader()
    batch = next(iter(other))
    assert batch["image"].shape[:2] == (1, 2) and batch["label"].shape[1] == 1
    assert (batch["label"] == 1).any()  # binary WMH target of the phantom
    assert len(in_family) == 2
    with pytest.raises(InputError, match="did you mean 'n_subjects'"):
        WMHDataModule(manifest=str(tiny_dataset), independent=functools.partial(write_family, n_subject=2))
