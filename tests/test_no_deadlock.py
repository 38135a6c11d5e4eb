"""fewsam never forks from a thread, which can hang a process for good.

OpenVINO's usage telemetry sends each event from a thread pool that forks a process per event;
with h5 data open, such a fork hung a whole test run: the forking thread held h5py's lock (its
at-fork handler) and waited for the import lock, while the main thread, inside an import, had the
garbage collector free an h5py file and waited for h5py's lock.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Run in a fresh interpreter: the telemetry starts at the first ``import openvino`` of a process.
# HOME without a consent file and no CI variables: the telemetry's own rules then have it send.
IMPORT_AND_CONVERT = """
import threading
import torch
from fewsam.models.precision import _convert_stage, import_openvino, openvino_problem

assert openvino_problem() is None, openvino_problem()
ov = import_openvino()
_convert_stage(ov, torch.nn.Linear(4, 2).eval(), torch.zeros(1, 4))
from openvino.tools.ovc import convert_impl, telemetry_utils
print("telemetry:", telemetry_utils.tm.__name__, convert_impl.tm.__name__)
print("threads:", sorted(t.name for t in threading.enumerate() if t is not threading.main_thread()))
"""


@pytest.mark.timeout(60)
def test_openvino_import_and_conversion_start_no_telemetry_threads(tmp_path):
    import fewsam
    from fewsam.models.precision import openvino_problem

    if openvino_problem() is not None:
        pytest.skip(openvino_problem())

    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env.update(HOME=str(tmp_path), OMP_NUM_THREADS="1", PYTHONPATH=str(Path(fewsam.__file__).parents[1]))
    done = subprocess.run([sys.executable, "-c", IMPORT_AND_CONVERT], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=50)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    stand_in = "openvino.tools.ovc.telemetry_stub"
    assert lines["telemetry"] == f"{stand_in} {stand_in}", done.stdout
    assert lines["threads"] == "[]", done.stdout
    assert not (tmp_path / "intel").exists()  # the telemetry's client id file, written when it sends


def test_openvino_imported_before_fewsam_gets_the_stand_in_too(monkeypatch):
    """A caller that imported OpenVINO (and its telemetry) first: its converter modules still get
    the stand-in once fewsam loads OpenVINO."""
    from fewsam.models.precision import import_openvino, openvino_problem

    if openvino_problem() is not None:  # loads OpenVINO the way fewsam does, without its telemetry
        pytest.skip(openvino_problem())
    from openvino.tools.ovc import convert_impl, telemetry_stub, telemetry_utils

    real = object()
    monkeypatch.setattr(telemetry_utils, "tm", real)
    monkeypatch.setattr(convert_impl, "tm", real)
    import_openvino()
    assert telemetry_utils.tm is telemetry_stub and convert_impl.tm is telemetry_stub
