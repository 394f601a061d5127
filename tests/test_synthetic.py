"""The reduced task: MSD layout, deterministic bytes, learnable structure, atomic write."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pgps.cli import main
from pgps.data.synthetic import make_task


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_msd_layout_and_determinism(tmp_path: Path) -> None:
    a = make_task(tmp_path / "a", seed=3, num_train=4, num_test=2)
    b = make_task(tmp_path / "b", seed=3, num_train=4, num_test=2)
    c = make_task(tmp_path / "c", seed=4, num_train=4, num_test=2)
    assert a.name == "Task901_PGPSSynth"
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    ds = json.loads((a / "dataset.json").read_text())
    assert set(ds) >= {"modality", "labels", "training", "test", "numTraining"}
    assert len(ds["training"]) == 4 and len(ds["test"]) == 2
    for case in ds["training"]:
        img = nib.load(a / case["image"])
        lab = np.asarray(nib.load(a / case["label"]).dataobj)
        assert img.shape == lab.shape == (32, 32, 32)
        assert set(np.unique(lab)) == {0, 1, 2}  # both foreground labels present in every case
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]  # no temp dir left


def test_aniso_variant_spacing(tmp_path: Path) -> None:
    task = make_task(tmp_path, seed=0, variant="aniso", num_train=2, num_test=0)
    img = nib.load(next((task / "imagesTr").iterdir()))
    assert img.shape == (40, 40, 16)
    assert tuple(float(z) for z in img.header.get_zooms()) == (1.0, 1.0, 3.0)


def test_cli_rejects_bad_variant_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["make-task", "--out", str(tmp_path), "--num-train", "1"]) == 2
    assert "at least 2 training cases" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_task_lists_import_without_numerical_libraries() -> None:
    """Other code (the params schema, hence every pipeline stage) lists the tasks from pgps.data.catalog: that
    must import nothing but the standard library and pgps' own package markers -- not the downloader, not the
    generator, not torch/numpy/nibabel/scipy (a change there must not look like a change of every stage)."""
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "from pgps.data.catalog import MSD_MD5, TASK_VARIANT, VARIANTS\n"
        "loaded = sorted(m for m in set(sys.modules) - before if m.startswith('pgps'))\n"
        "heavy = sorted({'torch', 'numpy', 'nibabel', 'scipy', 'tqdm'} & set(sys.modules))\n"
        "print(len(MSD_MD5), sorted(TASK_VARIANT), sorted(VARIANTS), heavy, loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    tasks = "['Task901_PGPSSynth', 'Task902_PGPSSynthAniso', 'Task903_PGPSSynthSmall']"
    assert out.strip() == f"10 {tasks} ['aniso', 'iso', 'small'] [] ['pgps', 'pgps.data', 'pgps.data.catalog']"
