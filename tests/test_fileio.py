"""pgps.fileio: the one atomic-write / JSON-read module. A failed or killed write leaves the old file and
no temp entry; modes follow the umask like open(); strict JSON; reads fail with one line naming the file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pgps import fileio
from pgps.errors import PGPSError


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request: pytest.FixtureRequest):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "f.json"
    fileio.write_json(target, {"a": 1})

    def boom(tmp: Path) -> None:
        tmp.write_text("{half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        fileio.write_with(target, boom)
    assert json.loads(target.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["f.json"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # what open() would give, not mkstemp's 0600


def test_atomic_dir_mode_follows_umask_and_replaces_whole(tmp_path: Path, umask: int) -> None:
    out = tmp_path / "out"
    with fileio.atomic_dir(out) as tmp:
        (tmp / "a").write_text("old")
    with fileio.atomic_dir(out) as tmp:
        (tmp / "b").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_atomic_dir_failure_keeps_old_generation(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with fileio.atomic_dir(out) as tmp:
        (tmp / "a").write_text("old")
    with pytest.raises(ValueError), fileio.atomic_dir(out) as tmp:
        (tmp / "b").write_text("new")
        raise ValueError("fail")
    assert [p.name for p in out.iterdir()] == ["a"]
    assert os.listdir(tmp_path) == ["out"]


def test_json_is_strict(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    fileio.write_json(target, {"x": float("nan"), "y": [float("inf"), 1.5], "z": (1, -float("inf"))})
    text = target.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"x": None, "y": [None, 1.5], "z": [1, None]}


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "not found (written by X)"), (b"{bad", "not valid JSON"), (b"\xff\xfe", "not valid JSON")],
)
def test_read_json_errors_name_the_file_in_one_line(tmp_path: Path, content: bytes | None, problem: str) -> None:
    path = tmp_path / "in.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PGPSError) as info:
        fileio.read_json(path, hint="written by X")
    message = str(info.value)
    assert message.startswith(f"{path}: ") and problem in message and "\n" not in message


def test_clean_partials_removes_only_this_names_leftovers(tmp_path: Path) -> None:
    (tmp_path / ".out.abc.partial").mkdir()
    (tmp_path / ".out.old.x.partial").mkdir()
    (tmp_path / ".out.q.partial.png").write_text("")
    (tmp_path / ".other.abc.partial").mkdir()
    (tmp_path / "out").mkdir()
    fileio.clean_partials(tmp_path, "out")
    assert sorted(os.listdir(tmp_path)) == [".other.abc.partial", "out"]


def test_sigkill_during_writes_never_tears_the_file(tmp_path: Path) -> None:
    """A writer rewriting a file in a loop is SIGKILLed at many points; the file always parses and holds
    a complete generation."""
    target = tmp_path / "state.json"
    script = textwrap.dedent(
        f"""
        import sys
        from pgps import fileio
        fileio.write_json({str(target)!r}, {{"gen": 0, "pad": "x" * 200000}})
        print("ready", flush=True)
        gen = 0
        while True:
            gen += 1
            fileio.write_json({str(target)!r}, {{"gen": gen, "pad": "x" * 200000}})
        """
    )
    for _ in range(15):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"  # synchronised, not slept
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        data = json.loads(target.read_text())
        assert data["pad"] == "x" * 200000 and data["gen"] >= 0
    fileio.clean_partials(tmp_path, "state.json")
    assert os.listdir(tmp_path) == ["state.json"]
