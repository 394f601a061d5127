"""`pgps docker build|reproduce|run`: build the CUDA image and run it through the docker SDK.

Building goes through the docker CLI with BuildKit (``DOCKER_BUILDKIT=1 docker build``): the Dockerfile uses
``RUN --mount`` (pip cache, CA secret), which the SDK's ``images.build()`` cannot do. Running goes through the SDK:
GPUs are requested when the host has them, the workspace is mounted at /workspace, the container runs as the
caller's uid:gid (outputs are not root-owned), its logs stream to stdout, and its exit code is returned.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from pgps.errors import PGPSError

DEFAULT_IMAGE = "pgps:latest"
CONTAINER_WORKSPACE = "/workspace"
# Debian's docker.io client (20.10) builds with BuildKit on its own; newer static clients need the buildx plugin.
PREFERRED_CLI = Path("/usr/bin/docker")
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    build = sub.add_parser("build", help="build the image with the docker CLI (BuildKit)")
    build.add_argument("--tag", default=DEFAULT_IMAGE, help=f"image tag (default {DEFAULT_IMAGE})")
    build.add_argument("--base-image", default=None, help="Debian bookworm base (default debian:bookworm-slim)")
    build.add_argument("--context", type=Path, default=None, help="context with the Dockerfile (default: repo root)")
    build.add_argument(
        "--ca-cert",
        default="auto",
        help="CA bundle handed to pip as the pip_ca build secret "
        "(auto: $PIP_CERT, $SSL_CERT_FILE or the system bundle; none: no secret)",
    )
    build.add_argument("--network", default="host", help="network of RUN steps (default host)")
    build.add_argument("--no-cache", action="store_true", help="ignore the layer cache")
    build.add_argument(
        "--no-pip-cache",
        action="store_true",
        help="keep no pip cache in the builder (~3 GB less disk; a later lock change downloads everything again)",
    )
    build.add_argument("--docker", default=None, help=f"docker CLI (default {PREFERRED_CLI} if present, else PATH)")
    _add_daemon_argument(build)

    for name, help_text in (
        ("reproduce", "run `reproduce` (the DVC pipeline) in the image on a workspace directory"),
        ("run", "run any entry point command in the image (a pgps verb, nnUNetv2_*, ...)"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--image", default=DEFAULT_IMAGE, help=f"image (default {DEFAULT_IMAGE})")
        p.add_argument("--workspace", type=Path, default=Path("."), help="host dir mounted at /workspace (default .)")
        if name == "reproduce":
            p.add_argument("--profile", default=None, help="pipeline profile (e.g. full = the paper's grid on GPU)")
        p.add_argument(
            "--gpus",
            choices=("auto", "all", "none"),
            default="auto",
            help="request GPUs: auto = all of them when nvidia-smi lists any (default)",
        )
        p.add_argument("--shm-size", default="8g", help="/dev/shm size for data-loader workers (default 8g)")
        p.add_argument("--network", default=None, help="container network (e.g. none; default: the daemon's)")
        p.add_argument("--user", default=None, help="UID:GID inside the container (default: the caller's)")
        p.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment")
        p.add_argument("--keep", action="store_true", help="keep the container after it exits (default: remove)")
        _add_daemon_argument(p)
        p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed on (after --)")


def _add_daemon_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--docker-host", default=None, help="daemon URL (default: $DOCKER_HOST or the system socket)")


def main(args: argparse.Namespace) -> int:
    if args.action == "build":
        return build_image(args)
    command = ["reproduce"] if args.action == "reproduce" else []
    if getattr(args, "profile", None):
        command += ["--profile", args.profile]
    extra = list(args.args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    command += extra
    if not command:
        raise PGPSError("pgps docker run: no command given (e.g. `pgps docker run -- schedule --help`)")
    return run_container(args, command)


# ---------------------------------------------------------------------------------------------------- daemon


def daemon_url(docker_host: str | None) -> str:
    return docker_host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def connect(docker_host: str | None) -> Any:
    """A docker SDK client that has answered a ping, or one clear error naming the daemon address."""
    import docker

    url = daemon_url(docker_host)
    try:
        client = docker.DockerClient(base_url=url, timeout=60)
        client.ping()
    except sdk_errors() as exc:
        reason = _short_reason(exc)
        raise PGPSError(
            f"{url}: Docker daemon unreachable ({reason}); start dockerd or point --docker-host/DOCKER_HOST at it"
        ) from None
    return client


def _short_reason(exc: BaseException) -> str:
    """The innermost cause in one line (the SDK wraps urllib3/requests errors several levels deep)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = " ".join(str(exc).split())
    if isinstance(exc, FileNotFoundError) or "No such file or directory" in text:
        return "no socket there"
    if isinstance(exc, PermissionError) or "Permission denied" in text:
        return "permission denied on the socket"
    if isinstance(exc, ConnectionRefusedError) or "Connection refused" in text:
        return "connection refused"
    return text[:200] or type(exc).__name__


# ----------------------------------------------------------------------------------------------------- build


def build_image(args: argparse.Namespace) -> int:
    """`DOCKER_BUILDKIT=1 docker build` with version/revision/source labels and the optional pip_ca secret."""
    context = (args.context or _default_context()).resolve()
    cli = _docker_cli(args.docker)
    cmd = build_command(args, context, cli)
    connect(args.docker_host)  # a readable error now, instead of the CLI's after it has sent the context
    env = dict(os.environ, DOCKER_BUILDKIT="1")
    if args.docker_host:
        env["DOCKER_HOST"] = args.docker_host
    print("+ DOCKER_BUILDKIT=1 " + shlex.join(cmd), flush=True)
    start = time.monotonic()
    code = subprocess.call(cmd, env=env)
    outcome = "built" if code == 0 else f"FAILED (exit {code})"
    print(f"pgps docker build: {args.tag} {outcome} in {time.monotonic() - start:.0f} s", flush=True)
    return code


def build_command(args: argparse.Namespace, context: Path, cli: str) -> list[str]:
    """The docker CLI's argv. The git remote goes in as SOURCE (the OCI source label) without credentials:
    build arguments and labels travel with every pushed image."""
    dockerfile = context / "Dockerfile"
    if not dockerfile.is_file():
        raise PGPSError(f"{dockerfile}: no Dockerfile there (pass --context the repository root)")
    from pgps import __version__

    cmd = [cli, "build", "--network", args.network, "--tag", args.tag, "--file", str(dockerfile)]
    revision = _git(context, "describe", "--always", "--dirty", "--abbrev=40") or "unknown"
    cmd += ["--build-arg", f"VERSION={__version__}", "--build-arg", f"REVISION={revision}"]
    source = public_source_url(_git(context, "remote", "get-url", "origin"))
    if source:
        cmd += ["--build-arg", f"SOURCE={source}"]
    if args.base_image:
        cmd += ["--build-arg", f"BASE_IMAGE={args.base_image}"]
    ca = _ca_bundle(args.ca_cert)
    if ca is not None:
        cmd += ["--secret", f"id=pip_ca,src={ca}"]
    if args.no_cache:
        cmd.append("--no-cache")
    if args.no_pip_cache:  # the Dockerfile's ARG PIP_NO_CACHE_DIR, which pip reads from the environment
        cmd += ["--build-arg", "PIP_NO_CACHE_DIR=1"]
    cmd.append(str(context))
    return cmd


_SSH_SCHEMES = ("ssh", "git+ssh", "ssh+git")
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")
_SCP_LIKE = re.compile(r"(?:[^@/:]+@)?(?P<host>[^@/:]+):(?P<path>(?!//).+)")


def public_source_url(remote: str | None) -> str | None:
    """``remote`` with every credential removed, or None when it cannot be made safe.

    Credentials hide in the user-info part (``https://user:token@host``, ``https://token@host``), in the
    query (``?private_token=…``) and the fragment; ssh remotes keep only host and path (``ssh://host/path``).
    A local path has none and is kept. Anything with whitespace or control characters is refused."""
    if not remote or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in remote):
        return None
    if "://" not in remote:
        scp = _SCP_LIKE.fullmatch(remote)
        if scp and "/" not in remote.split(":", 1)[0]:  # [user@]host:path, git's scp-like ssh syntax
            host, path = scp.group("host"), scp.group("path")
            return f"ssh://{host}/{path.lstrip('/')}" if _HOST.fullmatch(host) else None
        return remote if "@" not in remote and "?" not in remote else None  # a local path
    try:
        parts = urllib.parse.urlsplit(remote)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme == "file":
        return urllib.parse.urlunsplit(("file", "", parts.path, "", ""))
    host = parts.netloc.rpartition("@")[2].rpartition(":")[0] if port else parts.netloc.rpartition("@")[2]
    if not scheme or not _HOST.fullmatch(host):
        return None
    if scheme in _SSH_SCHEMES:
        return urllib.parse.urlunsplit(("ssh", host, parts.path, "", ""))
    netloc = f"{host}:{port}" if port else host
    return urllib.parse.urlunsplit((scheme, netloc, parts.path, "", ""))


def _default_context() -> Path:
    """The repository this package was installed from (editable install), else the current directory."""
    repo = Path(__file__).resolve().parents[2]
    return repo if (repo / "Dockerfile").is_file() else Path.cwd()


def _docker_cli(explicit: str | None) -> str:
    if explicit:
        found = shutil.which(explicit)
        if not found:
            raise PGPSError(f"{explicit}: docker CLI not found or not executable")
        return found
    if os.access(PREFERRED_CLI, os.X_OK):
        return str(PREFERRED_CLI)
    found = shutil.which("docker")
    if not found:
        raise PGPSError("docker: CLI not found on PATH (install docker.io, or pass --docker)")
    return found


def _git(repo: Path, *argv: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), *argv], capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _ca_bundle(choice: str) -> Path | None:
    if choice == "none":
        return None
    if choice != "auto":
        path = Path(choice)
        if not path.is_file():
            raise PGPSError(f"{path}: --ca-cert is not a readable file")
        return path.resolve()
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"), str(SYSTEM_CA_BUNDLE)):
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    return None


# ------------------------------------------------------------------------------------------------------- run


def parse_user(user: str | None) -> tuple[int, int]:
    if user is None:
        return os.getuid(), os.getgid()
    try:
        uid_text, _, gid_text = user.partition(":")
        uid = int(uid_text)
        return uid, int(gid_text) if gid_text else uid
    except ValueError:
        raise PGPSError(f"--user {user}: expected numeric UID:GID") from None


def prepare_workspace(workspace: Path, uid: int, gid: int) -> Path:
    """Create the workspace if needed and check that uid:gid can write into it (the container's view)."""
    workspace = workspace.expanduser().resolve()
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in str(workspace)):
        raise PGPSError(f"{str(workspace)!r}: workspace path contains control characters (a newline?)")
    if workspace.exists() and not workspace.is_dir():
        raise PGPSError(f"{workspace}: workspace is not a directory")
    try:
        workspace.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PGPSError(f"{workspace}: cannot create the workspace ({exc.strerror})") from None
    if not writable_by(workspace, uid, gid):
        raise PGPSError(
            f"{workspace}: workspace not writable by uid:gid {uid}:{gid}, which the container runs as "
            "(chown/chmod it, or pass --user)"
        )
    return workspace


def writable_by(path: Path, uid: int, gid: int) -> bool:
    """Whether uid:gid may create files in ``path`` by its mode bits (what the container process will see)."""
    if uid == os.getuid() and gid == os.getgid():
        return os.access(path, os.W_OK | os.X_OK)
    if uid == 0:
        return True
    st = path.stat()
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IWUSR and st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IWGRP and st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IWOTH and st.st_mode & stat.S_IXOTH)


def gpu_device_requests(mode: str) -> list[Any]:
    """All GPUs when asked for, or (auto) when nvidia-smi is present and lists at least one."""
    import docker

    if mode == "none":
        return []
    if mode == "auto":
        smi = shutil.which("nvidia-smi")
        if smi is None:
            return []
        try:
            listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return []
        if listing.returncode != 0 or "GPU" not in listing.stdout:
            return []
    return [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]


def run_container(args: argparse.Namespace, command: list[str]) -> int:
    """Run ``command`` through the image's entry point; stream its logs; return its exit code.

    Any failure of the daemon or the connection to it (refusal, a dropped connection mid-run, a timeout) is
    one line naming the daemon, exit 2."""
    uid, gid = parse_user(args.user)
    workspace = prepare_workspace(args.workspace, uid, gid)
    environment = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PGPSError(f"--env {item}: expected KEY=VALUE")
        environment[key] = value
    client = connect(args.docker_host)
    try:
        return _run(client, args, command, workspace, uid, gid, environment)
    except sdk_errors() as exc:
        raise PGPSError(f"{daemon_url(args.docker_host)}: Docker daemon error ({one_line(exc)})") from None


def workspace_mount(workspace: Path) -> Any:
    """The workspace as a structured bind mount: the API takes the path as one JSON string, so ':' or ','
    in it (which the ``SRC:DST:MODE`` volume syntax would split on) are just characters."""
    import docker

    return docker.types.Mount(target=CONTAINER_WORKSPACE, source=str(workspace), type="bind", read_only=False)


def _run(
    client: Any,
    args: argparse.Namespace,
    command: list[str],
    workspace: Path,
    uid: int,
    gid: int,
    environment: dict[str, str],
) -> int:
    import docker

    try:
        client.images.get(args.image)
    except docker.errors.ImageNotFound:
        raise PGPSError(
            f"{args.image}: image not found on the Docker daemon at {daemon_url(args.docker_host)}; "
            f"build it with `pgps docker build --tag {args.image}`"
        ) from None
    device_requests = gpu_device_requests(args.gpus)
    options: dict[str, Any] = {
        "command": command,
        "user": f"{uid}:{gid}",
        "mounts": [workspace_mount(workspace)],
        "working_dir": CONTAINER_WORKSPACE,
        "shm_size": args.shm_size,
        "environment": environment,
        "device_requests": device_requests or None,
        "detach": True,
    }
    if args.network:
        options["network_mode"] = args.network
    gpus = "all GPUs" if device_requests else "no GPU"
    what = f"{gpus}, workspace {workspace}, user {uid}:{gid}"
    print(f"pgps docker: {args.image} {' '.join(command)}  [{what}]", flush=True)
    try:
        container = client.containers.run(args.image, **options)
    except docker.errors.APIError as exc:
        hint = " (no NVIDIA container toolkit on this daemon? pass --gpus none)" if device_requests else ""
        raise PGPSError(f"{args.image}: the daemon refused to start the container: {one_line(exc)}{hint}") from None
    try:
        for chunk in container.logs(stream=True, follow=True):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
        code = int(container.wait().get("StatusCode", 1))
    except KeyboardInterrupt:
        container.stop(timeout=20)
        code = 130
    finally:
        if not args.keep:
            _remove_quietly(container)
    return code


def _remove_quietly(container: Any) -> None:
    """Remove the container; when the daemon is gone too, the error that brought us here is the one to show."""
    try:
        container.remove(force=True)
    except sdk_errors():
        pass


def sdk_errors() -> tuple[type[BaseException], ...]:
    """What the docker SDK and the HTTP stack under it raise when the daemon refuses or goes away."""
    import docker
    import requests
    import urllib3

    return (docker.errors.DockerException, requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError)


def one_line(exc: BaseException) -> str:
    """An SDK error as one short line: the daemon's explanation (often several lines) with its status code,
    else the innermost cause."""
    import docker

    if isinstance(exc, docker.errors.APIError):
        status = exc.status_code
        text = " ".join(str(exc.explanation or exc).split())
        return (f"HTTP {status}: " if status else "") + (text[:300] or type(exc).__name__)
    return _short_reason(exc)
