"""The benchmark's own copy of the reduced task, planned by nnU-Net's own planner, under the
benchmark's work folder (so a run never touches ``data/`` that the DVC pipeline owns)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from pgps.errors import PGPSError

TASK_IDS = {"iso": 901, "aniso": 902}


def nnunet_dirs(work: Path) -> dict[str, str]:
    """nnU-Net's three folders under the work folder."""
    return {
        "nnUNet_raw": str(work / "nnUNet_raw"),
        "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
        "nnUNet_results": str(work / "nnUNet_results"),
    }


def _run(cmd: list[str], env: dict[str, str], log: Path) -> None:
    """Run one nnU-Net CLI step; on failure the error names the command and its log file."""
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise PGPSError(f"{log}: `{' '.join(cmd)}` failed with exit code {proc.returncode} (see the log)")


def prepare(work: Path, variant: str, seed: int, bin_dir: Path) -> dict:
    """make-task -> nnUNetv2_convert_MSD_dataset -> nnUNetv2_plan_and_preprocess, once per (variant, seed).

    A stamp file records what was prepared; a matching stamp skips the work (planning is ~20 s)."""
    from pgps.data.synthetic import VARIANTS, make_task

    work.mkdir(parents=True, exist_ok=True)
    task_id = TASK_IDS[variant]
    spec = VARIANTS[variant]
    dataset_name = f"Dataset{task_id}_{spec.task_name.split('_', 1)[1]}"
    stamp = work / f"prepared-{variant}.json"
    want = {"variant": variant, "seed": seed, "dataset": dataset_name}
    plans = Path(nnunet_dirs(work)["nnUNet_preprocessed"]) / dataset_name / "nnUNetPlans.json"
    if stamp.is_file() and plans.is_file():
        try:
            have = json.loads(stamp.read_text())
        except json.JSONDecodeError:
            have = {}
        if {k: have.get(k) for k in want} == want:
            return {**have, "cached": True}
    env = {**os.environ, **nnunet_dirs(work), "nnUNet_n_proc_DA": "1"}  # 0 crashes the planner (DESIGN.md)
    for d in nnunet_dirs(work).values():
        Path(d).mkdir(parents=True, exist_ok=True)
    log = work / "prepare.log"
    t0 = time.perf_counter()
    raw_task = make_task(work / "msd", seed, variant)
    raw_dataset = Path(env["nnUNet_raw"]) / dataset_name
    if raw_dataset.exists():
        import shutil

        shutil.rmtree(raw_dataset)
    _run([str(bin_dir / "nnUNetv2_convert_MSD_dataset"), "-i", str(raw_task), "-np", "2"], env, log)
    _run(
        [str(bin_dir / "nnUNetv2_plan_and_preprocess"), "-d", str(task_id), "-c", "3d_fullres", "-np", "2"],
        env,
        log,
    )
    info = {**want, "task_id": task_id, "prepare_s": round(time.perf_counter() - t0, 2)}
    tmp = stamp.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, stamp)
    return info
