"""Test support for `pgps acquire`: an MSD-layout task as a tarball, and a real HTTP server on 127.0.0.1.

The server (http.server in a thread) honours Range requests, records every request, and can drop the
connection mid-body, throttle it or ignore Range, so resume, checksum and kill-and-rerun paths run for real.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import re
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import nibabel as nib
import numpy as np

TASK = "Task04_Hippocampus"


# ---------------------------------------------------------------- a tiny MSD task as a tarball
def _nifti(array: np.ndarray) -> bytes:
    """A .nii.gz file's bytes (fixed gzip mtime, so the tarball and its MD5 are the same every build)."""
    return gzip.compress(nib.Nifti1Image(array, np.eye(4)).to_bytes(), mtime=0)


@functools.cache
def build_task_tar(task: str = TASK, noise_voxels: int = 48) -> tuple[bytes, dict[str, bytes]]:
    """Uncompressed tar (as MSD ships) of ``task/``; one incompressible image makes it ~0.4 MB to throttle."""
    rng = np.random.default_rng(0)
    files: dict[str, bytes] = {}
    training = []
    for i in range(3):
        name = f"hippocampus_{i:03d}.nii.gz"
        shape = (noise_voxels, noise_voxels, noise_voxels) if i == 0 else (8, 8, 8)
        files[f"imagesTr/{name}"] = _nifti(rng.normal(size=shape).astype(np.float32))
        files[f"labelsTr/{name}"] = _nifti((rng.random(shape) > 0.7).astype(np.uint8))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    files["imagesTs/hippocampus_100.nii.gz"] = _nifti(rng.normal(size=(8, 8, 8)).astype(np.float32))
    dataset = {
        "name": "Hippocampus",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "hippocampus"},
        "numTraining": 3,
        "numTest": 1,
        "relaese": "1.0 04/05/2018",  # the real Task04 typo: must not matter
        "training": training,
        "test": ["./imagesTs/hippocampus_100.nii.gz"],
    }
    files["dataset.json"] = json.dumps(dataset, indent=1).encode()
    junk = {"imagesTr/._hippocampus_000.nii.gz": b"\x00\x05\x16\x07Mac OS X resource fork"}
    return tar_of({f"{task}/{k}": v for k, v in {**files, **junk}.items()}), files


def tar_of(members: dict[str, bytes], extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tf.addfile(info)
    return buf.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ---------------------------------------------------------------- a real HTTP server with Range support
@dataclass
class Behaviour:
    files: dict[str, bytes]
    requests: list[dict[str, str | None]] = field(default_factory=list)
    drop_after: int = 0  # bytes of body to send before closing the socket, while drops_left > 0
    drops_left: int = 0
    delay: float = 0.0  # seconds per 4 KiB chunk
    honour_range: bool = True


def _make_handler(b: Behaviour) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a stuck client cannot hold a server thread forever

        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            rng = self.headers.get("Range")
            b.requests.append({"path": self.path, "range": rng})
            data = b.files.get(self.path.lstrip("/"))
            if data is None:
                self.send_error(404)
                return
            start = 0
            m = re.fullmatch(r"bytes=(\d+)-", rng or "")
            if m and b.honour_range:
                start = int(m.group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            drop = b.drops_left > 0
            if drop:
                b.drops_left -= 1
            sent = 0
            try:
                while sent < len(body):
                    if drop and sent >= b.drop_after:
                        self.wfile.flush()
                        self.connection.shutdown(socket.SHUT_RDWR)  # mid-body: the client sees a short read
                        self.close_connection = True
                        return
                    step = 4096 if not drop else min(4096, b.drop_after - sent)
                    self.wfile.write(body[sent : sent + step])
                    sent += step
                    if b.delay:
                        time.sleep(b.delay)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client was killed: expected in the kill test

    return Handler


@contextmanager
def serve(files: dict[str, bytes]) -> Iterator[tuple[str, Behaviour]]:
    """Yields (base_url, behaviour); stops on exit, and by itself after 120 s whatever happens."""
    behaviour = Behaviour(files=dict(files))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(behaviour))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    guard = threading.Timer(120, httpd.shutdown)
    guard.daemon = True
    guard.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", behaviour
    finally:
        guard.cancel()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
