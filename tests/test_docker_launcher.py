"""The launcher's user-facing errors and GPU request logic, the build's credential-free source label, and the
Dockerfile's lint and layer order.

Fast tier (about 10 s, no Docker daemon): errors before any container exists are checked against a socket path
with no daemon behind it, a stale socket nobody listens on, and real directory permissions; errors of a daemon
that refuses or goes away are checked against a real HTTP server on 127.0.0.1 that answers the few Docker API
calls the launcher makes (and drops or refuses the one a test picks). The errors that need a live Docker daemon
(missing image) are in test_docker_image.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgps.docker_launcher import build_command, gpu_device_requests, public_source_url, writable_by

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
    assert "--require-hashes -r /tmp/pgps-deps/requirements.lock" in deps_run  # exactly the lock, hash-checked
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


# ------------------------------------------------------------------------------------ credentials (issue 15.1)

SECRET = "ghp_S3cr3tT0ken"


@pytest.mark.parametrize(
    ("remote", "public"),
    [
        (f"https://user:{SECRET}@github.com/org/repo.git", "https://github.com/org/repo.git"),
        (f"https://{SECRET}@github.com/org/repo", "https://github.com/org/repo"),
        (f"https://x-access-token:{SECRET}@github.com/org/repo.git", "https://github.com/org/repo.git"),
        (f"https://oauth2:{SECRET}@gitlab.example.org:8443/g/r.git", "https://gitlab.example.org:8443/g/r.git"),
        (f"https://gitlab.example.org/g/r.git?private_token={SECRET}#x", "https://gitlab.example.org/g/r.git"),
        (f"https://:{SECRET}@[2001:db8::1]:99/r.git", "https://[2001:db8::1]:99/r.git"),
        (f"ssh://git:{SECRET}@github.com:2222/org/repo.git", "ssh://github.com/org/repo.git"),
        (f"git+ssh://{SECRET}@host.example/org/repo.git", "ssh://host.example/org/repo.git"),
        ("git@github.com:org/repo.git", "ssh://github.com/org/repo.git"),
        ("deploy@host.example:/srv/git/repo.git", "ssh://host.example/srv/git/repo.git"),
        ("https://github.com/org/repo.git", "https://github.com/org/repo.git"),
        ("/srv/git/repo.git", "/srv/git/repo.git"),
        ("file:///srv/git/repo.git", "file:///srv/git/repo.git"),
        (f"https://u:{SECRET}@host/x\n#SBATCH", None),  # control characters: refused, not cleaned up
        ("", None),
    ],
)
def test_source_url_loses_every_credential(remote: str, public: str | None) -> None:
    assert public_source_url(remote) == public
    assert SECRET not in (public_source_url(remote) or "")


def _build_args(**overrides: Any) -> argparse.Namespace:
    values = {"tag": "pgps:t", "network": "host", "base_image": None, "ca_cert": "none", "no_cache": False}
    return argparse.Namespace(**(values | {"no_pip_cache": False} | overrides))


def test_no_pip_cache_is_the_build_arg_the_dockerfile_declares(tmp_path: Path) -> None:
    """--no-pip-cache reaches pip as PIP_NO_CACHE_DIR only through an ARG of that name in the lock's stage (the real
    build's empty cache mount is checked by the Docker stage)."""
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    assert "PIP_NO_CACHE_DIR=1" not in build_command(_build_args(), tmp_path, "docker")
    cmd = build_command(_build_args(no_pip_cache=True), tmp_path, "docker")
    assert cmd[cmd.index("PIP_NO_CACHE_DIR=1") - 1] == "--build-arg"
    dockerfile = (REPO / "Dockerfile").read_text()
    lock_stage = dockerfile[dockerfile.rindex("\nFROM ") : dockerfile.index("--require-hashes")]  # FROM .. pip install
    assert "\nARG PIP_NO_CACHE_DIR\n" in lock_stage


def test_build_command_has_no_credentials_from_the_remote(tmp_path: Path) -> None:
    """A checkout cloned with a token in its URL: the token reaches neither the build arguments (and so the
    image's labels and history) nor the printed command."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\n")
    subprocess.run(["git", "init", "-q", str(ctx)], check=True)
    remote = f"https://builder:{SECRET}@git.example.org/lab/pgps.git"
    subprocess.run(["git", "-C", str(ctx), "remote", "add", "origin", remote], check=True)
    cmd = build_command(_build_args(), ctx, "/usr/bin/docker")
    assert "SOURCE=https://git.example.org/lab/pgps.git" in cmd
    assert not [arg for arg in cmd if SECRET in arg or "builder" in arg]
    # the command as the user sees it, through the CLI (no daemon: it stops there, after printing nothing secret)
    proc = run_pgps("docker", "build", "--context", str(ctx), "--ca-cert", "none", "--docker-host",
                    f"unix://{tmp_path}/none.sock", "--docker", sys.executable)  # fmt: skip
    assert proc.returncode == 2 and SECRET not in proc.stdout + proc.stderr
    # an origin that cannot be made safe leaves the label at its default instead
    subprocess.run(["git", "-C", str(ctx), "remote", "set-url", "origin", "https://u:p@bad host/x"], check=True)
    assert not [arg for arg in build_command(_build_args(), ctx, "docker") if arg.startswith("SOURCE=")]


# ------------------------------------------------------------- a daemon that refuses or goes away (issue 15.4)

API = "/v1.41"


class FakeDaemon(ThreadingHTTPServer):
    """The Docker API calls `pgps docker run` makes, answered for real over HTTP; ``faults`` maps a
    (method, path regex) to ("drop",) = close the connection unanswered, or (status, message)."""

    daemon_threads = True

    def __init__(self, faults: dict[tuple[str, str], tuple[Any, ...]]) -> None:
        super().__init__(("127.0.0.1", 0), _DaemonHandler)
        self.faults = faults
        self.requests: list[tuple[str, str, Any]] = []

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.server_address[1]}"


class _DaemonHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeDaemon

    def log_message(self, *args: Any) -> None:  # keep pytest's output clean
        pass

    def _reply(self, status: int, body: bytes = b"", ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        self.server.requests.append((method, path, json.loads(raw) if raw else None))
        for (m, pattern), action in self.server.faults.items():
            if m == method and re.fullmatch(pattern, path):
                if action[0] == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                return self._reply(action[0], json.dumps({"message": action[1]}).encode())
        if path == "/version":
            return self._reply(200, json.dumps({"ApiVersion": API[2:], "Version": "20.10.24"}).encode())
        if path == f"{API}/_ping":
            return self._reply(200, b"OK", "text/plain")
        if re.fullmatch(f"{API}/images/.+/json", path):
            return self._reply(200, json.dumps({"Id": "sha256:" + "a" * 64, "RepoTags": ["pgps:latest"]}).encode())
        if path == f"{API}/containers/create":
            return self._reply(201, json.dumps({"Id": "c0ffee", "Warnings": []}).encode())
        if path == f"{API}/containers/c0ffee/json":
            return self._reply(200, json.dumps({"Id": "c0ffee", "Config": {"Tty": False}}).encode())
        if path == f"{API}/containers/c0ffee/logs":
            text = b"hello from the container\n"
            return self._reply(200, struct.pack(">BxxxL", 1, len(text)) + text, "application/vnd.docker.raw-stream")
        if path == f"{API}/containers/c0ffee/wait":
            return self._reply(200, json.dumps({"StatusCode": 0}).encode())
        if path in (f"{API}/containers/c0ffee/start", f"{API}/containers/c0ffee"):
            return self._reply(204)
        self._reply(404, json.dumps({"message": f"no such endpoint {path}"}).encode())

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


@pytest.fixture()
def fake_daemon(request: pytest.FixtureRequest) -> Iterator[FakeDaemon]:
    server = FakeDaemon(getattr(request, "param", {}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def run_via(daemon: FakeDaemon, workspace: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return run_pgps("docker", "run", "--workspace", str(workspace), "--gpus", "none", "--docker-host", daemon.url,
                    "--", *command)  # fmt: skip


MULTILINE = "OCI runtime create failed:\ncontainer_linux.go:380: starting container process caused:\n\texec: nope"


@pytest.mark.parametrize(
    ("fake_daemon", "needles"),
    [
        ({("POST", f"{API}/containers/create"): (500, MULTILINE)},
         ["refused to start the container", "HTTP 500", "OCI runtime create failed: container_linux.go:380"]),
        ({("POST", f"{API}/containers/create"): ("drop",)}, ["Docker daemon error", "tcp://127.0.0.1:"]),
        ({("GET", f"{API}/images/.+/json"): (500, "layer store\\nbroken")}, ["Docker daemon error", "HTTP 500"]),
        ({("POST", f"{API}/containers/c0ffee/wait"): ("drop",)}, ["Docker daemon error", "tcp://127.0.0.1:"]),
        ({("POST", f"{API}/containers/c0ffee/wait"): ("drop",), ("DELETE", f"{API}/containers/c0ffee"): ("drop",)},
         ["Docker daemon error"]),
    ],
    indirect=["fake_daemon"],
    ids=["create-refused-multiline", "create-connection-dropped", "image-inspect-500", "daemon-gone-mid-run",
         "daemon-gone-and-remove-fails"],
)  # fmt: skip
def test_daemon_errors_are_one_line_exit_2(fake_daemon: FakeDaemon, needles: list[str], tmp_path: Path) -> None:
    proc = run_via(fake_daemon, tmp_path / "ws", "help")
    line = assert_one_line_error(proc, *needles)
    assert line.startswith("pgps docker: error: ")


def test_workspace_is_a_structured_mount_even_with_colon_and_comma(fake_daemon: FakeDaemon, tmp_path: Path) -> None:
    ws = tmp_path / "runs:2024,cpu" / "ws"
    proc = run_via(fake_daemon, ws, "schedule", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "hello from the container" in proc.stdout  # the log stream came through
    ((_m, _p, body),) = [r for r in fake_daemon.requests if r[1] == f"{API}/containers/create"]
    host = body["HostConfig"]
    assert host["Mounts"] == [{"Target": "/workspace", "Source": str(ws), "Type": "bind", "ReadOnly": False}]
    assert not host.get("Binds")  # no "SRC:DST:MODE" string for the daemon to split at the ':'
    assert body["Cmd"] == ["schedule", "--help"] and body["User"] == f"{os.getuid()}:{os.getgid()}"
    assert ("DELETE", f"{API}/containers/c0ffee", None) in fake_daemon.requests  # removed afterwards


def test_workspace_with_a_newline_is_refused(tmp_path: Path) -> None:
    proc = run_pgps("docker", "run", "--workspace", str(tmp_path / "a\nb"), "--docker-host", "unix:///none.sock",
                    "--", "help")  # fmt: skip
    assert_one_line_error(proc, "control characters")
    assert not (tmp_path / "a\nb").exists()


# -------------------------------------------- the image's entry point, run here as a plain script (issue 15.2, 16.5)

ENTRYPOINT = REPO / "docker" / "entrypoint.sh"


def entrypoint(*argv: str, workspace: Path | None = None, src: Path = REPO) -> subprocess.CompletedProcess[str]:
    """docker/entrypoint.sh with this venv's python/pgps/dvc, as the image runs it (PYTHONUNBUFFERED=1 is in the
    image's environment: every print is its own write, which is what made the old verb check race)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", PYTHONUNBUFFERED="1")
    env["PGPS_PIPELINE_SRC"] = str(src)
    if workspace is not None:
        env["PGPS_WORKSPACE"] = str(workspace)
    return subprocess.run(["bash", str(ENTRYPOINT), *argv], capture_output=True, text=True, timeout=300, env=env)


def test_entrypoint_verb_check_is_not_a_race() -> None:
    """`schedule` is the first verb the old `pgps_verbs | grep -qxF` check listed: grep exits at the first line
    and python's next write dies of SIGPIPE, failing the pipeline (1 run in 5-15 here). 64 runs, 4 at a time."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda _: entrypoint("schedule", "--help"), range(64)))
    failed = [r.stderr.strip() for r in runs if r.returncode != 0 or "usage: pgps schedule" not in r.stdout]
    assert not failed, f"{len(failed)} of 64 runs of a valid verb failed: {failed[0]}"
    unknown = entrypoint("no-such-command")
    assert unknown.returncode == 2
    assert (
        unknown.stderr.strip()
        == "pgps-entrypoint: error: no-such-command: not a pgps verb or a program in the image (try: help)"
    )
    assert entrypoint("true").returncode == 0  # a program in the image runs as is


def _dvc(ws: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    dvc = Path(sys.executable).with_name("dvc")
    return subprocess.run([str(dvc), *argv], cwd=ws, capture_output=True, text=True, timeout=120)


def test_entrypoint_git_workspace_gets_dvc_with_git(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    subprocess.run(["git", "init", "-q", str(ws)], check=True)
    proc = entrypoint("reproduce", "--help", workspace=ws)
    assert proc.returncode == 0, proc.stderr
    assert "no_scm" not in (ws / ".dvc" / "config").read_text()
    git = ["git", "-C", str(ws), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    (ws / "results").mkdir()
    (ws / "results" / "metrics.json").write_text('{"dice": 0.5}\n')
    subprocess.run([*git, "add", "-f", "dvc.yaml", "params.yaml", ".dvc", ".dvcignore", "results"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "pipeline"], check=True)
    text = (ws / "params.yaml").read_text()
    epochs = yaml.safe_load(text)["budget"]["epochs"]
    (ws / "params.yaml").write_text(text.replace(f"  epochs: {epochs}", f"  epochs: {epochs + 3}", 1))
    (ws / "results" / "metrics.json").write_text('{"dice": 0.75}\n')
    diff = _dvc(ws, "params", "diff")
    assert diff.returncode == 0 and re.search(rf"budget\.epochs\s+{epochs}\s+{epochs + 3}", diff.stdout), (
        diff.stdout + diff.stderr
    )
    metrics = _dvc(ws, "metrics", "diff", "--json")
    assert metrics.returncode == 0, metrics.stderr
    assert json.loads(metrics.stdout)["results/metrics.json"]["dice"] == {"old": 0.5, "new": 0.75, "diff": 0.25}
    exps = _dvc(ws, "exp", "show", "--json")
    assert exps.returncode == 0, exps.stderr
    # a workspace without git keeps working as before: DVC without SCM
    plain = tmp_path / "plain"
    plain.mkdir()
    assert entrypoint("reproduce", "--help", workspace=plain).returncode == 0
    assert "no_scm = True" in (plain / ".dvc" / "config").read_text()


def _image_dir(root: Path) -> Path:
    """What an image ships in /opt/pgps: the pipeline files (copies, so a test can 'upgrade' them), the code."""
    root.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        (root / name).write_bytes((REPO / name).read_bytes())
    (root / "profiles").mkdir()
    (root / "profiles" / "full.yaml").write_bytes((REPO / "profiles" / "full.yaml").read_bytes())
    (root / "docker").symlink_to(REPO / "docker")
    (root / "src").symlink_to(REPO / "src")
    return root


def test_image_upgrade_says_what_is_newer_and_never_overwrites(tmp_path: Path) -> None:
    image, ws = _image_dir(tmp_path / "image"), tmp_path / "ws"
    ws.mkdir()
    first = entrypoint("reproduce", "--help", workspace=ws, src=image)
    assert first.returncode == 0 and "notice" not in first.stderr, first.stderr
    copied = {name: (ws / name).read_bytes() for name in ("dvc.yaml", "params.yaml", "profiles/full.yaml")}
    assert copied["dvc.yaml"] == (image / "dvc.yaml").read_bytes()
    # a newer image: another dvc.yaml and a new profile; the user edited params.yaml, and so did the image
    (image / "dvc.yaml").write_text((image / "dvc.yaml").read_text() + "# a stage changed in the new image\n")
    (image / "profiles" / "smoke.yaml").write_text("profile: smoke\n")
    (image / "params.yaml").write_text((image / "params.yaml").read_text() + "# new image\n")
    epochs = yaml.safe_load(copied["params.yaml"])["budget"]["epochs"]
    (ws / "params.yaml").write_text(copied["params.yaml"].decode().replace(f"  epochs: {epochs}", "  epochs: 99", 1))
    mine = (ws / "params.yaml").read_bytes()
    second = entrypoint("reproduce", "--help", workspace=ws, src=image)
    assert second.returncode == 0, second.stderr
    notices = [ln for ln in second.stderr.splitlines() if "notice" in ln]
    assert len(notices) == 1, second.stderr
    assert "ships newer dvc.yaml than the workspace's" in notices[0] and "update-pipeline" in notices[0]
    assert "params.yaml differ from this image's and were edited" in notices[0]
    assert (ws / "dvc.yaml").read_bytes() == copied["dvc.yaml"] and (ws / "params.yaml").read_bytes() == mine
    assert (ws / "profiles" / "smoke.yaml").read_text() == "profile: smoke\n"  # new file: nothing to overwrite
    # the command the notice names: --diff changes nothing, plain update leaves the edited file, --force takes it
    diff = entrypoint("update-pipeline", "--diff", workspace=ws, src=image)
    assert "+# a stage changed in the new image" in diff.stdout and "-  epochs: 9" in diff.stdout
    assert (ws / "dvc.yaml").read_bytes() == copied["dvc.yaml"]
    upd = entrypoint("update-pipeline", workspace=ws, src=image)
    assert upd.returncode == 0, upd.stderr
    assert (ws / "dvc.yaml").read_bytes() == (image / "dvc.yaml").read_bytes()
    assert (ws / "dvc.yaml.orig").read_bytes() == copied["dvc.yaml"]
    assert (ws / "params.yaml").read_bytes() == mine and "kept (edited" in upd.stdout
    forced = entrypoint("update-pipeline", "--force", workspace=ws, src=image)
    assert forced.returncode == 0, forced.stderr
    assert (ws / "params.yaml").read_bytes() == (image / "params.yaml").read_bytes()
    assert (ws / "params.yaml.orig").read_bytes() == mine
    third = entrypoint("reproduce", "--help", workspace=ws, src=image)
    assert third.returncode == 0 and "notice" not in third.stderr, third.stderr
