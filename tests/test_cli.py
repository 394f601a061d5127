"""The `pgps` command line as a user meets it: --version, help on every option, a verb whose extra
is missing, output piped into a reader that stops early, `pgps schedule` from a plans file, and
`pgps env --data`."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions, version
from pathlib import Path

import pytest

import pgps
from pgps import cli
from pgps.commands.schedule_cmd import TRAINER_MODES
from pgps.paths import TRAINERS_DIR
from pgps.schedule import build_schedule

REPO = Path(__file__).resolve().parents[1]
PGPS = [sys.executable, "-m", "pgps.cli"]
SCHEDULE = ["schedule", "--patch-size", "128", "128", "128", "--poolings", "5", "5", "5", "--epochs", "1000"]


def pgps_run(
    *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PGPS, *argv], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


# ------------------------------------------------------------------------------------------ version, help
def test_version_is_the_installed_one() -> None:
    proc = pgps_run("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"pgps {version('pgps')}" == f"pgps {pgps.__version__}"


def _undocumented(parser: argparse.ArgumentParser, where: str) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                if not helps.get(name):
                    missing.append(f"{where} {name} (the action itself)")
                missing += _undocumented(sub, f"{where} {name}")
        elif not action.help or action.help == argparse.SUPPRESS:
            missing.append(f"{where} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_option_of_every_verb_has_help() -> None:
    missing = _undocumented(cli.build_parser(), "pgps")
    for name in cli.COMMANDS:
        missing += _undocumented(cli.verb_parser(name), f"pgps {name}")
    assert not missing, "options without a help text:\n" + "\n".join(missing)


# ------------------------------------------------------------------------------------------------ extras
def _import_names(requirement: str, by_distribution: dict[str, set[str]]) -> set[str]:
    name = requirement.split(";")[0].split("[")[0]
    for sep in "<>=!~ ":
        name = name.split(sep)[0]
    return by_distribution[name.lower().replace("_", "-")]


def test_extra_modules_match_pyproject() -> None:
    """cli.EXTRA_MODULES (what a verb checks before it runs) names one module of every distribution of
    pyproject's extra (``pgps[other]`` included), and nothing else."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    by_distribution: dict[str, set[str]] = {}
    for module, dists in packages_distributions().items():
        for dist in dists:
            by_distribution.setdefault(dist.lower().replace("_", "-"), set()).add(module)

    def distributions(extra: str) -> list[set[str]]:
        found: list[set[str]] = []
        for requirement in extras[extra]:
            if requirement.startswith("pgps["):
                for inner in requirement[5:].split("]")[0].split(","):
                    found += distributions(inner)
            else:
                found.append(_import_names(requirement, by_distribution))
        return found

    for extra, listed in cli.EXTRA_MODULES.items():
        provided = distributions(extra)
        assert all(names & set(listed) for names in provided), (extra, provided)
        assert set(listed) <= set().union(*provided), extra
    assert {v.extra for v in cli.COMMANDS.values()} - {None} <= set(cli.EXTRA_MODULES)


def test_missing_extra_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(cli.EXTRA_MODULES, "pipeline", ("yaml", "pgps_not_installed_module"))
    assert cli.main(["make-task", "--help"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "pgps make-task: error: needs the 'pipeline' extra (missing: pgps_not_installed_module): "
        "pip install 'pgps[pipeline]'\n"
    )


def test_schedule_knows_every_shipped_trainer_and_the_budget_its_name_says() -> None:
    """-tr accepts every class in src/pgps/trainers (the list is read from there, not typed;
    tests/test_trainer_integration.py checks the reading against the classes nnU-Net's lookup imports); a class
    named ..._<N>epochs schedules N epochs, and a different --epochs is refused as the trainer would refuse it."""
    files = {p.stem for p in TRAINERS_DIR.glob("*.py") if p.stem != "__init__"}
    assert set(TRAINER_MODES) == files | {"nnUNetTrainer"}
    budget_classes = sorted(n for n in files if n.endswith("epochs"))
    assert budget_classes, "no budget class shipped (nnUNetTrainerPGPS_250epochs, ...)"
    for name in budget_classes:
        epochs = int(name.rsplit("_", 1)[1].removesuffix("epochs"))
        proc = pgps_run(*SCHEDULE[:-2], "-tr", name, "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["num_epochs"] == epochs
        proc = pgps_run(*SCHEDULE[:-2], "-tr", name, "--epochs", str(epochs + 1))
        assert proc.returncode == 2 and f"trains {epochs} epochs" in proc.stderr and proc.stderr.count("\n") == 1


# ------------------------------------------------------------------------------------------ broken pipes
def _pipe_cases() -> list[list[str]]:
    return [
        SCHEDULE,
        [*SCHEDULE, "--json"],
        ["env"],
        ["--help"],
        ["--version"],
        ["schedule", "--help"],
        ["grid", "--help"],
    ]


def test_output_into_head_never_tracebacks() -> None:
    """`pgps … | head -1` in a real shell pipeline, 100 times over mixed verbs: head gets the first line,
    pgps's stderr stays empty, and pgps exits 0, or 141 when head had already quit before pgps's last
    write (unbuffered output writes a print's text and its newline separately: both happen)."""
    script = 'set -o pipefail; "$@" 2>"$ERR" | head -1; echo "rc=${PIPESTATUS[0]}" >&2'
    cases = _pipe_cases()
    for i in range(100):
        argv = cases[i % len(cases)]
        err_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"pgps-pipe-{os.getpid()}.err"
        proc = subprocess.run(
            ["bash", "-c", script, "bash", *PGPS, *argv],
            capture_output=True,
            text=True,
            env={**os.environ, "ERR": str(err_file)},
            timeout=120,
        )
        stderr = err_file.read_text()
        err_file.unlink()
        assert stderr == "", (argv, stderr)
        assert proc.stderr.strip() in ("rc=0", "rc=141"), (argv, proc.stderr)
        assert proc.stdout.count("\n") == 1 and proc.stdout.strip(), (argv, proc.stdout)


def test_reader_gone_before_the_first_write_is_quiet() -> None:
    """The reader closed its end before pgps wrote anything (deterministic EPIPE): no traceback, no
    'Exception ignored' on exit, and 141, what a shell reports for a writer stopped by SIGPIPE."""
    cases = _pipe_cases()
    for i in range(4 * len(cases)):  # deterministic: a few rounds are enough
        argv = cases[i % len(cases)]
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            proc = subprocess.run([*PGPS, *argv], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
        finally:
            os.close(write_end)
        assert proc.stderr == "", (argv, proc.stderr)
        assert proc.returncode == 141, (argv, proc.returncode)


def test_a_broken_pipe_that_is_not_stdout_still_fails_loudly(capsys: pytest.CaptureFixture) -> None:
    """Only a closed stdout is quiet: a verb's own pipe breaking is a real error."""

    def broken(_args: argparse.Namespace) -> int:
        raise BrokenPipeError("a subprocess's stdin")

    import pgps.env

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pgps.env, "main", broken)
        with pytest.raises(BrokenPipeError):
            cli.main(["env"])


# --------------------------------------------------------------------------------- schedule from a plan
def _plans(strides: list[list[int]], patch: list[int], batch: int) -> dict:
    arch = {"network_class_name": "x.PlainConvUNet", "arch_kwargs": {"n_stages": len(strides), "strides": strides}}
    return {
        "dataset_name": "Dataset042_Demo",
        "plans_name": "nnUNetPlans",
        "configurations": {
            "2d": {
                "patch_size": patch[1:],
                "batch_size": 12,
                "architecture": {"arch_kwargs": {"strides": [[1, 1], [2, 2], [2, 2], [2, 2]]}},
            },  # fmt: skip
            "3d_fullres": {"patch_size": patch, "batch_size": batch, "architecture": arch},
            "3d_fullres_bs4": {"inherits_from": "3d_fullres", "batch_size": 4},
            "broken_child": {"inherits_from": "3d_nowhere"},
        },
    }


@pytest.fixture
def preprocessed(tmp_path: Path) -> Path:
    folder = tmp_path / "nnUNet_preprocessed" / "Dataset042_Demo"
    folder.mkdir(parents=True)
    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]]  # ResEnc-like: axis 0 pools twice
    (folder / "nnUNetPlans.json").write_text(json.dumps(_plans(strides, [40, 128, 128], 2)))
    return tmp_path / "nnUNet_preprocessed"


def _env(preprocessed: Path) -> dict[str, str]:
    return {**os.environ, "nnUNet_preprocessed": str(preprocessed)}


def test_schedule_reads_patch_poolings_and_batch_from_the_plans(preprocessed: Path) -> None:
    proc = pgps_run("schedule", "-d", "42", "-c", "3d_fullres", "--json", env=_env(preprocessed))
    assert proc.returncode == 0, proc.stderr
    expected = build_schedule((40, 128, 128), (2, 4, 4), 1000, 2, "pgps").to_dict()
    assert json.loads(proc.stdout) == expected
    by_name = pgps_run("schedule", "-d", "Dataset042_Demo", "-c", "3d_fullres", "--json", env=_env(preprocessed))
    assert json.loads(by_name.stdout) == expected


def test_schedule_follows_inherits_from_and_the_trainer_name(preprocessed: Path) -> None:
    argv = ["schedule", "-d", "42", "-c", "3d_fullres_bs4", "-tr", "nnUNetTrainerPGPSPerformance", "--json"]
    proc = pgps_run(*argv, "--epochs", "100", env=_env(preprocessed))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == build_schedule((40, 128, 128), (2, 4, 4), 100, 4, "performance").to_dict()
    table = pgps_run("schedule", "-d", "42", "-c", "2d", env=_env(preprocessed))
    assert table.stdout.splitlines()[0] == f"plan: {preprocessed / 'Dataset042_Demo' / 'nnUNetPlans.json'}:2d"
    assert "planned patch 128x128, batch 12, poolings [3, 3]" in table.stdout


CONFIGS = "has 2d, 3d_fullres, 3d_fullres_bs4, broken_child"
PLAN_PROBLEMS = [
    (["-d", "43", "-c", "3d_fullres"], "{pre}: no folder Dataset043_* (run nnUNetv2_plan_and_preprocess -d 43 first)"),
    (["-d", "42", "-c", "3d_lowres"], "{plans}: no configuration '3d_lowres'; " + CONFIGS),
    (
        ["-d", "42", "-c", "broken_child"],
        "{plans}: no configuration '3d_nowhere' (inherited by broken_child); " + CONFIGS,
    ),
    (
        ["-d", "42", "-c", "3d_fullres", "-p", "nnUNetResEncUNetMPlans"],
        "{dir}/nnUNetResEncUNetMPlans.json: not found (plans here: nnUNetPlans)",
    ),
    (["-d", "42"], "{plans}: give -c CONFIGURATION, one of 2d, 3d_fullres, 3d_fullres_bs4, broken_child"),
    (
        ["-d", "42", "-c", "3d_fullres", "--patch-size", "8"],
        "--dataset reads patch and poolings from the plans: drop --patch-size/--poolings",
    ),
    (["--epochs", "10"], "give -d ID -c CONFIGURATION, or --patch-size and --poolings"),
]


@pytest.mark.parametrize(("argv", "message"), PLAN_PROBLEMS)
def test_schedule_plan_problems_are_one_line(preprocessed: Path, argv: list[str], message: str) -> None:
    proc = pgps_run("schedule", *argv, env=_env(preprocessed))
    folder = preprocessed / "Dataset042_Demo"
    expected = message.format(pre=preprocessed, dir=folder, plans=folder / "nnUNetPlans.json")
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", f"pgps schedule: error: {expected}\n")


def test_schedule_without_nnunet_preprocessed_says_so() -> None:
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_preprocessed"}
    proc = pgps_run("schedule", "-d", "42", "-c", "3d_fullres", env=env)
    assert proc.returncode == 2
    assert proc.stderr == 'pgps schedule: error: nnUNet_preprocessed is not set: eval "$(pgps env)" or export it\n'


def test_schedule_stays_torch_free(preprocessed: Path) -> None:
    code = (
        "import sys; from pgps.cli import main; "
        "main(['schedule', '-d', '42', '-c', '3d_fullres']); "
        "heavy = sorted(m for m in ('torch', 'numpy', 'nnunetv2', 'yaml', 'pydantic') if m in sys.modules); "
        "print('HEAVY', heavy)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(preprocessed))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "HEAVY []"


# -------------------------------------------------------------------------------------------- pgps env
def _exports(stdout: str) -> dict[str, str]:
    out = {}
    for line in stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        out[key] = value
    return out


def test_env_data_puts_all_three_roots_under_it(tmp_path: Path) -> None:
    inherited = {"nnUNet_raw": "/elsewhere/raw", "nnUNet_results": "/elsewhere/results", "PGPS_DATA": "/pgps-data"}
    proc = pgps_run("env", "--data", str(tmp_path / "X"), "--mkdir", env={**os.environ, **inherited})
    assert proc.returncode == 0, proc.stderr
    exports = _exports(proc.stdout)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        assert exports[name] == str(tmp_path / "X" / name)
        assert (tmp_path / "X" / name).is_dir()
    assert exports["nnUNet_extTrainer"].split(os.pathsep)[0] == str(TRAINERS_DIR)


def test_env_without_data_keeps_what_is_set(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update(nnUNet_raw="/elsewhere/raw", PGPS_DATA=str(tmp_path / "D"), nnUNet_results="")
    exports = _exports(pgps_run("env", env=env).stdout)
    assert exports["nnUNet_raw"] == "/elsewhere/raw"
    assert exports["nnUNet_preprocessed"] == str(tmp_path / "D" / "nnUNet_preprocessed")
    assert exports["nnUNet_results"] == str(tmp_path / "D" / "nnUNet_results")  # empty = unset


def test_env_exports_survive_a_shell_round_trip(tmp_path: Path) -> None:
    """Quoting: a data root with a space and a quote evaluates back to itself."""
    root = tmp_path / "my data's root"
    proc = subprocess.run(
        ["bash", "-c", 'eval "$("$@")" && printf "%s" "$nnUNet_raw"', "bash", *PGPS, "env", "--data", str(root)],
        capture_output=True,
        text=True,
    )
    assert proc.stdout == str(root / "nnUNet_raw"), proc.stderr


@pytest.mark.parametrize("name", ["p\nx.yaml", "p\rx.yaml", "p\x1b[31mred.yaml", "tab\there.yaml"])
def test_an_error_naming_a_file_with_control_characters_stays_one_line(tmp_path: Path, name: str) -> None:
    """Any verb's PGPSError is printed with control characters escaped: the one-line promise holds for names the
    user (or a tarball, or a shared params file) chose."""
    proc = pgps_run("report", "--params", name, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.endswith("\n"), repr(proc.stderr)
    assert "\x1b" not in proc.stderr and "\r" not in proc.stderr and "\t" not in proc.stderr
    assert name.encode("unicode_escape").decode("ascii") in proc.stderr  # the name, escaped, still there
