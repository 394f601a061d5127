"""A pipeline run depends on params.yaml and the code alone: nothing exported in the caller's shell
(PGPS_TIME_BUDGET, nnUNet_compile, OMP_NUM_THREADS, ...) reaches nnU-Net, every trainer knob is set from
params, and the run's identity (resume key, the train stage's DVC params) covers every knob.
Fast tests of the environment builder here. The real run: tests/test_pipeline_dvc.py's
``test_one_default_training_from_a_hostile_shell_reproduces_the_committed_bits`` trains from a shell exporting
HOSTILE below, unlike the shell the committed dvc.lock was made in, and must give the committed bits, knobs and lock
entry."""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path
from typing import Any

import nnunetv2
import pytest
import yaml

from pgps.nnunet.knobs import DEFAULTS, read_knobs
from pgps.params import Params, parse_params
from pgps.pipeline.nnunet_cli import runtime_env, stripped
from pgps.pipeline.run_settings import KNOB_SOURCES, RUN, RUNTIME_SOURCES, knob_env, run_settings
from pgps.pipeline.train import run_key
from pgps.schema import CPU_ISA_ENV, RUN_OVERRIDES, ParamsFile, TrainerEntry

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEFAULT: dict = yaml.safe_load((ROOT / "params.yaml").read_text())
TRAIN_STAGE: dict = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]
#: what a careless shell may hold; none of it may change a run
HOSTILE = {
    "PGPS_TIME_BUDGET": "30s",
    "PGPS_SAVE_EVERY": "3",
    "PGPS_MIN_FULL_SHARE": "0.9",
    "PGPS_NUM_EPOCHS": "7",
    "PGPS_AUGMENTATION": "planned",
    "PGPS_CUDA_GRAPHS": "on",
    "PGPS_SEED": "123",
    "nnUNet_compile": "t",
    "nnUNet_n_proc_DA": "3",
    "nnUNet_def_n_proc": "1",
    "nnUNet_extTrainer": "/nonexistent",
    "nnUNet_results": "/nonexistent",
    "nnUNet_npp": "9",
    "nnUNet_wandb_enabled": "1",
    "nnunet_raw": "/nonexistent",
    "OMP_NUM_THREADS": "2",
    "MKL_NUM_THREADS": "2",
    "MKL_CBWR": "COMPATIBLE",
    "OPENBLAS_NUM_THREADS": "2",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "ATEN_CPU_CAPABILITY": "default",
    "NVIDIA_TF32_OVERRIDE": "0",
    "TORCHINDUCTOR_FREEZING": "1",
}
#: variables nnunetv2 reads that may stay: they cannot change what a run computes
ALLOWED = {
    "MASTER_ADDR": "DDP rendezvous address (multi-GPU runs only; the pipeline trains on one device)",
    "MASTER_PORT": "DDP rendezvous port",
    "LSB_JOBID": "printed into the training log only",
    "SLURM_JOB_ID": "printed into the training log only",
}
#: a different valid value for every params key a variable comes from (a new source needs one here)
ALTERNATIVE: dict[str, Any] = {
    "epochs": 5,
    "iters_per_epoch": 7,
    "iters_fraction": 0.5,
    "val_iters": 2,
    "dry_run": "on",
    "save_every": 2,
    "time_budget": "60s",
    "min_full_share": 0.5,
    "augmentation": "planned",
    "seed": 1,
    "codecarbon_country": "off",
    "runtime.cuda_graphs": True,
    "runtime.compile": True,
    "runtime.da_workers": 2,
    "runtime.threads": 3,
    "runtime.cpu_isa": "avx512",
    "plan.num_processes": 3,
}
ALL_SOURCES = {**KNOB_SOURCES, **RUNTIME_SOURCES}


def _params(tree: dict | None = None) -> Params:
    return parse_params(copy.deepcopy(tree or DEFAULT), ROOT / "params.yaml")


def test_every_trainer_knob_has_a_params_source() -> None:
    assert set(KNOB_SOURCES) == set(DEFAULTS)
    params = _params()
    for name, run in params.trainers.items():
        env = knob_env(params, run)
        assert list(env) == list(DEFAULTS), name
        knobs = read_knobs(env)  # the trainers' own parser accepts every value
        budget = run.budget
        assert (knobs.num_epochs, knobs.iters_per_epoch, knobs.val_iters) == (
            budget.epochs,
            budget.iters_per_epoch,
            budget.val_iters,
        )
        assert (knobs.save_every, knobs.time_budget, knobs.min_full_share) == (
            budget.save_every,
            budget.time_budget,
            budget.min_full_share,
        )
        assert (knobs.seed, knobs.dry_run, knobs.augmentation) == (params.seed, budget.dry_run, budget.augmentation)
        assert knobs.codecarbon == params.codecarbon_country and knobs.cuda_graphs == "off"


def _schema_has(key: str) -> bool:
    """A dotted params key the schema defines (``trainers.<run>.x``: a per-run key)."""
    if key.startswith(RUN + "."):
        leaf = key.removeprefix(RUN + ".")
        return leaf in TrainerEntry.model_fields and (leaf in RUN_OVERRIDES or leaf == "iters_fraction")
    model: Any = ParamsFile
    for part in key.split("."):
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return False
        model = fields[part].annotation
        model = next((a for a in getattr(model, "__args__", ()) if hasattr(a, "model_fields")), model)
    return True


def test_every_source_names_real_params_keys_and_the_train_stage_lists_them() -> None:
    """The train stage's DVC params cover every key a variable comes from (and the command's own)."""
    listed = TRAIN_STAGE["params"]
    used = {k for source in ALL_SOURCES.values() for k in source.keys} | {"device", "plan.configuration"}
    for key in sorted(used):
        assert _schema_has(key), key
        dvc_key = key.replace(RUN, "trainers.${item.trainer}")
        assert any(dvc_key == p or dvc_key.startswith(p + ".") for p in listed), f"train stage params lack {key}"


def _tree_with(key: str) -> dict:
    tree = copy.deepcopy(DEFAULT)
    if key.startswith(RUN + "."):
        leaf = key.removeprefix(RUN + ".")
        tree["trainers"]["pgps"][leaf] = ALTERNATIVE[leaf]
        return tree
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        node = node[part]
    node[leaf] = ALTERNATIVE.get(key, ALTERNATIVE.get(leaf))
    assert node[leaf] is not None, f"no alternative value for {key}"
    return tree


@pytest.mark.parametrize("key", sorted({k for s in ALL_SOURCES.values() for k in s.keys}))
def test_run_identity_changes_with_every_params_source(tmp_path: Path, key: str) -> None:
    base, changed = _params(), _params(_tree_with(key))
    run, run2 = base.trainer("pgps"), changed.trainer("pgps")
    assert run_settings(base, run) != run_settings(changed, run2)
    assert run_key(base, run, 0, tmp_path) != run_key(changed, run2, 0, tmp_path)


def test_environment_is_the_same_whatever_the_shell_exported() -> None:
    params = _params(_tree_with("runtime.threads"))
    clean = {"PATH": "/usr/bin", "HOME": "/home/x", "CUDA_VISIBLE_DEVICES": "1"}
    folders = {"nnUNet_raw": Path("/data/raw"), "nnUNet_results": Path("/data/results")}
    for run in (None, params.trainer("pgps")):
        calm = runtime_env(params, run, inherited=clean, **folders)
        assert runtime_env(params, run, inherited={**clean, **HOSTILE}, **folders) == calm
        assert calm["PATH"] == "/usr/bin" and calm["CUDA_VISIBLE_DEVICES"] == "1"  # the rest passes through
        assert "nnUNet_preprocessed" not in calm and calm["nnUNet_results"] == "/data/results"
        assert calm["OMP_NUM_THREADS"] == calm["MKL_NUM_THREADS"] == "3" and calm["nnUNet_compile"] == "f"
        assert {k for k in calm if k.startswith("PGPS_")} == (set() if run is None else set(DEFAULTS))
    pinned = _params(_tree_with("runtime.cpu_isa"))
    env = runtime_env(pinned, None, inherited=HOSTILE)
    assert {k: env[k] for k in CPU_ISA_ENV["avx512"]} == CPU_ISA_ENV["avx512"]
    assert (env["ATEN_CPU_CAPABILITY"], env["ONEDNN_MAX_CPU_ISA"]) == ("avx512", "AVX512_CORE")
    free = DEFAULT["runtime"] | {"threads": None, "cpu_isa": None}
    unpinned = runtime_env(_params(_tree_with("runtime.threads") | {"runtime": free}), None, inherited=HOSTILE)
    pins = {"OMP_NUM_THREADS", "MKL_NUM_THREADS", *CPU_ISA_ENV["avx2"]}
    assert not pins & set(unpinned)  # not pinned: not set, and the shell's values stripped all the same


_ENV_READ = re.compile(
    r"""(?:environ\.get|getenv|environ\[|_EnvPath|_getDefaultValue|_is_logger_enabled)\(?\s*['"]([A-Za-z_][A-Za-z0-9_]*)['"]"""
    r"""|['"]([A-Za-z_][A-Za-z0-9_]*)['"]\s+(?:not\s+)?in\s+os\.environ"""
)


def test_every_variable_nnunet_reads_is_stripped_or_harmless() -> None:
    """Grep nnunetv2 2.8.1 (and its augmentation/network packages) for environment reads."""
    site = Path(nnunetv2.__file__).parents[1]
    packages = ("nnunetv2", "batchgenerators", "batchgeneratorsv2", "dynamic_network_architectures", "acvl_utils")
    names: set[str] = set()
    for package in packages:
        for path in (site / package).rglob("*.py"):
            if "/tests/" not in str(path):
                names.update(a or b for a, b in _ENV_READ.findall(path.read_text(errors="replace")))
    assert {"nnUNet_raw", "nnUNet_compile", "nnUNet_n_proc_DA", "nnUNet_def_n_proc", "nnUNet_npp"} <= names
    leaks = sorted(n for n in names if not stripped(n) and n not in ALLOWED)
    assert not leaks, f"nnU-Net reads {leaks}: strip them (pgps.pipeline.nnunet_cli) or explain them in ALLOWED"
