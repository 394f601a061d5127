"""Shared by the grid tests: a small real DVC repository whose `train` stage behaves like our trainers
(epochs in curriculum stages, a checkpoint every epoch, a run record rewritten atomically, resume from the
checkpoint with the record cut back to it), so the grid machinery is tested without nnU-Net's cost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

VENV_BIN = Path(sys.executable).parent

TOY_TRAIN = textwrap.dedent(
    '''
    """Toy training: OUT EPOCHS SECONDS_PER_EPOCH; resumes from OUT/checkpoint.json like nnU-Net's --c."""
    import json, os, sys, time

    out, epochs, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    stages = [0] * (epochs // 2) + [1] * (epochs - epochs // 2)  # a two-stage curriculum
    os.makedirs(out, exist_ok=True)
    ck, rec = os.path.join(out, "checkpoint.json"), os.path.join(out, "pgps_record.json")

    def dump(path, obj):
        with open(path + ".tmp", "w") as fh:
            json.dump(obj, fh)
        os.replace(path + ".tmp", path)

    start = json.load(open(ck))["epoch"] if os.path.exists(ck) else 0
    schedule = {"num_epochs": epochs, "stages": [{"stage": 0}, {"stage": 1}]}
    fresh = {"schedule": schedule, "epochs": [], "resumes": []}
    record = json.load(open(rec)) if start and os.path.exists(rec) else fresh
    record["epochs"] = [e for e in record["epochs"] if e["epoch"] < start]
    if start:
        record["resumes"].append({"at_epoch": start})
    for epoch in range(start, epochs):
        t0 = time.time()
        time.sleep(secs)
        record["epochs"].append({"epoch": epoch, "stage": stages[epoch], "wall_time": time.time() - t0,
                                 "epoch_start": t0, "epoch_end": time.time(),
                                 "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")})
        dump(rec, record)  # record first, then the checkpoint (as the trainers do)
        dump(ck, {"epoch": epoch + 1})
    '''
)


def make_toy_repo(
    root: Path,
    tasks: list[str],
    folds: list[int],
    epochs: int,
    epoch_s: float,
    grid: dict | None = None,
    evaluate: bool = False,
) -> Path:
    """git + dvc repository with plan (per task) -> train (task x fold) [-> evaluate (task x fold)] -> report."""
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([str(VENV_BIN / "dvc"), "init", "-q"], cwd=root, check=True)
    subprocess.run([str(VENV_BIN / "dvc"), "config", "core.autostage", "false"], cwd=root, check=True)
    (root / "toy_train.py").write_text(TOY_TRAIN)
    params: dict = {"tasks": tasks, "folds": folds, "epochs": epochs, "epoch_s": epoch_s}
    if grid is not None:
        params["grid"] = grid
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    py = sys.executable
    dvc = {
        "stages": {
            "plan": {
                "foreach": "${tasks}",
                "do": {
                    "cmd": "mkdir -p out/${item} && echo planned > out/${item}/plan.txt",
                    "outs": ["out/${item}/plan.txt"],
                },
            },
            "train": {
                "matrix": {"task": "${tasks}", "fold": "${folds}"},
                "cmd": f"{py} toy_train.py out/${{item.task}}/fold_${{item.fold}} ${{epochs}} ${{epoch_s}}",
                "deps": ["out/${item.task}/plan.txt", "toy_train.py"],
                "params": ["epochs", "epoch_s"],
                "outs": ["out/${item.task}/fold_${item.fold}"],
            },
            "report": {
                "cmd": f"{py} -c \"import glob,json; json.dump(sorted(glob.glob('out/*/fold_*/pgps_record.json')),"
                f" open('report.json','w'))\"",
                "deps": [f"out/{t}/fold_{f}" for t in tasks for f in folds]
                + ([f"out/{t}/eval_{f}.json" for t in tasks for f in folds] if evaluate else []),
                "outs": ["report.json"],
            },
        }
    }
    if evaluate:  # one per training, reading its record: the epochs it trained
        count = "import json,sys; json.dump(len(json.load(open(sys.argv[1]))['epochs']), open(sys.argv[2], 'w'))"
        stages = dvc["stages"]
        stages["evaluate"] = {
            "matrix": {"task": "${tasks}", "fold": "${folds}"},
            "cmd": f'{py} -c "{count}" out/${{item.task}}/fold_${{item.fold}}/pgps_record.json '
            "out/${item.task}/eval_${item.fold}.json",
            "deps": ["out/${item.task}/fold_${item.fold}"],
            "outs": ["out/${item.task}/eval_${item.fold}.json"],
        }
        stages["report"] = stages.pop("report")  # keep dvc.yaml in pipeline order
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    return root


def read_record(path: Path) -> dict:
    return json.loads(path.read_text())


def assert_record_complete(record: dict, epochs: int) -> None:
    """Every epoch exactly once, in order, each at the stage the two-stage toy schedule puts it in."""
    got = [e["epoch"] for e in record["epochs"]]
    assert got == list(range(epochs)), f"epochs with gaps or duplicates: {got}"
    stages = [e["stage"] for e in record["epochs"]]
    assert stages == [0] * (epochs // 2) + [1] * (epochs - epochs // 2)


def dvc_status(root: Path) -> str:
    proc = subprocess.run([str(VENV_BIN / "dvc"), "status"], cwd=root, capture_output=True, text=True, check=True)
    return proc.stdout


def pgps(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600):
    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run(
        [str(VENV_BIN / "pgps"), *args], cwd=cwd, capture_output=True, text=True, env=full, timeout=timeout
    )


REPO = Path(__file__).resolve().parents[1]
_SKIP_TOP = ("tests/", "benchmarks/", "docker/", "Dockerfile", "data/", "results/", "logs/")


def copy_pipeline_repo(dest: Path, params_update: dict) -> Path:
    """A fresh copy of this repository's DVC pipeline (code, dvc.yaml, params.yaml, .dvc/config; no data),
    with ``params_update`` merged into params.yaml (top-level keys replaced), as its own git repo."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    dest.mkdir(parents=True)
    for rel in files:
        if not rel or rel.startswith(_SKIP_TOP) or not (REPO / rel).is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes((REPO / rel).read_bytes())
    if params_update:  # untouched otherwise: byte-identical to a profile, as `--profile` requires
        params = yaml.safe_load((dest / "params.yaml").read_text())
        params.update(params_update)
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest


def structure(obj: object) -> object:
    """Keys and value types of a JSON tree, without the numbers."""
    if isinstance(obj, dict):
        return {k: structure(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [structure(v) for v in obj[:1]]
    if isinstance(obj, bool) or obj is None:
        return type(obj).__name__
    if isinstance(obj, (int, float)):
        return "number"
    return type(obj).__name__
