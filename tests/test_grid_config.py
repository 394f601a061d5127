"""Requests come from params.yaml's grid: section or flags, and reach sbatch as the lines submitit writes;
a bad value is one line naming the file and key. Fast (no cluster): ~5 s."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml
from submitit.slurm.slurm import _make_sbatch_string

from pgps.errors import PGPSError
from pgps.grid.config import GridConfig, Resources, add_resource_flags, apply_flags, parse_grid_section
from pgps.grid.slurm import _parameters
from test_grid_helpers import copy_pipeline_repo, make_toy_repo, pgps

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def _sbatch(config: GridConfig, group: str) -> list[str]:
    """The #SBATCH lines submitit would write for a job of dvc.yaml stage ``group``."""
    params = _parameters(config, config.resources(group), group)
    slurm = {k.removeprefix("slurm_"): v for k, v in params.items() if k.startswith("slurm_")}
    slurm.pop("array_parallelism")
    slurm["signal_delay_s"] = slurm.pop("signal_delay_s")
    text = _make_sbatch_string(
        command="true",
        folder="/tmp/x",
        time=params["timeout_min"],
        cpus_per_task=params["cpus_per_task"],
        mem=f"{int(params['mem_gb'] * 1024)}MB",
        gpus_per_node=params.get("gpus_per_node"),
        ntasks_per_node=params["tasks_per_node"],
        nodes=params["nodes"],
        **slurm,
    )
    return [ln for ln in text.splitlines() if ln.startswith("#SBATCH")]


def _flags(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_resource_flags(parser)
    return parser.parse_args(argv)


def test_repository_params_have_a_valid_grid_section() -> None:
    config = parse_grid_section(yaml.safe_load(REPO_PARAMS.read_text())["grid"])
    assert {name for name, _ in config.stages} <= {"train", "evaluate"}


def test_gpu_request_only_where_asked_and_none_with_gpus_0() -> None:
    config = parse_grid_section(
        {
            "partition": "gpu",
            "account": "lab",
            "default": {"cpus": 2, "mem_gb": 4, "time_min": 30},
            "stages": {"train": {"cpus": 6, "mem_gb": 20, "gpus": 1, "time_min": 600}},
        }
    )
    train = _sbatch(config, "train")
    assert "#SBATCH --gpus-per-node=1" in train
    assert "#SBATCH --cpus-per-task=6" in train and "#SBATCH --time=600" in train
    assert "#SBATCH --partition=gpu" in train and "#SBATCH --account=lab" in train
    plan = _sbatch(config, "plan")  # not listed: the default request, no GPU
    assert not any("gpu" in ln and "partition" not in ln for ln in plan)
    assert "#SBATCH --cpus-per-task=2" in plan
    # a cluster without GPU gres: --gpus 0 removes every GPU request
    cpu_only = apply_flags(config, _flags(["--gpus", "0", "--time-min", "90"]))
    lines = _sbatch(cpu_only, "train")
    assert not any("gpus" in ln or "gres" in ln for ln in lines)
    assert "#SBATCH --time=90" in lines
    # sites that want --gres
    gres = apply_flags(config, _flags(["--gres", "gpu:a100:1"]))
    assert "#SBATCH --gres=gpu:a100:1" in _sbatch(gres, "train")
    assert not any("gpus-per-node" in ln for ln in _sbatch(gres, "train"))


def test_signal_delay_never_exceeds_half_the_time_limit() -> None:
    config = GridConfig(stages=(("train", Resources(time_min=2)),), signal_delay_s=300)
    assert "#SBATCH --signal=USR2@60" in _sbatch(config, "train")


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"stages": {"train": {"gpus": -1}}}, "grid.stages.train.gpus: must be a number >= 0, got -1"),
        ({"stages": {"train": {"cpus": 1.5}}}, "grid.stages.train.cpus: must be a number > 0, got 1.5"),
        ({"default": {"memory": 3}}, "grid.default.memory: unknown key"),
        ({"partiton": "gpu"}, "grid.partiton: unknown key"),
        ({"account": ""}, "grid.account: must be a non-empty string or null"),
        ({"stages": ["train"]}, "grid.stages: must map dvc.yaml stage names to requests"),
    ],
)
def test_bad_grid_section_names_file_and_key(section: dict, message: str) -> None:
    with pytest.raises(PGPSError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_grid_section(section, where="params.yaml: grid")


def test_cli_bad_request_is_one_line_exit_2(tmp_path: Path) -> None:
    repo = make_toy_repo(tmp_path / "repo", ["A"], [0], 2, 0.1, grid={"stages": {"tran": {"cpus": 1}}})
    proc = pgps(["grid", "submit", "--dry-run"], repo)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "pgps grid: error: params.yaml: grid.stages.tran: not a stage of dvc.yaml (stages: plan, report, train)"
    ]
    proc = pgps(["grid", "status"], repo)
    assert proc.returncode == 2 and "logs/grid/grid.json: no grid submitted here yet" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_dry_run_lists_jobs_requests_and_order(tmp_path: Path) -> None:
    grid = {"default": {"cpus": 1, "mem_gb": 1, "time_min": 5}, "stages": {"train": {"gpus": 2, "time_min": 50}}}
    repo = make_toy_repo(tmp_path / "repo", ["A"], [0, 1], 2, 0.1, grid=grid)
    proc = pgps(["grid", "submit", "--dry-run"], repo)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "plan@A: 1 cpus, 1 GB, 0 gpus, 5 min"
    assert "train@A-1: 1 cpus, 1 GB, 2 gpus, 50 min after plan@A" in lines
    assert lines[-2] == "report: 1 cpus, 1 GB, 0 gpus, 5 min after train@A-0, train@A-1"
    assert lines[-1] == "4 jobs (0 stages already up to date)"
    assert not (repo / "logs").exists()  # nothing submitted, nothing written


def test_full_profile_dry_run_is_the_papers_grid_on_gpus(tmp_path: Path) -> None:
    """`--profile full` applies the profile as `pgps reproduce` does; every run becomes one GPU job."""
    repo = copy_pipeline_repo(tmp_path / "repo", {})
    full = yaml.safe_load((repo / "profiles" / "full.yaml").read_text())
    proc = pgps(["grid", "submit", "--profile", "full", "--dry-run"], repo)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    runs = len(full["tasks"]) * len(full["trainers"]) * len(full["folds"])
    trains = [ln for ln in lines if ln.startswith("train@")]
    assert len(trains) == runs
    assert len([ln for ln in lines if ln.startswith("evaluate@")]) == runs
    req = full["grid"]["stages"]["train"]
    assert all(f"{req['gpus']} gpus, {req['time_min']} min after plan@" in ln for ln in trains)
    assert lines[-1] == f"{3 * len(full['tasks']) + 2 * runs + 1} jobs (0 stages already up to date)"
    assert yaml.safe_load((repo / "params.yaml").read_text())["profile"] == "default"  # a dry run changes nothing
