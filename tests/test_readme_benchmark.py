"""The README's CPU benchmark table is the committed result file it cites, not numbers typed in: every row's voxel
fraction, wall-time ratio (median [min-max]), network-step ratio, projected ratio and Dice, rounded as shown."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMES = {
    "constant": "nnUNetTrainerConstant",
    "PGPS": "nnUNetTrainerPGPS",
    "PGPS+": "nnUNetTrainerPGPSPlus",
    "RPSS": "nnUNetTrainerRPSS",
}


def _cpu_section() -> tuple[Path, str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("**CPU** (2-core") : text.index("Where the training time went")]
    (cited,) = set(re.findall(r"benchmarks/results/([\w.-]+)\.\{json,md\}", section))
    return ROOT / "benchmarks" / "results" / f"{cited}.json", section


def test_readme_cpu_table_is_the_cited_result_file() -> None:
    path, section = _cpu_section()
    trainers = json.loads(path.read_text())["trainers"]
    rows = [r for r in section.splitlines() if r.startswith("| ") and r.split("|")[1].strip() in NAMES]
    assert [r.split("|")[1].strip() for r in rows] == list(NAMES)
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        t = trainers[NAMES[cells[0]]]
        assert cells[1] == f"{t['voxel_fraction']:.3f}", cells
        wall = t["ratio"]["wall"]
        if cells[0] == "constant":
            assert cells[2] == "1.000" and wall["median"] == 1.0
        else:
            assert cells[2] == f"{wall['median']:.3f} [{wall['min']:.3f}–{wall['max']:.3f}]", cells
            assert cells[3] == f"{t['ratio']['step']['median']:.3f}", cells
        projected = t["ratio"]["projected"]["median"]
        assert cells[4] == ("–" if projected is None else f"{projected:.3f}"), cells
        assert cells[6] == f"{t['dice']['median']:.3f}", cells


def test_readme_time_split_is_the_cited_result_file() -> None:
    path, _ = _cpu_section()
    trainers = json.loads(path.read_text())["trainers"]
    text = (ROOT / "README.md").read_text()
    split = text[text.index("Where the training time went") :].split("\n\n", 2)[1]
    rows = [r for r in split.splitlines() if r.startswith("| ") and r.split("|")[1].strip() in NAMES]
    assert len(rows) == len(NAMES)
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        t = trainers[NAMES[cells[0]]]
        keys = ("training_s", "step_s", "wait_s", "validation_s", "epoch_end_s")
        assert cells[1:] == [f"{t[k]['median']:.1f}" for k in keys], cells
