"""Requests come from params.yaml's grid: section or flags, and reach sbatch as the lines submitit writes;
a bad value is one line naming the file and key (or the flag: the flags follow the same schema). Every SLURM
string is a whole-string match, so nothing breaks out of its ``#SBATCH`` line. Fast (no cluster): ~10 s."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from submitit.slurm.slurm import _make_sbatch_string

from pgps.errors import PGPSError
from pgps.grid.config import (
    GridConfig,
    Resources,
    add_resource_flags,
    apply_flags,
    parse_grid_section,
    validate_grid_overrides,
)
from pgps.grid.slurm import sbatch_parameters
from test_grid_helpers import VENV_BIN, copy_pipeline_repo, make_toy_repo, pgps

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def _sbatch(config: GridConfig, group: str) -> list[str]:
    """The #SBATCH lines submitit would write for a job of dvc.yaml stage ``group``."""
    params = sbatch_parameters(config, config.resources(group), group, Path("/tmp/x"))
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


def test_constraint_and_extra_options_reach_the_sbatch_lines() -> None:
    config = parse_grid_section({"constraint": "a100&ib", "sbatch_extra": ["--mail-type=END", "--exclusive"]})
    lines = _sbatch(config, "train")
    assert "#SBATCH --constraint='a100&ib'" in lines or "#SBATCH --constraint=a100&ib" in lines, lines
    assert "#SBATCH --mail-type=END" in lines and "#SBATCH --exclusive" in lines, lines


def test_signal_delay_never_exceeds_half_the_time_limit() -> None:
    config = GridConfig(stages=(("train", Resources(time_min=2)),), signal_delay_s=300)
    assert "#SBATCH --signal=USR2@60" in _sbatch(config, "train")


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"stages": {"train": {"gpus": -1}}}, "grid.stages.train.gpus: must be >= 0, got -1"),
        ({"stages": {"train": {"cpus": 1.5}}}, "grid.stages.train.cpus: must be an integer, got 1.5"),
        ({"stages": {"train": {"time_min": 10**9}}}, "grid.stages.train.time_min: must be <= 525600 (a year)"),
        ({"default": {"mem_gb": float("nan")}}, "grid.default.mem_gb: must be a finite number, got nan"),
        ({"default": {"memory": 3}}, "grid.default.memory: unknown key (allowed: cpus, mem_gb, gpus, time_min)"),
        ({"partiton": "gpu"}, "grid.partiton: unknown key"),
        ({"account": ""}, "grid.account: must be a name of letters, digits, _ . -, got ''"),
        ({"stages": ["train"]}, "grid.stages: must be a mapping, got ['train']"),
        ({"stages": {"tr ain": {}}}, "grid.'tr ain': must be a dvc.yaml stage name"),
        ({"array_parallelism": 0}, "grid.array_parallelism: must be >= 1, got 0"),
        ({"sbatch_extra": "--exclusive"}, "grid.sbatch_extra: must be a list"),
    ],
)
def test_bad_grid_section_names_file_and_key(section: dict, message: str) -> None:
    with pytest.raises(PGPSError) as err:
        parse_grid_section(section, "params.yaml")
    assert str(err.value).startswith(f"params.yaml: {message}".replace("grid.'tr ain'", "grid.stages.'tr ain'"))


# values that reach `#SBATCH --key=value` lines: anything that could end the line or smuggle another option
HOSTILE = [
    "gpu\n#SBATCH --exclusive",
    "gpu\r",
    "gpu\x00",
    "gpu\x1b[0m",
    "gpu a100",
    "gpu;rm -rf ~",
    "gpu$(id)",
    "gpu`id`",
    "'gpu'",
    '"gpu"',
    "gpu\\",
    "gpu#x",
    "gpu\t",
    "",
    "g" * 300,
]
SLURM_KEYS = ("partition", "account", "qos", "gres", "constraint")


@pytest.mark.parametrize("key", SLURM_KEYS)
@pytest.mark.parametrize("value", HOSTILE, ids=[repr(h)[:20] for h in HOSTILE])
def test_slurm_strings_refuse_anything_that_breaks_an_sbatch_line(key: str, value: str) -> None:
    with pytest.raises(PGPSError) as err:
        parse_grid_section({key: value}, "params.yaml")
    message = str(err.value)
    assert message.startswith(f"params.yaml: grid.{key}: ") and len(message.splitlines()) == 1, message
    assert not any(ch in message for ch in "\n\r\x00\x1b\t"), message
    with pytest.raises(PGPSError) as err:  # the same rules for the flag
        apply_flags(GridConfig(), _flags([f"--{key}={value}"]))
    assert str(err.value).startswith(f"--{key}: ") and len(str(err.value).splitlines()) == 1, str(err.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("partition", "gpu"),
        ("partition", "gpu,gpu-long"),
        ("account", "lab.ai-1"),
        ("qos", "normal"),
        ("gres", "gpu:a100:1"),
        ("gres", "gpu:2,shard:1"),
        ("constraint", "a100"),
        ("constraint", "a100&ib"),
        ("constraint", "[rack1|rack2]"),
        ("constraint", "(a100|h100)&ib"),
    ],
)
def test_what_slurm_accepts_is_accepted(key: str, value: str) -> None:
    assert getattr(parse_grid_section({key: value}), key) == value
    assert getattr(apply_flags(GridConfig(), _flags([f"--{key}={value}"])), key) == value


def test_sbatch_extra_options_validated_and_given_to_submitit() -> None:
    config = parse_grid_section({"sbatch_extra": ["--mail-type=END,FAIL", "--exclusive"]})
    config = apply_flags(config, _flags(["--sbatch-extra=--mail-user=me@lab.org", "--array-parallelism", "8"]))
    assert config.sbatch_extra == ("--mail-type=END,FAIL", "--exclusive", "--mail-user=me@lab.org")
    assert config.sbatch_extra_parameters() == {"mail-type": "END,FAIL", "exclusive": True, "mail-user": "me@lab.org"}
    assert config.array_parallelism == 8
    for bad, problem in [
        ("--partition=gpu", "grid.sbatch_extra[0]: --partition: use grid.partition"),
        ("--time=10", "grid.sbatch_extra[0]: --time: use time_min in grid.default/grid.stages"),
        ("--output=/tmp/x", "grid.sbatch_extra[0]: --output: set by pgps grid"),
        ("-p gpu", "grid.sbatch_extra[0]: must be one long sbatch option"),
        ("--mail-type=END --exclusive", "grid.sbatch_extra[0]: must be one long sbatch option"),
        ("--mail-type=END\n#SBATCH --exclusive", "grid.sbatch_extra[0]: must be one long sbatch option"),
        ("--comment='x'", "grid.sbatch_extra[0]: must be one long sbatch option"),
    ]:
        with pytest.raises(PGPSError) as err:
            parse_grid_section({"sbatch_extra": [bad]}, "params.yaml")
        assert str(err.value).startswith(f"params.yaml: {problem}") and "\n" not in str(err.value), str(err.value)
        with pytest.raises(PGPSError, match=r"^--sbatch-extra: "):
            apply_flags(config, _flags([f"--sbatch-extra={bad}"]))
    with pytest.raises(PGPSError, match=r"^--sbatch-extra: lists the option '--exclusive' twice"):
        apply_flags(config, _flags(["--sbatch-extra=--exclusive"]))


def test_flag_overrides_follow_the_file_rules_and_name_the_flag() -> None:
    config = parse_grid_section({"stages": {"train": {"cpus": 4, "gpus": 1}}})
    for argv, message in [
        (["--cpus", "0"], "--cpus: must be >= 1, got 0"),
        (["--gpus", "-1"], "--gpus: must be >= 0, got -1"),
        (["--mem-gb", "nan"], "--mem-gb: must be a finite number, got nan"),
        (["--time-min", "999999999"], "--time-min: must be <= 525600 (a year)"),
        (["--signal-delay-s", "0"], "--signal-delay-s: must be >= 1, got 0"),
        (["--array-parallelism", "0"], "--array-parallelism: must be >= 1, got 0"),
    ]:
        with pytest.raises(PGPSError) as err:
            apply_flags(config, _flags(argv))
        assert str(err.value).startswith(message), str(err.value)
    same = apply_flags(config, _flags([]))
    assert same == config and same.stages_explicit
    assert validate_grid_overrides(config, {"cpus": 6}).resources("train") == Resources(6, 8.0, 1, 120)


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
    assert "report: 1 cpus, 1 GB, 0 gpus, 5 min after train@A-0, train@A-1" in lines
    assert "4 stages to run (0 stages already up to date)" in lines
    assert not (repo / "logs").exists()  # nothing submitted, nothing written


def test_dry_run_of_a_partly_finished_grid_runs_what_dvc_status_names_and_downstream(tmp_path: Path) -> None:
    """After `dvc repro`, one training's output removed and one plan's command changed: the grid runs exactly the
    stages `dvc status` names, plus what is downstream of them (train@A-* have unchanged dependencies of their own
    but follow their re-planned task); everything else counts as up to date."""
    repo = make_toy_repo(tmp_path / "repo", ["A", "B"], [0, 1], 1, 0.0)
    dvc = str(VENV_BIN / "dvc")
    subprocess.run([dvc, "repro", "-q"], cwd=repo, check=True, capture_output=True)
    shutil.rmtree(repo / "out" / "B" / "fold_1")
    pipeline = yaml.safe_load((repo / "dvc.yaml").read_text())
    pipeline["stages"]["plan"]["do"]["cmd"] += " && true"  # same output, another command: plan@A and plan@B
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    status = subprocess.run([dvc, "status"], cwd=repo, check=True, capture_output=True, text=True).stdout
    named = sorted(line[:-1] for line in status.splitlines() if re.match(r"^\S.*:$", line))
    assert named == ["plan@A", "plan@B", "report", "train@B-1"], status
    proc = pgps(["grid", "submit", "--dry-run", "--executor", "local"], repo)
    assert proc.returncode == 0, proc.stderr
    to_run = sorted(line.split(":")[0] for line in proc.stdout.splitlines()[:-1])
    assert to_run == ["plan@A", "plan@B", "report", "train@A-0", "train@A-1", "train@B-0", "train@B-1"]
    assert proc.stdout.splitlines()[-1] == "7 stages to run (0 stages already up to date)"
    pipeline["stages"]["plan"]["do"]["cmd"] = pipeline["stages"]["plan"]["do"]["cmd"].removesuffix(" && true")
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    proc = pgps(["grid", "submit", "--dry-run", "--executor", "local"], repo)
    assert proc.returncode == 0, proc.stderr
    assert [line.split(":")[0] for line in proc.stdout.splitlines()[:-1]] == ["train@B-1", "report"]
    assert proc.stdout.splitlines()[-1] == "2 stages to run (5 stages already up to date)"


@pytest.mark.beside_daemons  # make test: in the Docker/SLURM process (CI balance)
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
    assert f"{3 * len(full['tasks']) + 2 * runs + 1} stages to run (0 stages already up to date)" in lines
    assert yaml.safe_load((repo / "params.yaml").read_text())["profile"] == "default"  # a dry run changes nothing


def test_cli_flag_with_a_newline_is_one_line_exit_2(tmp_path: Path) -> None:
    repo = make_toy_repo(tmp_path / "repo", ["A"], [0], 2, 0.1, grid={})
    proc = pgps(["grid", "submit", "--dry-run", "--partition", "gpu\n#SBATCH --exclusive"], repo)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "pgps grid: error: --partition: must be a partition name or a comma-separated list of them, "
        "got 'gpu\\n#SBATCH --exclusive'"
    ]
    assert not (repo / "logs").exists()
