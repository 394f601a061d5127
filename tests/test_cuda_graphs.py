"""``PGPS_CUDA_GRAPHS`` (issue 17.2) on a machine without CUDA: the fallback to eager steps, and
every part of the graphed step that runs on a CPU, against nnU-Net's own ``train_step`` on the
reduced task's real network, loss and optimizer:

- the static-buffer step run eagerly gives nnU-Net's loss, gradients and weights, bit for bit;
- the whole warm-up / capture / replay cycle, with a capture backend that replays the captured
  function eagerly (``EagerReplay``), trains exactly as nnU-Net's step does over two shapes and an
  lr change (which a stale lr tensor would break), with the losses read back once per epoch;
- replaced optimizer state (a dry run's restore) triggers a new warm-up and capture; a failing
  capture falls back to eager for that shape with one log line.
What this cannot show: that ``torch.cuda.graph`` captures the step on a GPU (benchmarks/gpu)."""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pgps.nnunet.cuda_graphs import (
    WARMUP_STEPS,
    EagerReplay,
    GraphedTrainStep,
    StaticStep,
    losses_to_host,
    make_fused,
    make_graphed_step,
    unavailable_reason,
)
from pgps.nnunet.dryrun import restored_state, synthetic_batch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_trainer_fixtures import reduced_root

    return reduced_root(tmp_path_factory)


def make_trainer(root: Path, results: Path, monkeypatch: pytest.MonkeyPatch):
    from test_trainer_fixtures import DATASET, load_plans, nnunet_env

    for k, v in nnunet_env(root, results, PGPS_NUM_EPOCHS="4", PGPS_SEED="2", PGPS_CUDA_GRAPHS="on").items():
        monkeypatch.setenv(k, v)
    cls = importlib.import_module("pgps.trainers.nnUNetTrainerPGPS").nnUNetTrainerPGPS
    plans = load_plans(root)
    plans["continue_training"] = False
    dataset_json = json.loads((root / "nnUNet_preprocessed" / DATASET / "dataset.json").read_text())
    trainer = cls(
        plans=plans, configuration="3d_fullres", fold=0, dataset_json=dataset_json, device=torch.device("cpu")
    )
    trainer.initialize()
    trainer.network.train()
    return trainer


@pytest.fixture()
def trainer(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    return make_trainer(root, tmp_path, monkeypatch)


def batch(trainer, patch: tuple[int, ...], seed: int) -> dict:
    b = synthetic_batch(trainer, patch, 2)
    b["data"] = torch.randn(b["data"].shape, generator=torch.Generator().manual_seed(seed))
    return b


def params(trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.network.parameters()]


def grads(trainer) -> list[torch.Tensor | None]:
    """None where a parameter gets no gradient (the deepest deep-supervision head has weight 0)."""
    return [None if p.grad is None else p.grad.detach().clone() for p in trainer.network.parameters()]


def same(a: list[torch.Tensor | None], b: list[torch.Tensor | None]) -> bool:
    return len(a) == len(b) and all(x is y if x is None or y is None else torch.equal(x, y) for x, y in zip(a, b))


def log_lines(trainer, needle: str) -> list[str]:
    return [ln for ln in Path(trainer.log_file).read_text().splitlines() if needle in ln]


def test_on_without_cuda_trains_eagerly_and_says_so_once(trainer) -> None:
    assert trainer.pgps_knobs.cuda_graphs == "on"
    step, config = make_graphed_step(trainer, "on")
    assert step is None
    assert config == {
        "requested": "on",
        "active": False,
        "reason": "device cpu is not a CUDA device",
        "warmup_steps": WARMUP_STEPS,
    }
    assert len(log_lines(trainer, "PGPS_CUDA_GRAPHS=on: device cpu is not a CUDA device; training with eager")) == 1
    off, off_config = make_graphed_step(trainer, "off")
    assert off is None and off_config["active"] is False and off_config["reason"] is None
    assert len(log_lines(trainer, "PGPS_CUDA_GRAPHS")) == 1


def test_refusals_name_their_reason(trainer) -> None:
    trainer.device = torch.device("cuda")  # only the checks after the device run (nothing is moved)
    assert unavailable_reason(trainer) is None
    trainer.is_ddp = True
    assert "DDP" in unavailable_reason(trainer)
    trainer.is_ddp = False
    trainer.optimizer = torch.optim.Adam(trainer.network.parameters())
    assert unavailable_reason(trainer).startswith("optimizer Adam")


def test_static_step_eager_is_nnunets_train_step(trainer) -> None:
    b = batch(trainer, (32, 32, 32), seed=1)
    with restored_state(trainer):
        ref = trainer.train_step(b)["loss"]
        ref_grads, ref_params = grads(trainer), params(trainer)
    static = StaticStep(trainer, b["data"], b["target"])
    static.load(b)
    loss = static.run()
    assert isinstance(loss, torch.Tensor) and not loss.requires_grad
    assert float(loss) == float(ref)
    assert sum(g is not None for g in ref_grads) > 0
    assert same(ref_grads, grads(trainer))
    assert same(ref_params, params(trainer))


def test_fused_optimizer_matches_nnunets_sgd(trainer) -> None:
    """What the graphed step changes in the optimizer (fused SGD) against nnU-Net's default."""
    batches = [batch(trainer, (16, 16, 16), seed=s) for s in range(3)]
    with restored_state(trainer):
        for b in batches:
            trainer.train_step(b)
        ref = params(trainer)
    make_fused(trainer.optimizer)
    for b in batches:
        trainer.train_step(b)
    for a, p in zip(ref, params(trainer)):
        torch.testing.assert_close(p, a, rtol=1e-5, atol=1e-7)


def _reference(trainer, schedule: list[tuple[dict, float]]) -> tuple[list[float], list[torch.Tensor]]:
    """nnU-Net's train_step over ``schedule`` (batch, lr), state restored afterwards."""
    with restored_state(trainer):
        make_fused(trainer.optimizer)
        losses = []
        for b, lr in schedule:
            trainer.optimizer.param_groups[0]["lr"] = lr
            losses.append(float(trainer.train_step(b)["loss"]))
        out = params(trainer)
    for g in trainer.optimizer.param_groups:
        g["fused"], g["foreach"] = None, None  # as nnU-Net built it; GraphedTrainStep switches it again
    return losses, out


def test_warmup_capture_replay_cycle_trains_like_nnunet(trainer) -> None:
    lr0 = trainer.optimizer.param_groups[0]["lr"]
    small = [batch(trainer, (16, 16, 16), seed=10 + i) for i in range(WARMUP_STEPS + 3)]
    large = [batch(trainer, (32, 16, 16), seed=20 + i) for i in range(WARMUP_STEPS + 2)]
    schedule = [(b, lr0) for b in small[:4]] + [(b, lr0 * 0.5) for b in small[4:]] + [(b, lr0 * 0.5) for b in large]
    ref_losses, ref_params = _reference(trainer, schedule)

    backend = EagerReplay()
    untracked: list[tuple[int, ...]] = []
    step = GraphedTrainStep(trainer, backend=backend, untracked_forward=lambda x: untracked.append(tuple(x.shape)))
    outputs = []
    for b, lr in schedule:
        trainer.optimizer.param_groups[0]["lr"] = lr  # what nnU-Net's poly schedule does per epoch
        outputs.append(step(b))
    assert all(isinstance(o["loss"], torch.Tensor) for o in outputs)  # no host readback per step
    host = losses_to_host(outputs)
    assert [o["loss"].shape for o in host] == [()] * len(schedule)
    np.testing.assert_allclose([float(o["loss"]) for o in host], ref_losses, rtol=1e-6)
    for a, p in zip(ref_params, params(trainer)):
        torch.testing.assert_close(p, a, rtol=1e-5, atol=1e-7)
    assert backend.captures == 2
    stats = {tuple(s["data_shape"]): s for s in step.stats()}
    assert stats[(2, 1, 16, 16, 16)]["warmup_steps"] == WARMUP_STEPS
    assert stats[(2, 1, 16, 16, 16)]["replays"] == len(small) - WARMUP_STEPS
    assert stats[(2, 1, 32, 16, 16)]["replays"] == len(large) - WARMUP_STEPS
    assert all(s["fallback"] is None and s["capture_s"] >= 0 for s in stats.values())
    # replays after the first run no Python forward hook on a GPU: they are reported instead
    assert untracked == [(2, 1, 16, 16, 16)] * (len(small) - WARMUP_STEPS - 1) + [(2, 1, 32, 16, 16)] * (
        len(large) - WARMUP_STEPS - 1
    )
    assert all(isinstance(g["lr"], float) for g in trainer.optimizer.param_groups)  # nnU-Net's floats kept
    step.clear()
    assert step.shapes == {} and len(step.history) == 2


def test_replaced_optimizer_state_is_captured_again(trainer) -> None:
    backend = EagerReplay()
    step = GraphedTrainStep(trainer, warmup=1, backend=backend)
    bs = [batch(trainer, (16, 16, 16), seed=30 + i) for i in range(4)]
    step(bs[0])  # warm-up: momentum buffers exist
    step(bs[1])  # capture + replay
    assert backend.captures == 1
    trainer.optimizer.load_state_dict(copy.deepcopy(trainer.optimizer.state_dict()))  # what a dry run restores
    step(bs[2])  # stale graph: one eager warm-up step again
    step(bs[3])  # and a new capture
    assert backend.captures == 2
    (stats,) = step.stats()
    assert stats["warmup_steps"] == 2 and stats["replays"] == 2


def test_failed_capture_falls_back_to_eager_for_that_shape(trainer) -> None:
    class Broken(EagerReplay):
        def capture(self, fn):
            raise RuntimeError("operation not permitted when stream is capturing\nmore")

    bs = [batch(trainer, (16, 16, 16), seed=40 + i) for i in range(3)]
    lr = trainer.optimizer.param_groups[0]["lr"]
    ref_losses, ref_params = _reference(trainer, [(b, lr) for b in bs])
    step = GraphedTrainStep(trainer, warmup=1, backend=Broken())
    losses = [float(o["loss"]) for o in losses_to_host([step(b) for b in bs])]
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
    for a, p in zip(ref_params, params(trainer)):
        torch.testing.assert_close(p, a, rtol=1e-5, atol=1e-7)
    (stats,) = step.stats()
    assert stats["fallback"] == "RuntimeError: operation not permitted when stream is capturing"
    assert len(log_lines(trainer, "PGPS_CUDA_GRAPHS: capture at [2, 1, 16, 16, 16] failed")) == 1


def test_losses_to_host_feeds_nnunets_epoch_end(trainer) -> None:
    outputs = [{"loss": torch.tensor(v)} for v in (0.5, 1.5)] + [{"loss": np.asarray(2.5)}]
    host = losses_to_host(outputs)
    trainer.on_train_epoch_end(host)
    assert trainer.logger.get_value("train_losses", step=-1) == pytest.approx(1.5)
    assert losses_to_host(host) == host  # already on the host: unchanged


# ---------------------------------------------------------------- the prepared device check (issue 17.1)
@pytest.mark.beside_daemons  # make test: in the Docker/SLURM process (CI balance)
def test_device_check_dry_run_on_cpu_and_its_imports(tmp_path: Path) -> None:
    """benchmarks/gpu/device_check.py end to end on the CPU: a NibabelIO dataset planned by nnU-Net (16^3: 9 PGPS
    stages, as 32^3 has, at half the CPU: 100 s against 214 s), every phase (step timings, PGPS killed at an
    epoch line and resumed with --c, final validation, nnUNetv2_predict, constant, PGPS+, the compile and graphs
    runs), SimpleITK replaced by the stub in every process, and an import trace of all of them: nothing the
    device image lacks is imported beyond the carried wheels."""
    import subprocess
    import sys

    from benchmarks.gpu import carry

    info = carry.build_dataset(  # one worker per nnU-Net pool: 16^3 cases, and each worker imports torch
        tmp_path / "plan", shape=(16, 16, 16), num_train=6, num_test=1, tar_path=tmp_path / "d.tar", processes=1
    )
    assert info["image_reader_writer"] == "NibabelIO" and info["patch_size"] == [16, 16, 16]
    out, trace = tmp_path / "out", tmp_path / "trace"
    cmd = [sys.executable, "benchmarks/gpu/device_check.py", "--dry", "--data", str(tmp_path / "d.tar")]
    cmd += ["--out", str(out), "--work", str(tmp_path / "work"), "--trace-imports", str(trace), "--deadline-s", "3000"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3000, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "device_check.json").read_text())
    assert res["setup"]["imports_ok"] and res["setup"]["simpleitk_stubbed"]
    n = len(res["phases"]["steps"]["rows"])
    assert res["budget"]["epochs"] == n == 9 and res["plan"]["poolings"] == [2, 2, 2]  # 16^3: PGPS has 9 stages
    steps = res["phases"]["steps"]
    assert steps["graphs_unavailable"] == "device cpu is not a CUDA device"
    assert all(r["eager_step_s"] > 0 for r in steps["rows"]) and 0 < steps["network_time_ratio_eager"] < 1
    pgps = res["phases"]["pgps"]
    kill = res["budget"]["kill_epoch"]
    assert pgps["run"]["killed"]["line"].endswith(f"Epoch {kill}") and pgps["resume"]["rc"] == 0
    assert [r["at_epoch"] for r in pgps["record_resumes"]] == [kill]
    assert pgps["record_epochs"] == list(range(n))
    assert pgps["summary"]["sessions"] == 2 and len(pgps["summary"]["stages"]) == n
    assert 0 <= pgps["final_validation_dice"] <= 1
    assert res["phases"]["predict"]["rc"] == 0 and len(res["phases"]["predict"]["dice"]) == 1
    for phase in ("constant", "pgps_plus", "compile", "graphs"):  # training timed, no final validation
        assert res["phases"][phase]["run"]["rc"] == 0, phase
        assert res["phases"][phase]["summary"]["training_s"] > 0
        assert res["phases"][phase]["env"]["GPU_PROBE_FINAL_VALIDATION"] == "off"
        assert "final_validation_dice" not in res["phases"][phase], phase
    assert res["phases"]["graphs"]["env"]["PGPS_CUDA_GRAPHS"] == "on"
    assert 0 < res["projection"]["pgps_over_constant"] < 1.5
    imported = carry.imported_distributions(trace)
    assert imported["missing"] == [] and imported["stubbed"] == ["simpleitk"]
    assert imported["carried_not_imported"] == []
    # imagecodecs (26 MB, not carried) is only tried by tifffile: blocked in the dry run, which passed without it
    assert "imagecodecs" in imported["blocked"]
    assert all("imagecodecs" not in imported[k] for k in ("in_image", "carried", "via_image", "missing"))
    print("device check dry run:", round(res["elapsed_s"], 1), "s;", json.dumps(imported))


def test_carry_manifest_fits_one_device_call() -> None:
    """The committed manifest: cp312 (or abi3 / pure) manylinux x86_64 wheels for every carried
    distribution, no SimpleITK or imagecodecs, and wheels + dataset + working tree under 64 MiB.
    Where .gpu_carry/ was built here, its files must hash to the manifest."""
    from benchmarks.gpu import carry

    manifest = json.loads(carry.MANIFEST.read_text())
    wheels = [Path(e["path"]).name for e in manifest["files"] if e["path"].endswith(".whl")]
    assert len(wheels) == len(carry.WHEELS)
    for name in carry.WHEELS:
        assert sum(w.lower().startswith(name.lower().replace("-", "_") + "-") for w in wheels) == 1, name
    for w in wheels:
        tag = w[:-4].split("-")[-3:]
        assert tag[0] in ("cp312", "cp311", "py3") and tag[1] in ("cp312", "abi3", "none"), w
        assert tag[2] == "any" or ("manylinux" in tag[2] and tag[2].endswith("x86_64")), w
        assert not w.lower().startswith(("simpleitk", "imagecodecs")), w
    assert any(e["path"].endswith("dataset.tar") for e in manifest["files"])
    assert (
        manifest["dataset"]["patch_size"] == [128, 128, 128]
        and manifest["dataset"]["image_reader_writer"] == "NibabelIO"
    )
    total = sum(e["bytes"] for e in manifest["files"]) + carry.tree_bytes()
    assert total < carry.LIMIT_BYTES, total / 2**20
    if carry.CARRY.is_dir():
        assert carry.check()["total_mib"] < 64
