"""The launcher's user-facing errors and GPU request logic, and the Dockerfile's lint and layer order.

Fast tier (about 5 s, no daemon): these errors come before any container exists, so they are checked against a
socket path with no daemon behind it, a stale socket nobody listens on, and real directory permissions.
The errors that need a live daemon (missing image) are in test_docker_image.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pgps.docker_launcher import gpu_device_requests, writable_by

REPO = Path(__file__).resolve().parents[1]
PGPS = [sys.executable, "-m", "pgps.cli"]


def run_pgps(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PGPS, *argv], capture_output=True, text=True, timeout=120, env=env, cwd=REPO)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("action", ["reproduce", "build"])
def test_missing_socket_is_one_line_error(tmp_path: Path, action: str) -> None:
    sock = tmp_path / "no-daemon" / "docker.sock"
    extra = ["--workspace", str(tmp_path / "ws")] if action == "reproduce" else ["--ca-cert", "none"]
    proc = run_pgps("docker", action, "--docker-host", f"unix://{sock}", *extra)
    assert_one_line_error(proc, f"unix://{sock}", "Docker daemon unreachable", "no socket there")


def test_stale_socket_is_connection_refused(tmp_path: Path) -> None:
    # a socket file left behind by a daemon that died: it exists, but nobody accepts on it
    path = tmp_path / "docker.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
    assert path.exists()
    proc = run_pgps("docker", "reproduce", "--docker-host", f"unix://{path}", "--workspace", str(tmp_path / "ws"))
    assert_one_line_error(proc, str(path), "connection refused")


def test_docker_host_env_is_honoured(tmp_path: Path) -> None:
    sock = tmp_path / "env.sock"
    env = dict(os.environ, DOCKER_HOST=f"unix://{sock}")
    proc = run_pgps("docker", "run", "--workspace", str(tmp_path / "ws"), "--", "help", env=env)
    assert_one_line_error(proc, f"unix://{sock}", "unreachable")


def test_unwritable_workspace_is_refused_before_any_container(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    ws.chmod(0o555)
    # root may write anywhere, but the container runs as --user: check as an unprivileged uid in that case
    user = ["--user", "1000:1000"] if os.getuid() == 0 else []
    uid_gid = "1000:1000" if os.getuid() == 0 else f"{os.getuid()}:{os.getgid()}"
    proc = run_pgps("docker", "reproduce", "--workspace", str(ws), *user, "--docker-host", "unix:///nonexistent.sock")
    assert_one_line_error(proc, str(ws), f"not writable by uid:gid {uid_gid}")
    assert list(ws.iterdir()) == []


def test_workspace_that_is_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "results.txt"
    path.write_text("not a directory\n")
    proc = run_pgps("docker", "reproduce", "--workspace", str(path), "--docker-host", "unix:///nonexistent.sock")
    assert_one_line_error(proc, str(path), "not a directory")
    assert path.read_text() == "not a directory\n"


def test_bad_user_is_one_line_error(tmp_path: Path) -> None:
    proc = run_pgps("docker", "reproduce", "--workspace", str(tmp_path), "--user", "alice")
    assert_one_line_error(proc, "--user alice", "numeric UID:GID")


def test_missing_workspace_is_created_for_the_caller(tmp_path: Path) -> None:
    ws = tmp_path / "new" / "ws"
    proc = run_pgps("docker", "reproduce", "--workspace", str(ws), "--docker-host", "unix:///nonexistent.sock")
    assert_one_line_error(proc, "unreachable")  # got as far as the daemon: the workspace passed its checks
    assert ws.is_dir() and ws.stat().st_uid == os.getuid()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to chown a directory to another uid")
def test_writable_by_follows_mode_bits(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    os.chown(d, 5001, 5002)  # owner 5001, group 5002; 5003 is neither
    cases = {  # mode -> (owner, group member, other)
        0o700: (True, False, False),
        0o500: (False, False, False),
        0o770: (True, True, False),
        0o775: (True, True, False),
        0o777: (True, True, True),
        0o766: (True, False, False),  # w without x on the directory: no file can be created
    }
    for mode, expected in cases.items():
        d.chmod(mode)
        got = (writable_by(d, 5001, 5001), writable_by(d, 5003, 5002), writable_by(d, 5003, 5003))
        assert got == expected, oct(mode)
    assert writable_by(d, 0, 0)  # root in the container


def test_gpu_requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert gpu_device_requests("none") == []
    (req,) = gpu_device_requests("all")
    assert req["Count"] == -1 and req["Capabilities"] == [["gpu"]]
    # auto: nothing on PATH lists a GPU -> no request (this machine has no GPU and no nvidia-smi)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpu_device_requests("auto") == []
    # auto with an nvidia-smi that lists one GPU (a stand-in executable: no GPU exists here) -> all GPUs
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n")
    smi.chmod(0o755)
    (req,) = gpu_device_requests("auto")
    assert req["Count"] == -1
    # an nvidia-smi that fails (driver not loaded) -> no request
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    assert gpu_device_requests("auto") == []


def test_hadolint_has_no_errors() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    proc = subprocess.run(
        [str(hadolint), "--failure-threshold", "error", "Dockerfile"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_layers_deps_before_source() -> None:
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(path=str(REPO / "Dockerfile"))
    instructions = [(i["instruction"], i["value"]) for i in parser.structure if i["instruction"] != "COMMENT"]
    assert instructions[0] == ("ARG", "BASE_IMAGE=debian:bookworm-slim")
    assert ("FROM", "${BASE_IMAGE} AS system") in instructions
    index = {key: n for n, (inst, value) in enumerate(instructions) for key in _keys(inst, value)}
    # the ~6 GB dependency layer depends only on the lock and pyproject.toml; the source comes after it
    assert index["copy-lock"] < index["pip-deps"] < index["copy-source"] < index["pip-project"]
    # the per-commit REVISION build arg comes last: an ARG changes the cache key of every RUN after it
    assert index["pip-project"] < index["arg-revision"]
    deps_run = instructions[index["pip-deps"]][1]
    assert "--mount=type=cache,target=/root/.cache/pip" in deps_run
    assert "--mount=type=secret,id=pip_ca" in deps_run and "PIP_CERT=/run/secrets/pip_ca" in deps_run
    assert "-c /tmp/pgps-deps/requirements.lock" in deps_run
    user = [value for inst, value in instructions if inst == "USER"][-1]
    assert user.split(":")[0] not in ("0", "root")
    labels = parser.labels
    for key in ("source", "version", "revision"):
        assert f"org.opencontainers.image.{key}" in labels
    assert "tini" in [v for i, v in instructions if i == "ENTRYPOINT"][0]


def _keys(inst: str, value: str) -> list[str]:
    keys = []
    if inst == "COPY" and "requirements.lock" in value:
        keys.append("copy-lock")
    if inst == "ARG" and value.startswith("REVISION"):
        keys.append("arg-revision")
    if inst == "COPY" and value.split()[0] == ".":
        keys.append("copy-source")
    if inst == "RUN" and "requirements.lock" in value and "pip install" in value:
        keys.append("pip-deps")
    if inst == "RUN" and "--no-deps" in value and "/opt/pgps" in value:
        keys.append("pip-project")
    return keys


def test_dockerignore_keeps_data_and_venv_out() -> None:
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip()]
    rules = [ln for ln in lines if not ln.startswith("#")]
    assert rules[0] == "*", "allow-list: everything excluded first"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    assert {"src", "pyproject.toml", "requirements.lock", "docker", "dvc.yaml", "params.yaml"} <= allowed
    assert not allowed & {"data", ".venv", "results", ".git", ".dvc/cache"}
