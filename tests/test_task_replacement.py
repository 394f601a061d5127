"""Replacing a task folder (`pgps make-task` over an existing task, `pgps acquire --force`) is atomic: a process
SIGKILLed at ANY file-system step leaves the old generation or the new one, never a mix and never no folder, and
the next run leaves nothing else behind.

How the kills are placed: a helper process imports everything once, then forks one child per run. The child
installs an audit hook that counts the file-system events of the run (files opened under the data folder,
mkdir, rename, exchange, chmod, unlink, rmdir, rmtree) and SIGKILLs itself when the count reaches k, i.e. just
before step k happens. A first run counts the steps; then every k from 1 to the last step is killed, the folder
is checked, a full run follows and is checked. Progress events, not sleeps, decide the moment. ~30 s.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from msd_server import TASK, build_task_tar, md5

SYNTH = "Task901_PGPSSynth"
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 and fork: Linux only")

FORK_SERVER = r"""
import json, os, signal, sys
import pgps.cli, pgps.data.msd, pgps.data.synthetic, pgps.data.phantom, pgps.fileio, pgps.data.extract
import nibabel, numpy, scipy.ndimage  # imported before forking, so children open no module files

FS_EVENTS = {"open", "os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.chmod", "shutil.rmtree",
             "tempfile.mkdtemp", "pgps.exchange", "os.link", "os.truncate"}

def child(argv, root, kill_at, report):
    steps = []
    def hook(event, args):
        if event not in FS_EVENTS:
            return
        if event == "open" and not str(args[0]).startswith(root):
            return  # reads of other files (and the report below) are not steps of the run
        steps.append(event)
        if len(steps) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    sys.addaudithook(hook)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    rc = pgps.cli.main(argv)
    with open(report, "w") as fh:
        json.dump(steps, fh)
    os._exit(rc)

for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        try:
            child(job["argv"], job["root"], job["kill_at"], job["report"])
        finally:
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    print(json.dumps({"killed": killed, "rc": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None}), flush=True)
"""


class ForkServer:
    """Runs `pgps ARGV` in a fresh forked process per call, optionally SIGKILLed just before step ``kill_at``."""

    def __init__(self, tmp: Path) -> None:
        self.report = tmp / "steps.json"
        script = tmp / "fork_server.py"
        script.write_text(FORK_SERVER)
        self.proc = subprocess.Popen(
            [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def run(self, argv: list[str], root: Path, kill_at: int = 0) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.report.unlink(missing_ok=True)
        job = {"argv": argv, "root": str(root), "kill_at": kill_at, "report": str(self.report)}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the fork server died"
        return json.loads(line)

    def steps(self) -> list[str]:
        return json.loads(self.report.read_text())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


@pytest.fixture
def fork_server(tmp_path: Path) -> Iterator[ForkServer]:
    server = ForkServer(tmp_path)
    try:
        yield server
    finally:
        server.close()


def digest(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``: files by content hash, folders by name (an empty folder counts too)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        out[rel] = hashlib.md5(path.read_bytes()).hexdigest() if path.is_file() else "<folder>"
    return out


def _kill_at_every_step(server: ForkServer, root: Path, task: str, old: Path, new_argv: list[str]) -> None:
    """Shared body: count the steps of the replacing run, then kill it before each one in turn."""
    target = root / task

    def reset() -> None:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        shutil.copytree(old, target)

    old_digest = digest(old)
    reset()
    first = server.run(new_argv, root)
    assert first == {"killed": False, "rc": 0}
    steps = server.steps()
    new_digest = digest(target)
    assert new_digest != old_digest and sorted(p.name for p in root.iterdir()) == [task]
    assert "pgps.exchange" in steps, "the swap did not use renameat2(RENAME_EXCHANGE)"
    assert len(steps) >= 20, steps

    seen = {"old": 0, "new": 0}
    for k in range(1, len(steps) + 1):
        reset()
        result = server.run(new_argv, root, kill_at=k)
        assert result["killed"], f"step {k} ({steps[k - 1]}) was never reached"
        assert target.is_dir(), f"killed before step {k} ({steps[k - 1]}): no task folder at all"
        now = digest(target)
        assert now in (old_digest, new_digest), f"killed before step {k} ({steps[k - 1]}): a mix of generations"
        seen["old" if now == old_digest else "new"] += 1
        assert server.run(new_argv, root) == {"killed": False, "rc": 0}, f"the run after a kill at step {k} failed"
        assert digest(target) == new_digest
        assert sorted(p.name for p in root.iterdir()) == [task], f"left over after a kill at step {k}"
    assert seen["old"] and seen["new"], seen  # the kills straddle the swap


def test_make_task_killed_at_every_step_leaves_old_or_new(tmp_path, fork_server):
    root = tmp_path / "raw"
    old_root = tmp_path / "old"
    assert fork_server.run(["make-task", "--out", str(old_root), "--seed", "1", "--num-train", "3"], old_root) == {
        "killed": False,
        "rc": 0,
    }
    new_argv = ["make-task", "--out", str(root), "--seed", "2", "--num-train", "2", "--num-test", "1"]
    _kill_at_every_step(fork_server, root, SYNTH, old_root / SYNTH, new_argv)


def test_acquire_force_killed_at_every_step_leaves_old_or_new(tmp_path, fork_server):
    """`pgps acquire --force` re-extracts a verified tarball over an older extraction of another one."""
    tar, _ = build_task_tar()
    old_tar, _ = build_task_tar(noise_voxels=12)  # another tarball: other bytes, same file names
    data = tmp_path / "data"
    downloads = data / "downloads"
    downloads.mkdir(parents=True)
    (tmp_path / "old_src").mkdir()
    (tmp_path / "old_src" / f"{TASK}.tar").write_bytes(old_tar)
    old_data = tmp_path / "old_data"
    argv = ["acquire", TASK, "--data", str(old_data), "--source-dir", str(tmp_path / "old_src"), "--md5", md5(old_tar)]
    assert fork_server.run(argv, old_data / "raw") == {"killed": False, "rc": 0}
    (downloads / f"{TASK}.tar").write_bytes(tar)
    new_argv = ["acquire", TASK, "--data", str(data), "--force", "--md5", md5(tar), "--url-base", "http://127.0.0.1:9"]
    _kill_at_every_step(fork_server, data / "raw", TASK, old_data / "raw" / TASK, new_argv)
    assert sorted(os.listdir(downloads)) == [f".{TASK}.lock", f"{TASK}.tar"]
