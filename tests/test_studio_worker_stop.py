"""A studio worker stopped by SIGTERM (the page's Cancel, the studio shutting down) winds its fit down as the
command line does: the fit's log says how it ended, and the worker still ends as the signal ends a process,
which is how the studio tells a cancelled or stopped worker from a crash."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from fewsam.data.phantom import write_phantom_dataset
from fewsam.runs import LAST, TEXT_LOG

TESTS = Path(__file__).parent

# The real worker (``fewsam.studio.worker.main``) running a real few-shot fit of the tests' tiny SAM, long enough
# to be stopped half-way.
WORKER = """
import json, sys
sys.path.insert(0, sys.argv[2])
from test_supervised import tiny_sam

import fewsam.api
from fewsam.models import registry
from fewsam.studio import worker

registry.load_model = fewsam.api.load_model = lambda *args, **kwargs: tiny_sam()


def run_job(spec, status):
    from fewsam.api import FitOptions, fit
    from fewsam.methods.fewshot import FewShotConfig

    options = FitOptions(data=spec["data"], run=spec["run"], labeled_slices=1, cache=spec["cache"],
                         show_progress=False, precision="fp32")
    fit("fewshot", options, FewShotConfig(augmented_views=0, steps=100000, val_every=1, batch_size=1, views=1,
                                          test_mirroring=False, sam_refinement=False))


worker.run_job = run_job
sys.exit(worker.main([sys.argv[1]]))
"""


def test_a_worker_stopped_by_sigterm_says_so_in_its_fit_log_and_ends_as_signalled(tmp_path):
    data = write_phantom_dataset(tmp_path / "data", n_train=2, n_val=1, slices=2, seed=1)
    run = tmp_path / "run"
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({"kind": "fit", "status": str(tmp_path / "status.json"), "data": str(data),
                                "run": str(run), "cache": str(tmp_path / "cache")}), encoding="utf-8")
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(spec), str(TESTS)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env={"OMP_NUM_THREADS": "1", **_environment()})
    try:
        deadline = time.monotonic() + 240
        while not (run / LAST).exists() and worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (run / LAST).exists(), worker.stderr.read() if worker.poll() is not None else "no checkpoint in time"
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=120)
    finally:
        worker.kill()
    assert worker.returncode == -signal.SIGTERM, stderr
    assert "Traceback" not in stderr, stderr
    assert "terminated (SIGTERM)" in (run / TEXT_LOG).read_text(encoding="utf-8").splitlines()[-1]


def _environment() -> dict[str, str]:
    import os

    return {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
