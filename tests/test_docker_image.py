"""CI Docker stage: a real, isolated dockerd; the image built from this checkout; its structure; `reproduce` of the
smoke profile inside it with no network; cleanup checked.

One module-scoped daemon and image serve every test here. The image builds (network and disk: the debootstrap base,
3 GB of wheels) while the host finishes the smoke profile's run that `make test` shares (tests/smoke_run.py); the
container gets a copy of it with its PGPS training removed, and its `reproduce` trains, evaluates and reports what
that left stale, and nothing else. Skips with a reason only where no daemon can be started (not root, dockerd
missing or refusing to start); with CI=true that is a failure instead.
Set PGPS_TEST_DOCKER_HOST=unix:///… to reuse a running daemon (and its build cache) while developing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

import pgps
from pgps.pipeline.stage_progress import describe
from smoke_run import SMOKE_TASK, copy_run, finished_smoke_run, remove_training

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts" / "docker"
BASE_IMAGE = "local/debian:bookworm"
IMAGE = "pgps:ci"
TRAINERS = (
    "nnUNetTrainerConstant",
    "nnUNetTrainerPGPS",
    "nnUNetTrainerPGPSPlus",
    "nnUNetTrainerRPSS",
    "nnUNetTrainerPGPSEfficiency",
    "nnUNetTrainerPGPSPerformance",
)
TIMINGS: dict[str, float | str] = {}
TIMINGS_FILE = REPO / ".tmp" / "docker-stage.json"


def _no_daemon(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"Docker stage must run in CI but cannot: {reason}")
    pytest.skip(f"Docker stage skipped: {reason}")


def pgps_cli(*argv: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    """The launcher as a user runs it (its own process), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "pgps.cli", *argv], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def _mounts_under(path: str) -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(path + "/")]


@pytest.fixture(scope="module")
def daemon() -> Iterator[str]:
    """DOCKER_HOST of an isolated dockerd (own data/exec root, pidfile, socket; no iptables, no bridge)."""
    reuse = os.environ.get("PGPS_TEST_DOCKER_HOST")
    if reuse:
        yield reuse
        TIMINGS_FILE.parent.mkdir(exist_ok=True)
        TIMINGS_FILE.write_text(json.dumps(TIMINGS, indent=1) + "\n")
        return
    if os.geteuid() != 0:
        _no_daemon("dockerd needs root")
    if shutil.which("dockerd") is None:
        _no_daemon("dockerd is not installed (make system-deps installs docker.io)")
    state = tempfile.mkdtemp(prefix="pgps-dockerd-", dir="/tmp")  # short path: unix sockets max ~107 bytes
    start = time.monotonic()
    proc = subprocess.run([str(SCRIPTS / "start-dockerd.sh"), state], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        subprocess.run([str(SCRIPTS / "stop-dockerd.sh"), state], timeout=120)
        _no_daemon(f"dockerd did not start: {proc.stderr.strip()[-400:]}")
    TIMINGS["dockerd_start_s"] = round(time.monotonic() - start, 1)
    pid = int(Path(state, "dockerd.pid").read_text())
    yield proc.stdout.strip().removeprefix("DOCKER_HOST=")
    start = time.monotonic()
    try:
        subprocess.run([str(SCRIPTS / "stop-dockerd.sh"), state], check=True, timeout=900)  # rm of ~10 GB of layers
    finally:
        TIMINGS["dockerd_stop_and_cleanup_s"] = round(time.monotonic() - start, 1)
        TIMINGS_FILE.parent.mkdir(exist_ok=True)
        TIMINGS_FILE.write_text(json.dumps(TIMINGS, indent=1) + "\n")
    # cleaned up for real: daemon gone (by its PID), nothing left mounted, state removed
    assert not Path(f"/proc/{pid}").exists(), f"dockerd {pid} still running"
    assert _mounts_under(state) == []
    assert not Path(state).exists()


@pytest.fixture(scope="module")
def client(daemon: str) -> Iterator[Any]:
    import docker

    c = docker.DockerClient(base_url=daemon, timeout=300)
    yield c
    c.close()


@pytest.fixture(scope="module")
def image(daemon: str, client: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The image built from this checkout by `pgps docker build`, on the debootstrapped Debian base. The build
    waits on the network and the disk most of the time: the shared smoke run finishes on the host meanwhile."""
    with ThreadPoolExecutor(1) as pool:
        build = pool.submit(_build_image, daemon, client)
        try:
            start = time.monotonic()
            finished_smoke_run(tmp_path_factory)
            TIMINGS["smoke_run_ready_during_build_s"] = round(time.monotonic() - start, 1)
        finally:
            built = build.result()  # waits for the build even when the preparation failed
    return built


def _build_image(daemon: str, client: Any) -> str:
    start = time.monotonic()
    env = dict(os.environ, DOCKER_HOST=daemon)
    proc = subprocess.run(
        [str(SCRIPTS / "make-base-image.sh"), BASE_IMAGE], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    TIMINGS["base_image_s"] = round(time.monotonic() - start, 1)
    git = ["git", "-C", str(REPO), "describe", "--always", "--dirty", "--abbrev=40"]
    TIMINGS["revision"] = subprocess.run(git, capture_output=True, text=True).stdout.strip() or "unknown"
    start = time.monotonic()
    # --no-pip-cache: CI's daemon is thrown away after this module, so a pip cache in it is ~3 GB of disk for nothing
    # (a CI run failed with "No space left on device" in this build while the core-install venv was installing)
    build = ("docker", "build", "--tag", IMAGE, "--base-image", BASE_IMAGE, "--docker-host", daemon, "--no-pip-cache")
    proc = pgps_cli(*build)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    TIMINGS["build_s"] = round(time.monotonic() - start, 1)
    TIMINGS["image_size_gb"] = round(client.images.get(IMAGE).attrs["Size"] / 1e9, 2)
    cache_mounts = [entry for entry in client.df()["BuildCache"] or [] if entry["Type"] == "exec.cachemount"]
    TIMINGS["pip_cache_mount_mb"] = round(sum(entry["Size"] for entry in cache_mounts) / 1e6, 1)
    assert TIMINGS["pip_cache_mount_mb"] < 50, f"--no-pip-cache left a pip cache in the builder: {cache_mounts}"
    return IMAGE


def run_in(
    client: Any, image: str, command: list[str], workspace: Path | None = None, **kwargs: Any
) -> tuple[int, str]:
    """Exit code and combined output of a throwaway container (no network), ``workspace`` at /workspace."""
    import docker

    if workspace is not None:
        kwargs["mounts"] = [docker.types.Mount("/workspace", str(workspace), type="bind")]
    container = client.containers.run(image, command, detach=True, network_mode="none", **kwargs)
    try:
        code = int(container.wait(timeout=600)["StatusCode"])
        return code, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


def test_missing_image_is_one_line_error(daemon: str, tmp_path: Path) -> None:
    proc = pgps_cli(
        "docker", "reproduce", "--image", "pgps:never-built", "--workspace", str(tmp_path), "--docker-host", daemon
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "pgps:never-built: image not found" in line and daemon in line and "pgps docker build" in line


def test_image_is_cuda_torch_with_pinned_deps(client: Any, image: str) -> None:
    probe = (
        "import json, torch, torchvision, nnunetv2, importlib.metadata as m;"
        "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda,"
        " 'cudnn': torch.backends.cudnn.version(), 'tv': torchvision.__version__, 'nnunet': m.version('nnunetv2')}))"
    )
    code, out = run_in(client, image, ["python", "-c", probe])
    assert code == 0, out
    info = json.loads(out.strip().splitlines()[-1])
    assert info["torch"].startswith("2.14.1") and info["tv"].startswith("0.29.1")
    assert info["cuda"] is not None and info["cuda"].startswith("13."), info  # a CUDA build, not the CPU wheel
    assert info["cudnn"], info  # cuDNN from the nvidia-* wheels loads
    assert info["nnunet"] == "2.8.1"
    # every distribution in the image is pinned by requirements.lock, at the locked version
    code, freeze = run_in(client, image, ["pip", "freeze", "--all"])
    assert code == 0, freeze
    locked = dict(_pin(line) for line in (REPO / "requirements.lock").read_text().splitlines() if "==" in line)
    installed = dict(_pin(line) for line in freeze.splitlines() if "==" in line)
    del installed["pip"]  # pgps itself shows as "pgps @ file:///opt/pgps"
    assert "pgps @ file:///opt/pgps" in freeze
    mismatched = {k: (v, locked.get(k)) for k, v in installed.items() if locked.get(k) != v}
    assert not mismatched, f"image packages not at their locked versions: {mismatched}"
    code, out = run_in(client, image, ["pip", "check"])
    assert code == 0, out


def _pin(line: str) -> tuple[str, str]:
    """``name==version`` of a freeze line or of a hashed lock line (``name==version \\``)."""
    name, _, version = line.strip().partition("==")
    return name.lower().replace("_", "-"), version.split()[0] if version.split() else version


def test_nnunet_finds_pgps_trainers_by_name(client: Any, image: str) -> None:
    # nnU-Net's own lookup (nnUNetv2_train/-predict -tr NAME) through nnUNet_extTrainer, as set in the image
    probe = (
        "import json;"
        "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find;"
        "from pgps.nnunet.base import PGPSTrainerBase;"
        f"found = {{n: find(n) for n in {list(TRAINERS)!r}}};"
        "print('RESULT ' + json.dumps({n: [c.__name__, issubclass(c, PGPSTrainerBase)] for n, c in found.items()}))"
    )
    code, out = run_in(client, image, ["python", "-c", probe])
    assert code == 0, out[-3000:]
    found = json.loads(out.split("RESULT ", 1)[1])
    assert found == {name: [name, True] for name in TRAINERS}
    for name in TRAINERS:
        assert f"Using trainer '{name}' from: /opt/venv/lib/python3.11/site-packages/pgps/trainers" in out
    # and nnU-Net's own CLI accepts the trainer name (argument parsing only, no dataset needed)
    code, out = run_in(client, image, ["nnUNetv2_train", "-h"])
    assert code == 0 and "-tr" in out


def test_image_user_labels_and_entrypoint(client: Any, image: str) -> None:
    attrs = client.images.get(image).attrs["Config"]
    assert attrs["User"] == "1000:1000"
    labels = attrs["Labels"]
    assert labels["org.opencontainers.image.version"] == pgps.__version__
    assert labels["org.opencontainers.image.revision"] == TIMINGS["revision"]  # the checkout it was built from
    assert labels["org.opencontainers.image.source"]
    code, out = run_in(client, image, ["bash", "-c", "id -u; id -g; test -w /workspace && echo ws-writable"])
    assert code == 0 and out.split()[:3] == ["1000", "1000", "ws-writable"], out
    code, out = run_in(client, image, [])  # default CMD: help
    assert code == 0 and "reproduce [--profile full]" in out and "nnUNetv2_*" in out, out
    # a pgps verb passes through: the real schedule for a planned 32x40x32 patch
    argv = ["schedule", "--patch-size", "32", "40", "32", "--poolings", "3", "3", "3", "--epochs", "8", "--json"]
    code, out = run_in(client, image, argv)
    assert code == 0, out
    host = pgps_cli(*argv)
    assert json.loads(out) == json.loads(host.stdout)
    assert json.loads(out)["stages"][-1]["patch_size"] == [32, 40, 32]
    code, out = run_in(client, image, ["no-such-command"])
    assert code == 2 and "no-such-command: not a pgps verb or a program in the image" in out
    # the verb check once raced (a pipe under pipefail): many runs of the first verb, in the image's environment
    loop = "for i in $(seq 25); do pgps-entrypoint schedule --help >/dev/null || exit 1; done; echo all-25-ok"
    code, out = run_in(client, image, ["bash", "-c", loop])
    assert code == 0 and "all-25-ok" in out, out
    # CPU defaults the entry point sets when there is no GPU device in the container
    code, out = run_in(client, image, ["bash", "-c", "echo $nnUNet_compile $nnUNet_n_proc_DA $nnUNet_def_n_proc"])
    assert code == 0 and out.split()[:2] == ["f", "0"] and int(out.split()[2]) >= 1, out


def test_git_workspace_and_a_path_with_colon_and_comma(
    daemon: str, client: Any, image: str, workspace_owner: tuple[int, int, Path]
) -> None:
    """A workspace that is a git repository gets DVC with git inside the image; the launcher mounts a workspace
    whose path holds ':' and ',' (a structured mount, not a SRC:DST string)."""
    uid, gid, ws = workspace_owner
    subprocess.run(["git", "init", "-q", str(ws)], check=True)
    subprocess.run(["chown", "-R", f"{uid}:{gid}", str(ws)], check=True)
    code, out = run_in(client, image, ["reproduce", "--help"], workspace=ws, user=f"{uid}:{gid}")
    assert code == 0, out
    assert (ws / ".dvc").is_dir() and "no_scm" not in (ws / ".dvc" / "config").read_text()
    code, out = run_in(client, image, ["update-pipeline"], workspace=ws, user=f"{uid}:{gid}")
    assert code == 0 and "the workspace's pipeline files are this image's" in out, out
    odd = ws.parent / "runs:2024,cpu"
    odd.mkdir()
    os.chown(odd, uid, gid)
    user = ["--user", f"{uid}:{gid}"] if os.getuid() == 0 else []
    proc = pgps_cli("docker", "run", "--image", image, "--workspace", str(odd), "--network", "none", "--gpus", "none",
                    *user, "--docker-host", daemon, "--", "bash", "-c", "touch /workspace/made-here")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (odd / "made-here").stat().st_uid == uid


@pytest.fixture()
def workspace_owner() -> Iterator[tuple[int, int, Path]]:
    """uid:gid the container runs as, and a workspace they own. As a normal user: the caller (the launcher's
    default). As root (CI), "outputs are not root-owned" would prove nothing with the default, so the container
    runs as 4321:4321, a uid with no passwd entry in the image, like most users' uids."""
    parent = Path(tempfile.mkdtemp(prefix="pgps-ws-", dir="/tmp"))
    ws = parent / "workspace"
    ws.mkdir()
    uid, gid = (4321, 4321) if os.getuid() == 0 else (os.getuid(), os.getgid())
    os.chown(ws, uid, gid)
    yield uid, gid, ws
    shutil.rmtree(parent)


def test_reproduce_in_container_without_network(
    daemon: str,
    client: Any,
    image: str,
    workspace_owner: tuple[int, int, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """`reproduce` on a copy of the shared smoke run (a git repository, the pipeline committed) whose PGPS training
    was removed: the container trains it, evaluates it and reports; every other stage (the data stages and the
    other runs, done on the host with the same code) is not run again."""
    uid, gid, ws = workspace_owner
    ws.rmdir()
    run = finished_smoke_run(tmp_path_factory)
    copy_run(run["ws"], ws, with_code=False)  # the image links its own src/
    train = remove_training(ws)
    evaluate = train.replace("train@", "evaluate@")
    git = ["git", "-C", str(ws), "-c", "user.name=ci", "-c", "user.email=ci@example.org"]
    subprocess.run([*git, "add", "dvc.yaml", "dvc.lock", "params.yaml", ".dvc", ".dvcignore"], check=True)
    subprocess.run([*git, "rm", "-q", "--cached", "results/metrics.json"], check=True)  # the repository's default one
    subprocess.run([*git, "commit", "-q", "-m", "smoke run, one training removed"], check=True)
    subprocess.run(["chown", "-R", f"{uid}:{gid}", str(ws)], check=True)
    user = ["--user", f"{uid}:{gid}"] if os.getuid() == 0 else []
    start = time.monotonic()
    proc = pgps_cli(
        "docker", "reproduce", "--image", image, "--workspace", str(ws), "--network", "none", "--shm-size", "2g",
        "--gpus", "none", *user, "--docker-host", daemon, timeout=1500,
    )  # fmt: skip
    TIMINGS["reproduce_in_container_s"] = round(time.monotonic() - start, 1)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert f"user {uid}:{gid}" in proc.stdout  # the launcher's own summary line
    # done on the host, the same code in the image: DVC skips them. With one thread per stage on 2 cores
    # `pgps reproduce` runs stages side by side and lists exactly those DVC would run ("+ N stages ..."); with one
    # stage at a time it runs `dvc repro`, which says which it skips.
    side_by_side = re.search(r"^\+ (\d+) stages of dvc\.yaml", proc.stdout, re.MULTILINE)
    lock = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    assert {train, evaluate, "report"} < set(lock)
    for stage in set(lock) - {train, evaluate, "report"}:
        assert f"Running stage '{stage}'" not in proc.stdout, stage
        if side_by_side:
            assert not re.search(rf"^\[\d+/\d+\] {re.escape(describe(stage))} \|", proc.stdout, re.MULTILINE), stage
        else:
            assert f"Stage '{stage}' didn't change, skipping" in proc.stdout, proc.stdout[-3000:]
    if side_by_side:  # the removed training, its evaluation and the report, nothing else
        assert int(side_by_side[1]) == 3, proc.stdout[-3000:]
    # the training came back, and the report has its numbers
    assert (ws / "data" / "nnUNet_results" / SMOKE_TASK / "pgps" / "fold_0").is_dir()
    metrics = json.loads((ws / "results" / "metrics.json").read_text())
    report = (ws / "results" / "report.md").read_text()
    assert metrics[SMOKE_TASK]["pgps"]["dice_folds"] and "Dice" in report
    assert "Dice" in proc.stdout  # the table streamed back through the launcher
    # DVC with git in the image: the new metrics against the commit made before the run
    code, out = run_in(client, image, ["bash", "-c", "dvc metrics diff --json 2>/dev/null"], workspace=ws,
                       user=f"{uid}:{gid}")  # fmt: skip
    assert code == 0, out
    diff = json.loads(out.strip().splitlines()[-1])["results/metrics.json"]
    assert diff and all(change["old"] is None for change in diff.values())
    # outputs belong to the uid:gid the container ran as, not to root: every file it wrote
    owners = {(p.lstat().st_uid, p.lstat().st_gid) for p in ws.rglob("*")}
    assert owners == {(uid, gid)}, owners
    assert client.containers.list(all=True) == []  # the launcher removed its container


def test_source_change_reuses_the_dependency_layer(daemon: str, client: Any, image: str, tmp_path: Path) -> None:
    """Layer order pays off: a code change reuses the cached dependency layer (no torch reinstall)."""
    ctx = tmp_path / "ctx"
    files = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, ctx / rel)
    # a clone whose remote URL carries a token: it must reach neither the label nor the printed command
    subprocess.run(["git", "init", "-q", str(ctx)], check=True)
    token = "glpat-CiT0kenN0tForImages"
    subprocess.run(["git", "-C", str(ctx), "remote", "add", "origin", f"https://ci:{token}@git.example.org/lab/pgps.git"],
                   check=True)  # fmt: skip
    init = ctx / "src" / "pgps" / "__init__.py"
    marker = f"# touched by test_source_change_reuses_the_dependency_layer {time.time_ns()}"  # unique: never cached
    init.write_text(init.read_text() + f"\n{marker}\n")
    start = time.monotonic()
    proc = pgps_cli(
        "docker", "build", "--tag", "pgps:ci-edit", "--base-image", BASE_IMAGE, "--context", str(ctx),
        "--docker-host", daemon, "--no-pip-cache", timeout=900,  # as the first build: same ARG, same cache key
    )  # fmt: skip
    TIMINGS["rebuild_after_code_change_s"] = round(time.monotonic() - start, 1)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    # BuildKit's plain progress: "#10 [stage-2 2/6] RUN ... pip install ... requirements.lock ..." then "#8 CACHED"
    steps = {line.split()[0]: line for line in out.splitlines() if re.match(r"#\d+ \[", line)}
    deps = [step for step, line in steps.items() if "pip install" in line and "requirements.lock" in line]
    source = [step for step, line in steps.items() if "COPY . /opt/pgps/" in line]
    assert len(deps) == 1 and len(source) == 1, out[-4000:]
    cached = {line.split()[0] for line in out.splitlines() if line.endswith(" CACHED")}
    assert deps[0] in cached, "dependency layer was rebuilt after a source-only change"
    assert source[0] not in cached, "the source layer should have been rebuilt"
    code, out = run_in(
        client, "pgps:ci-edit", ["bash", "-c", "tail -n 1 /opt/venv/lib/python3.11/site-packages/pgps/__init__.py"]
    )
    assert marker in out
    labels = client.images.get("pgps:ci-edit").attrs["Config"]["Labels"]
    assert labels["org.opencontainers.image.source"] == "https://git.example.org/lab/pgps.git"
    history = json.dumps(client.api.history("pgps:ci-edit"))
    assert token not in out + proc.stdout + proc.stderr + json.dumps(labels) + history
    client.images.remove("pgps:ci-edit")
