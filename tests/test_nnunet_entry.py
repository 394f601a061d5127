"""The pipeline starts ``nnUNetv2_train``/``nnUNetv2_predict`` as ``python -c`` of their entry functions
(pgps.pipeline.nnunet_cli.ENTRY_POINTS): the same functions the console scripts call, so that nnU-Net's spawned
validation/export workers do not re-import the training script's module tree."""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import pytest

from pgps.errors import PGPSError
from pgps.pipeline import nnunet_cli


@pytest.mark.parametrize("name", sorted(nnunet_cli.ENTRY_POINTS))
def test_entry_is_the_function_nnunets_console_script_calls(name: str) -> None:
    (script,) = entry_points(group="console_scripts", name=name)
    module, function = nnunet_cli.ENTRY_POINTS[name]
    assert (script.module, script.attr) == (module, function)


def test_an_entry_command_runs_nnunet_and_a_failure_names_the_console_script(capfd: pytest.CaptureFixture[str]) -> None:
    """One real start (each imports nnU-Net's training module tree, ~12 CPU-s): nnU-Net's own code answers (its
    dataset lookup fails on the name), the log line and the error name nnUNetv2_train, not ``python -c``."""
    cmd = [*nnunet_cli.command("nnUNetv2_train"), "not-a-dataset", "3d_fullres", "0"]
    assert cmd[:2] == [sys.executable, "-c"]
    with pytest.raises(PGPSError) as err:
        nnunet_cli.run(cmd, {"PATH": "/usr/bin:/bin", "nnUNet_raw": "/nonexistent"}, "x: training")
    assert str(err.value).startswith("x: training: `nnUNetv2_train not-a-dataset 3d_fullres 0` failed (exit ")
    out, errors = capfd.readouterr()
    assert "+ nnUNetv2_train not-a-dataset 3d_fullres 0   (run as: " in out
    assert "nnunetv2" in errors and "not-a-dataset" in errors  # nnU-Net's traceback, from its own lookup
    assert nnunet_cli.shown(cmd).startswith("nnUNetv2_train not-a-dataset")
    assert nnunet_cli.command("nnUNetv2_plan_and_preprocess")[0].endswith("nnUNetv2_plan_and_preprocess")
