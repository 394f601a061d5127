"""A CPU training's torch threads follow OMP_NUM_THREADS, although nnU-Net's CLI sets the core count first."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from pgps.errors import PGPSError
from pgps.nnunet.cpu_threads import pin_cpu_threads, requested_threads


@pytest.mark.parametrize(("raw", "want"), [("1", 1), (" 3 ", 3), ("4,2", 4), ("", None)])
def test_requested_threads(raw: str, want: int | None) -> None:
    assert requested_threads({"OMP_NUM_THREADS": raw} if raw else {}) == want


@pytest.mark.parametrize("raw", ["0", "-1", "two", "1.5", ",2"])
def test_bad_thread_count_names_the_variable(raw: str) -> None:
    with pytest.raises(PGPSError, match=r"^OMP_NUM_THREADS='.*': expected a positive whole number"):
        requested_threads({"OMP_NUM_THREADS": raw})


def test_the_pin_undoes_nnunets_core_count_on_cpu_only() -> None:
    """In a fresh interpreter, as `nnUNetv2_train -device cpu` does: torch.set_num_threads(cpu_count), then the
    trainer's pin. CUDA and unset OMP_NUM_THREADS leave nnU-Net's choice alone."""
    code = (
        "import torch; from pgps.nnunet.cpu_threads import pin_cpu_threads as pin\n"
        "torch.set_num_threads(2)\n"  # what nnU-Net's entry point does on a 2-core machine
        "assert pin(torch.device('cuda'), {'OMP_NUM_THREADS': '1'}) is None and torch.get_num_threads() == 2\n"
        "assert pin(torch.device('cpu'), {}) is None and torch.get_num_threads() == 2\n"
        "assert pin(torch.device('cpu'), {'OMP_NUM_THREADS': '1'}) == 1\n"
        "print(torch.get_num_threads())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "1"


def test_pin_returns_what_it_set() -> None:
    before = torch.get_num_threads()
    try:
        assert pin_cpu_threads(torch.device("cpu"), {"OMP_NUM_THREADS": "1"}) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
