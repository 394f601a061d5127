"""Shared data for the trainer tests: ONE reduced task, generated, converted and planned by
nnU-Net's own tools once per pytest session, or once per `make test` for both of its processes
(a done-marker in the session's base temp dir lets every trainer test module reuse it), and a
way to stop a training at a known point so a test can kill it there (a line on a pipe, not a
timing guess). No tests here. Cost: ~30 s (3d_fullres), + the 2d preprocessing, ~5 s for the
ResEnc-M plans (its data is the default plans'), each built only when a test asks for it."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path

import pytest

from pgps.paths import TRAINERS_DIR
from repo_copy import once, private_copy

BIN = Path(sys.executable).parent
DATASET_ID = 901
DATASET = "Dataset901_PGPSSynth"
#: nnU-Net on the CPU in tests: no torch.compile, augmentation in-process, and ONE worker in each of nnU-Net's spawn
#: pools (final validation's export pool, its metrics pool, preprocessing): every worker imports torch (~3.5 CPU-s), and
#: a training's final validation took 32 CPU-s with 2 workers against 23 s with 1 (measured, smoke task, --val) -- the
#: suite runs ~70 of them. The worker count changes no result (each case is exported and scored on its own).
CPU_ENV = {"nnUNet_compile": "f", "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1", "PYTHONUNBUFFERED": "1"}
NP = CPU_ENV["nnUNet_def_n_proc"]  # the planner's -np and -npfp (its default: 8 fingerprint workers, 8 torch imports)


def nnunet_env(root: Path, results: Path | None = None, **knobs: str) -> dict[str, str]:
    """The environment ``eval "$(pgps env)"`` gives, plus CPU settings and PGPS knobs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGPS_", "nnUNet_"))}
    env.update(CPU_ENV)
    env.update(
        nnUNet_raw=str(root / "nnUNet_raw"),
        nnUNet_preprocessed=str(root / "nnUNet_preprocessed"),
        nnUNet_results=str(results or root / "nnUNet_results"),
        nnUNet_extTrainer=str(TRAINERS_DIR),
    )
    env.update(knobs)
    return env


def run(cmd: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _plan_env(root: Path) -> dict[str, str]:
    # nnU-Net 2.8's planner calls torch.set_num_threads(nnUNet_n_proc_DA): 0 crashes it
    return {**nnunet_env(root), "nnUNet_n_proc_DA": "1"}


def reduced_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3d_fullres-planned reduced task (8 training cases, 2 test cases), this session's own copy (tests add
    configurations to it: :func:`with_configuration`). Built once: under `make test` by whichever of its two pytest
    processes asks first, in the folder both see (PGPS_TEST_SHARED), and copied by each (a few MB, no absolute paths
    in nnU-Net's files); the second process's own build was ~18 CPU-s of planning and torch-importing workers."""
    root = tmp_path_factory.getbasetemp() / "pgps_trainer_data"
    done = root / "3d_fullres.done"
    if done.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)  # a half-made one of an earlier failure
    shared = os.environ.get("PGPS_TEST_SHARED")
    if shared:
        private_copy(once(Path(shared), "reduced-task", _make_reduced), root)
    else:
        _make_reduced(root)
    done.touch()
    return root


def _make_reduced(root: Path) -> None:
    root.mkdir(parents=True)
    from pgps.data.synthetic import make_task

    task = make_task(root / "msd", seed=0, variant="iso", num_train=8, num_test=2)
    env = _plan_env(root)
    run([str(BIN / "nnUNetv2_convert_MSD_dataset"), "-i", str(task), "-overwrite_id", str(DATASET_ID)], env)
    run(
        [str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", NP, "-npfp", NP],
        env,
    )


def with_configuration(root: Path, what: str) -> Path:
    """Add the 2d configuration (``what='2d'``) or the ResEnc-M plans (``what='resenc'``)."""
    done = root / f"{what}.done"
    if done.exists():
        return root
    env = _plan_env(root)
    if what == "2d":  # nnUNetPlans.json already plans 2d (nnU-Net plans every configuration, preprocesses the asked)
        run([str(BIN / "nnUNetv2_preprocess"), "-d", str(DATASET_ID), "-c", "2d", "-np", NP], env)
    else:
        run([str(BIN / "nnUNetv2_plan_experiment"), "-d", str(DATASET_ID), "-pl", "nnUNetPlannerResEncM"], env)
        # nnU-Net's ResEnc presets share the default plans' preprocessed data (same data identifier, only network and
        # batch differ): nnUNetv2_preprocess would write the same files again, so it is not run
        default, resenc = (load_plans(root, name)["configurations"]["3d_fullres"] for name in PLANS)
        assert resenc["data_identifier"] == "nnUNetPlans_3d_fullres", resenc
        differ = {k for k in default.keys() | resenc.keys() if default.get(k) != resenc.get(k)}
        assert differ <= {"architecture", "batch_size"}, f"ResEnc-M preprocesses differently: {sorted(differ)}"
    done.touch()
    return root


PLANS = ("nnUNetPlans", "nnUNetResEncUNetMPlans")  # the default plans, ResEnc M's (with_configuration 'resenc')


def load_plans(root: Path, plans: str = "nnUNetPlans") -> dict:
    return json.loads((root / "nnUNet_preprocessed" / DATASET / f"{plans}.json").read_text())


def fold_dir(results: Path, trainer: str, configuration: str = "3d_fullres", plans: str = "nnUNetPlans") -> Path:
    return results / DATASET / f"{trainer}__{plans}__{configuration}" / "fold_0"


def read_record(fold: Path) -> dict:
    return json.loads((fold / "pgps_record.json").read_text())


BLOCKED = "PGPS-TEST: blocked"  # the line a blocking training prints before it waits for its kill


def start_until_blocked(cmd: list[str], env: dict[str, str], timeout: float = 900) -> subprocess.Popen:
    """Start a training that blocks at a known point (it prints ``BLOCKED``, then reads stdin, which
    the test never writes), and return once that line arrived. Fails with the output's tail if the
    process ends first or the line does not come within ``timeout`` s. The caller kills it."""
    proc = subprocess.Popen(
        cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: queue.Queue[str | None] = queue.Queue()
    tail: deque[str] = deque(maxlen=40)

    def pump() -> None:  # keeps draining after the line: the child never blocks on a full pipe
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        while True:
            line = lines.get(timeout=timeout)
            if line is None:
                raise AssertionError(f"{cmd} ended ({proc.wait()}) before blocking:\n{''.join(tail)}")
            tail.append(line)
            if BLOCKED in line:
                return proc
    except queue.Empty:
        proc.kill()
        raise AssertionError(f"no {BLOCKED!r} from {cmd} within {timeout} s:\n{''.join(tail)}") from None
    except BaseException:
        proc.kill()
        proc.wait()
        raise


BLOCKING_TRAINER = """
\"\"\"Test only: nnUNetTrainerPGPS that blocks at the start of epoch $TEST_BLOCK_AT_EPOCH, once that
epoch's curriculum stage is applied (its loader built), until the test kills it; and skips nnU-Net's
final validation when $TEST_SKIP_FINAL_VALIDATION is 1.\"\"\"

import os
import sys

from pgps.trainers.nnUNetTrainerPGPS import nnUNetTrainerPGPS


class nnUNetTrainerPGPSBlocking(nnUNetTrainerPGPS):
    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        if self.current_epoch == int(os.environ.get("TEST_BLOCK_AT_EPOCH", "-1")):
            print(f"{blocked} in epoch {{self.current_epoch}}", flush=True)
            sys.stdin.readline()

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        if os.environ.get("TEST_SKIP_FINAL_VALIDATION") != "1":  # minutes on CPU; when a test does not check it
            super().perform_actual_validation(save_probabilities)
"""


def blocking_trainer(folder: Path) -> str:
    """Write the blocking trainer into ``folder`` (add it to ``nnUNet_extTrainer``); returns its name."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "nnUNetTrainerPGPSBlocking.py").write_text(BLOCKING_TRAINER.format(blocked=BLOCKED))
    return "nnUNetTrainerPGPSBlocking"
