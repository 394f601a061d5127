"""PGPS on top of other nnU-Net trainers and epoch budgets as classes (issue 16.2): names, pickling
and MRO; nnU-Net's own lookup finding the shipped classes; one-line errors for every misuse; real
short trainings on the reduced task showing that the network and augmentation reflect BOTH the
variant's change and PGPS's stage patches; ``nnUNetv2_train -tr`` running a lab's composed budget
classes into two results folders. Runtime: ~80 s on 2 busy cores (30 s of it the shared task)."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
from pathlib import Path

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.benchmarking.nnUNetTrainerBenchmark_5epochs import (
    nnUNetTrainerBenchmark_5epochs,
)
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import (
    nnUNetTrainerNoMirroring,
)
from nnunetv2.training.nnUNetTrainer.variants.loss.nnUNetTrainerDiceLoss import nnUNetTrainerDiceCELoss_noSmooth
from nnunetv2.training.nnUNetTrainer.variants.sampling.nnUNetTrainer_probabilisticOversampling import (
    nnUNetTrainer_probabilisticOversampling,
)
from nnunetv2.training.nnUNetTrainer.variants.training_length.nnUNetTrainer_Xepochs import nnUNetTrainer_250epochs

from pgps.errors import PGPSError
from pgps.nnunet.base import PGPSTrainerBase
from pgps.nnunet.variants import OWNED_METHODS, composed_name, pgps_class, pgps_trainer
from pgps.paths import TRAINERS_DIR
from pgps.trainer_catalog import budget_epochs
from pgps.trainers.nnUNetTrainerConstant import nnUNetTrainerConstant
from pgps.trainers.nnUNetTrainerConstant_250epochs import nnUNetTrainerConstant_250epochs
from pgps.trainers.nnUNetTrainerPGPS import nnUNetTrainerPGPS
from pgps.trainers.nnUNetTrainerPGPS_250epochs import nnUNetTrainerPGPS_250epochs
from pgps.trainers.nnUNetTrainerPGPSPlus import nnUNetTrainerPGPSPlus
from test_trainer_fixtures import (
    BIN,
    DATASET,
    DATASET_ID,
    fold_dir,
    load_plans,
    nnunet_env,
    read_record,
    reduced_root,
)


# ------------------------------------------------------------------------------------ lab trainers
class nnUNetTrainerLab_7epochs(nnUNetTrainer):
    """A lab's trainer in nnU-Net's budget convention (its __init__ sets num_epochs)."""

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):  # noqa: B008
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 7


class nnUNetTrainerLabIters(nnUNetTrainer):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):  # noqa: B008
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_iterations_per_epoch = 10


class nnUNetTrainerLabOversample(nnUNetTrainer):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):  # noqa: B008
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.oversample_foreground_percent = 0.9


class nnUNetTrainerLabWho(nnUNetTrainer):
    @classmethod
    def who(cls) -> list[str]:
        return ["lab"]


# module level, as a lab would write them (the factory takes this module's name: pickling works)
nnUNetTrainerPGPS_DiceCELoss_noSmooth = pgps_trainer(nnUNetTrainerDiceCELoss_noSmooth)
nnUNetTrainerPGPS_Lab_7epochs = pgps_trainer(nnUNetTrainerLab_7epochs)
nnUNetTrainerPGPS_LabIters = pgps_trainer(nnUNetTrainerLabIters)
nnUNetTrainerConstant_LabOversample = pgps_trainer(nnUNetTrainerLabOversample, nnUNetTrainerConstant)
nnUNetTrainerPGPS_LabOversample = pgps_trainer(nnUNetTrainerLabOversample)
nnUNetTrainerPGPS_Lab_7epochs_100epochs = pgps_trainer(nnUNetTrainerPGPS_Lab_7epochs, epochs=100)
nnUNetTrainerPGPSPlus_250epochs = pgps_trainer(nnUNetTrainer_250epochs, nnUNetTrainerPGPSPlus)  # nnU-Net's budget


@pgps_class
class nnUNetTrainerPGPS_LabWho(nnUNetTrainerPGPS, nnUNetTrainerLabWho):
    @classmethod
    def who(cls) -> list[str]:
        return ["composed", *super().who()]  # zero-argument super() in a decorated class body


def _shipped() -> dict[str, type]:
    """Every class in src/pgps/trainers that pgps.nnunet.variants made (a variant or a budget)."""
    import importlib

    found = {}
    for path in sorted(TRAINERS_DIR.glob("nnUNetTrainer*.py")):
        cls = getattr(importlib.import_module(f"pgps.trainers.{path.stem}"), path.stem, None)
        if cls is not None and ("pgps_budget_epochs" in vars(cls) or "pgps_variant" in vars(cls)):
            found[path.stem] = cls
    return found


# ------------------------------------------------------------------------------------ classes
def test_names_follow_nnunets_convention() -> None:
    assert nnUNetTrainerPGPS_DiceCELoss_noSmooth.__name__ == "nnUNetTrainerPGPS_DiceCELoss_noSmooth"
    assert composed_name(nnUNetTrainerPGPS, nnUNetTrainerNoMirroring) == "nnUNetTrainerPGPS_NoMirroring"
    # nnU-Net's own budget variant and PGPS's budget spell the same class name
    assert composed_name(nnUNetTrainerPGPS, nnUNetTrainer_250epochs) == nnUNetTrainerPGPS_250epochs.__name__
    assert composed_name(nnUNetTrainerPGPS, None, 250) == nnUNetTrainerPGPS_250epochs.__name__
    assert pgps_trainer(nnUNetTrainerPGPS, epochs=1, module="lab").__name__ == "nnUNetTrainerPGPS_1epochs"
    assert nnUNetTrainerPGPS_Lab_7epochs_100epochs.pgps_variant is nnUNetTrainerLab_7epochs


def test_the_catalog_reads_the_budget_at_the_end_of_a_name() -> None:
    assert budget_epochs(nnUNetTrainerPGPS_Lab_7epochs_100epochs.__name__) == 100  # what pgps schedule -tr reads


def test_module_qualname_pickle_and_mro() -> None:
    cls = nnUNetTrainerPGPS_DiceCELoss_noSmooth
    assert (cls.__module__, cls.__qualname__) == (__name__, cls.__name__)
    assert pickle.loads(pickle.dumps(cls)) is cls
    mro = cls.__mro__
    # PGPS's hooks come first; the variant sits between them and nnU-Net's base
    assert mro.index(PGPSTrainerBase) < mro.index(nnUNetTrainerDiceCELoss_noSmooth) < mro.index(nnUNetTrainer)
    assert cls._build_loss is nnUNetTrainerDiceCELoss_noSmooth._build_loss  # the variant's loss
    for method in (*OWNED_METHODS, "on_train_start", "on_train_epoch_start", "initialize"):
        own = getattr(PGPSTrainerBase, method, None)
        if own is not None and method in vars(PGPSTrainerBase):
            assert getattr(cls, method) is own, method
    assert nnUNetTrainerPGPS_LabWho.who() == ["composed", "lab"]
    assert pickle.loads(pickle.dumps(nnUNetTrainerPGPS_LabWho)) is nnUNetTrainerPGPS_LabWho


def test_shipped_variants_and_budgets_are_derived_and_found_by_nnunet(monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = _shipped()
    variants = {n: c.pgps_variant for n, c in shipped.items() if c.pgps_variant is not None}
    budgets = {n: c.pgps_budget_epochs for n, c in shipped.items() if c.pgps_budget_epochs is not None}
    assert len(variants) >= 2 and all(v.__module__.startswith("nnunetv2.") for v in variants.values())
    assert budgets and set(budgets) | set(variants) == set(shipped)
    for name, cls in shipped.items():  # each name is the one its parts give (nothing typed twice)
        pgps = next(b for b in cls.__mro__[1:] if b.__module__.startswith("pgps.trainers."))
        assert name == composed_name(pgps, vars(cls).get("pgps_variant"), cls.pgps_budget_epochs)
    # nnU-Net's own lookup (what nnUNetv2_train -tr does) through nnUNet_extTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    monkeypatch.setenv("nnUNet_extTrainer", str(TRAINERS_DIR))
    for name in shipped:
        found = recursive_find_trainer_class_by_name(name)
        assert found.__name__ == name and issubclass(found, PGPSTrainerBase)
        variant = shipped[name].pgps_variant
        assert variant is None or variant in found.__mro__


def _lab_class(name: str, *bases: type) -> type:
    return type(name, bases, {"__module__": "lab"})


MISUSE = [
    (lambda: pgps_trainer(object), "not an nnU-Net trainer class"),
    (lambda: pgps_trainer(nnUNetTrainer), "already PGPS on nnU-Net's nnUNetTrainer"),
    (lambda: pgps_trainer(nnUNetTrainerBenchmark_5epochs), "overrides run_training, which PGPS must own"),
    (
        lambda: pgps_trainer(nnUNetTrainer_probabilisticOversampling),
        "overrides _set_batch_size_and_oversample, which PGPS must own",
    ),
    (lambda: pgps_trainer(nnUNetTrainerNoMirroring, nnUNetTrainerNoMirroring), "must be a PGPS trainer class"),
    (lambda: pgps_trainer(nnUNetTrainerPGPS), "already a PGPS trainer; give a variant or an epoch budget"),
    (lambda: pgps_trainer(nnUNetTrainerPGPS, nnUNetTrainerPGPS), "already a PGPS trainer; leave pgps= out"),
    (lambda: pgps_trainer(nnUNetTrainerPGPS, epochs=0), "epochs=0: an epoch budget must be an integer >= 1"),
    (lambda: pgps_trainer(nnUNetTrainerPGPS, epochs=True), "epochs=True: an epoch budget"),
    (lambda: pgps_trainer(nnUNetTrainerPGPS_250epochs, epochs=100), "already fixes 250 epochs"),
    (lambda: pgps_trainer(nnUNetTrainerLabWho, nnUNetTrainerPGPS_250epochs), "fixes its epochs; compose the class"),
    # name clashes: nnU-Net's lookup searches its own classes first; pgps's shipped ones; the parts' names
    (lambda: pgps_trainer(nnUNetTrainerNoMirroring, name="nnUNetTrainer_250epochs"), "nnU-Net ships a class"),
    (lambda: pgps_trainer(nnUNetTrainerNoMirroring), "nnUNetTrainerPGPS_NoMirroring: pgps ships it"),
    (lambda: pgps_trainer(nnUNetTrainerLabWho, name="nnUNetTrainerLabWho"), "the same as the class it is made from"),
    (lambda: pgps_trainer(nnUNetTrainerLabWho, name="Lab Who"), "not a Python identifier"),
    (lambda: pgps_class(_lab_class("X", nnUNetTrainerNoMirroring, nnUNetTrainerPGPS)), "must be a PGPS trainer"),
    (lambda: pgps_class(_lab_class("nnUNetTrainerPGPS_1epoch", nnUNetTrainerPGPS)), "spell an epoch budget _<N>epochs"),
    (lambda: pgps_class(_lab_class("nnUNetTrainerPGPS_050epochs", nnUNetTrainerPGPS)), "spell an epoch budget"),
    (lambda: pgps_class(_lab_class("nnUNetTrainerPGPS_0epochs", nnUNetTrainerPGPS)), "epochs=0: an epoch budget"),
]


@pytest.mark.parametrize("make, message", MISUSE, ids=[m for _, m in MISUSE])
def test_misuse_is_one_line(make, message: str) -> None:
    with pytest.raises(PGPSError, match=re.escape(message)) as info:
        make()
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------ instances and trainings
@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return reduced_root(tmp_path_factory)


def _instance(cls: type, root: Path, results: Path, monkeypatch: pytest.MonkeyPatch, **knobs: str):
    for k, v in nnunet_env(root, results, PGPS_ITERS_PER_EPOCH="1", PGPS_VAL_ITERS="1", **knobs).items():
        monkeypatch.setenv(k, v)
    if "PGPS_NUM_EPOCHS" not in knobs:
        monkeypatch.delenv("PGPS_NUM_EPOCHS", raising=False)
    plans = load_plans(root)
    plans["continue_training"] = False  # nnUNetv2_train's flag, which nnU-Net's __init__ pops
    dataset_json = json.loads((root / "nnUNet_preprocessed" / DATASET / "dataset.json").read_text())
    return cls(plans=plans, configuration="3d_fullres", fold=0, dataset_json=dataset_json, device=torch.device("cpu"))


@pytest.mark.slow
def test_budgets_from_the_class_and_from_the_variant(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    folders = set()
    for cls, epochs in [
        (nnUNetTrainerPGPS_250epochs, 250),
        (nnUNetTrainerConstant_250epochs, 250),
        (nnUNetTrainerPGPS_Lab_7epochs, 7),  # the lab variant's own num_epochs becomes the budget
        (nnUNetTrainerPGPSPlus_250epochs, 250),  # so does nnU-Net's nnUNetTrainer_250epochs's
    ]:
        t = _instance(cls, root, tmp_path, monkeypatch)
        assert t.num_epochs == t.pgps_knobs.num_epochs == t.pgps_schedule.num_epochs == epochs
        assert t.pgps_schedule.stages[-1].end_epoch == epochs
        assert t.pgps_config()["knobs"]["num_epochs"] == epochs
        folders.add(t.output_folder)
    plain = _instance(nnUNetTrainerPGPS, root, tmp_path, monkeypatch, PGPS_NUM_EPOCHS="250")
    assert len(folders | {plain.output_folder}) == 5  # the name is the folder: no two budgets share one
    assert _instance(nnUNetTrainerPGPS_250epochs, root, tmp_path, monkeypatch, PGPS_NUM_EPOCHS="250").num_epochs == 250
    # the Constant trainer keeps nnU-Net's oversampling, so a variant's is kept too
    assert (
        _instance(nnUNetTrainerConstant_LabOversample, root, tmp_path, monkeypatch).oversample_foreground_percent == 0.9
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "cls, knobs, message",
    [
        (
            nnUNetTrainerPGPS_250epochs,
            {"PGPS_NUM_EPOCHS": "1000"},
            "trains 250 epochs (its name says so), but PGPS_NUM_EPOCHS=1000: unset it",
        ),
        (nnUNetTrainerConstant_250epochs, {"PGPS_TIME_BUDGET": "90m"}, "but PGPS_TIME_BUDGET=5400s would choose"),
        (nnUNetTrainerPGPS_Lab_7epochs_100epochs, {}, "its name fixes 100 epochs, but nnUNetTrainerLab_7epochs sets"),
        (nnUNetTrainerPGPS_LabIters, {}, "sets num_iterations_per_epoch = 10, which PGPS sets from PGPS_ITERS_PER"),
        (nnUNetTrainerPGPS_LabOversample, {}, "sets oversample_foreground_percent = 0.9, which PGPS sets"),
    ],
    ids=["env-conflict", "time-budget", "name-vs-variant", "iters", "oversample"],
)
def test_conflicts_at_construction(cls, knobs, message, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(PGPSError, match=re.escape(message)) as info:
        _instance(cls, root, tmp_path, monkeypatch, **knobs)
    assert "\n" not in str(info.value)


def _transform_types(obj, seen=None) -> set[str]:
    """Class names of every transform inside a batchgeneratorsv2 pipeline."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return set()
    seen.add(id(obj))
    names = {type(obj).__name__}
    for attr in ("transforms", "transform"):
        inner = getattr(obj, attr, None)
        for x in inner if isinstance(inner, list | tuple) else [inner] if inner is not None else []:
            names |= _transform_types(x, seen)
    return names


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nnUNetTrainerPGPS_NoMirroring", "nnUNetTrainerPGPS_BN"])
def test_short_training_sees_variant_and_stages(name: str, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    cls = _shipped()[name]
    trainer = _instance(cls, root, tmp_path, monkeypatch, PGPS_NUM_EPOCHS="2", PGPS_SEED="1")
    trainer.run_training()
    rec = read_record(Path(trainer.output_folder))
    # PGPS: the stage patches (16x8x8, then the planned 32^3) reached the network
    stages = [trainer.pgps_schedule.stage_at(e) for e in range(2)]
    assert [s.patch_size for s in stages] == [(16, 8, 8), (32, 32, 32)]
    for e, stage in zip(rec["epochs"], stages):
        assert e["train_input_shapes"] == [{"shape": [stage.batch_size, 1, *stage.patch_size], "count": 1}]
    axes = [a["mirror_axes"] for a in rec["augmentation"]["stages"]]  # every stage's loader, as built
    assert [a["patch_size"] for a in rec["augmentation"]["stages"]] == [list(s.patch_size) for s in stages]
    assert axes == ([None, None] if name.endswith("NoMirroring") else [[0, 1, 2], [0, 1, 2]])
    norms = {type(m).__name__ for m in trainer.network.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)}
    seen = _transform_types(trainer.dataloader_train.data_loader.transforms)  # the last stage's, as trained
    ckpt = torch.load(Path(trainer.output_folder) / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    if name.endswith("NoMirroring"):  # the variant: no mirroring in training, none at inference
        assert "MirrorTransform" not in seen and "SpatialTransform" in seen
        assert ckpt["inference_allowed_mirroring_axes"] is None
        assert norms == {"InstanceNorm3d"}
    else:  # the variant's network: batch norm; mirroring as nnU-Net's default
        assert norms == {"BatchNorm3d"}
        assert "MirrorTransform" in seen and tuple(ckpt["inference_allowed_mirroring_axes"]) == (0, 1, 2)
    assert ckpt["trainer_name"] == name


LAB_MODULE = '''
"""A lab's trainers folder (on nnUNet_extTrainer): its own trainer, and PGPS versions with two budgets."""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from pgps.nnunet.variants import pgps_trainer


class nnUNetTrainerLabNoVal(nnUNetTrainer):
    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        self.print_to_log_file("LAB: final validation skipped")  # minutes on CPU


nnUNetTrainerPGPS_LabNoVal = pgps_trainer(nnUNetTrainerLabNoVal)
nnUNetTrainerPGPS_LabNoVal_1epochs = pgps_trainer(nnUNetTrainerPGPS_LabNoVal, epochs=1)
nnUNetTrainerPGPS_LabNoVal_2epochs = pgps_trainer(nnUNetTrainerPGPS_LabNoVal, epochs=2)
'''


@pytest.mark.slow
def test_nnunetv2_train_runs_a_labs_composed_budget_classes(root: Path, tmp_path: Path) -> None:
    lab = tmp_path / "lab_trainers"
    lab.mkdir()
    (lab / "lab_trainers.py").write_text(LAB_MODULE)
    results = tmp_path / "results"
    env = nnunet_env(root, results, PGPS_ITERS_PER_EPOCH="1", PGPS_VAL_ITERS="1")
    env["nnUNet_extTrainer"] = f"{TRAINERS_DIR}:{lab}"
    budgets = {"nnUNetTrainerPGPS_LabNoVal_1epochs": 1, "nnUNetTrainerPGPS_LabNoVal_2epochs": 2}
    cmds = {
        n: [str(BIN / "nnUNetv2_train"), str(DATASET_ID), "3d_fullres", "0", "-tr", n, "-device", "cpu"]
        for n in budgets
    }
    procs = {
        n: subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for n, c in cmds.items()
    }
    try:
        folders = {}
        for name, epochs in budgets.items():  # both at once: each class has its own results folder
            out, _ = procs[name].communicate(timeout=600)
            assert procs[name].returncode == 0, out[-3000:]
            assert f"Using trainer '{name}' from: {lab}" in out
            fold = fold_dir(results, name)
            rec = read_record(fold)
            assert rec["trainer"] == name and rec["config"]["knobs"]["num_epochs"] == epochs
            assert [e["epoch"] for e in rec["epochs"]] == list(range(epochs))
            assert rec["schedule"]["num_epochs"] == epochs
            assert (fold / "checkpoint_final.pth").is_file()
            assert "LAB: final validation skipped" in "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
            folders[name] = fold
    finally:  # a failed check leaves no training behind
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert len(set(folders.values())) == 2


def test_owned_methods_cover_every_override_that_skips_super() -> None:
    """OWNED_METHODS is checked against PGPSTrainerBase's source: each nnU-Net method it overrides
    without calling ``super().<same>`` (a variant's version would never run) is listed there."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(PGPSTrainerBase)))
    skipping = set()
    for node in tree.body[0].body:
        if isinstance(node, ast.FunctionDef) and hasattr(nnUNetTrainer, node.name) and node.name != "__init__":
            calls_super = any(
                isinstance(c, ast.Attribute)
                and c.attr == node.name
                and isinstance(c.value, ast.Call)
                and getattr(c.value.func, "id", None) == "super"
                for c in ast.walk(node)
            )
            if not calls_super:
                skipping.add(node.name)
    assert skipping and skipping <= set(OWNED_METHODS)
