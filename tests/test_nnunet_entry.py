"""The pipeline starts ``nnUNetv2_train``/``nnUNetv2_predict`` as ``python -c`` of their entry functions
(pgps.pipeline.nnunet_cli.ENTRY_POINTS): the same functions the console scripts call, so that nnU-Net's spawned
validation/export workers do not re-import the training script's module tree."""

from __future__ import annotations

import subprocess
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


def test_command_runs_nnunets_argument_parser_and_shows_the_script_name() -> None:
    cmd = [*nnunet_cli.command("nnUNetv2_train"), "-h"]
    assert cmd[:2] == [sys.executable, "-c"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "dataset_name_or_id" in proc.stdout  # nnU-Net's own parser answered
    assert nnunet_cli.shown(cmd).startswith("nnUNetv2_train -h   (run as: ")
    assert nnunet_cli.command("nnUNetv2_plan_and_preprocess")[0].endswith("nnUNetv2_plan_and_preprocess")


def test_a_failing_entry_command_names_the_console_script(capsys: pytest.CaptureFixture[str]) -> None:
    cmd = [*nnunet_cli.command("nnUNetv2_train"), "not-a-dataset", "3d_fullres", "0"]
    with pytest.raises(PGPSError) as err:
        nnunet_cli.run(cmd, {"PATH": "/usr/bin:/bin", "nnUNet_raw": "/nonexistent"}, "x: training")
    assert str(err.value).startswith("x: training: `nnUNetv2_train not-a-dataset 3d_fullres 0` failed (exit ")
    assert "+ nnUNetv2_train not-a-dataset 3d_fullres 0   (run as: " in capsys.readouterr().out
