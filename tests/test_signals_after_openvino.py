"""Ctrl-C still stops a process cleanly after OpenVINO compiled encoders came and went.

Each ``openvino.Core`` starts a CPU plugin that puts in an alternate signal stack of its own and
restores the one it found when destroyed. Two Cores freed in the order they were made left the
process on a freed stack, and the next signal (Ctrl-C in a fit) was a segmentation fault.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Two caches (a fit's labelled slices and another run's, say), each with an OpenVINO encoder, freed
# first-made first, then Ctrl-C: the handler must run and the process exit normally.
TWO_ENCODERS_THEN_CTRL_C = """
import gc, signal, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from fewsam.cache import EmbeddingCache
from fewsam.models.precision import EncoderPrecision
from test_precision import tiny_sam

model, folder = tiny_sam(), "cache"
image = np.random.default_rng(0).random((40, 48)).astype(np.float32)
first = EmbeddingCache(folder, model, EncoderPrecision("fp32", "openvino"))
first.embed([image])
second = EmbeddingCache(folder, model, EncoderPrecision("fp32", "openvino"))
second.embed([np.flipud(image).copy()])
del first
gc.collect()
del second
gc.collect()
try:
    signal.raise_signal(signal.SIGINT)
except KeyboardInterrupt:
    print("stopped cleanly")
"""


@pytest.mark.timeout(120)
def test_ctrl_c_after_two_openvino_encoders_were_freed_stops_cleanly(tmp_path):
    import fewsam
    from fewsam.models.precision import openvino_problem

    if openvino_problem() is not None:
        pytest.skip(openvino_problem())
    src = str(Path(fewsam.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=src, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", TWO_ENCODERS_THEN_CTRL_C, str(Path(__file__).parent)],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=110)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert "stopped cleanly" in result.stdout


def test_every_compiled_encoder_shares_the_process_s_one_core():
    from fewsam.models.precision import openvino_core, openvino_problem

    if openvino_problem() is not None:
        pytest.skip(openvino_problem())
    assert openvino_core() is openvino_core()
