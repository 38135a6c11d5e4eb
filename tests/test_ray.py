"""``fewsam embed --ray`` / ``fewsam predict --ray`` (``fewsam.distributed.ray_jobs``).

A local Ray cluster (2 CPUs, on 127.0.0.1, started and stopped by these tests) embeds a phantom
and real ACDC volumes into a cache byte-identical to a local ``fewsam embed`` run with the same
thread count; a worker killed mid-job is restarted and its case retried, or, with no restarts
left, the job stops with one line, the cache holds only whole verified entries and a rerun
encodes exactly the rest. Predictions made on the cluster are the local ones, byte for byte.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, run_fewsam, shared_data
from fewsam.cache import EMBED_LOG, EmbeddingCache, _read_entry
from fewsam.data.phantom import write_phantom_dataset
from fewsam.errors import CacheError, FewsamError, ModelError
from fewsam.predict import PREDICT_LOG
from fewsam.probabilities import PROBABILITIES_ENDING

# Ray binds to the host's network address unless told this machine is not a cluster: keep every
# socket of the test cluster on the loopback interface (the workers inherit the variable).
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # a Ray worker encodes with one thread: the same float sums
FP32 = ["--precision", "fp32"]  # the PyTorch reference encoder: bit-identical between processes


def fewsam_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "FEWSAM_NO_REEXEC": "1", **LOOPBACK, **extra}


def local_embed(data: Path, cache: Path) -> None:
    """The reference: ``fewsam embed`` in its own process, one thread, no Ray."""
    result = subprocess.run([sys.executable, "-m", "fewsam", "embed", "--data", str(data), "--cache", str(cache),
                             *FP32, "--quiet"], capture_output=True, text=True, env=fewsam_env(**ONE_THREAD),
                            timeout=900)
    assert result.returncode == 0, result.stderr


def run_folder(tmp_path_factory) -> Path:
    """The folder of this test run that every process of it sees: under pytest-xdist each worker's
    base temp is a folder inside the run's own one, which no other run uses; run alone, its base temp."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def phantom_and_cache(tmp_path_factory) -> tuple[Path, Path]:
    """A small phantom (3 cases of 2 slices) and its cache filled by a local ``fewsam embed``: made
    once per test run, whichever process asks first (the DDP fit tests, in another xdist worker as a
    rule, train from the same cache; the others wait for it instead of encoding it again). Readers
    copy it before they write."""
    from filelock import FileLock  # a dependency of torch

    root = run_folder(tmp_path_factory) / "scaling-phantom"
    with FileLock(f"{root}.lock"):
        if not (root / "done").exists():
            shutil.rmtree(root, ignore_errors=True)
            write_phantom_dataset(root / "data", n_train=2, n_val=1, slices=2)
            local_embed(root / "data", root / "cache")
            (root / "done").touch()
    return root / "data", root / "cache"


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> tuple[Path, Path]:
    return phantom_and_cache(tmp_path_factory)


@pytest.fixture(scope="module")
def cluster():
    """A 2-CPU Ray cluster on this machine for the module; its address for other drivers."""
    ray = pytest.importorskip("ray")
    from ray._private import ray_constants

    saved = {k: os.environ.get(k) for k in LOOPBACK}
    os.environ.update(LOOPBACK)
    ray_constants.ENABLE_RAY_CLUSTER = False  # read at call time; the variable covers child processes
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


def cache_files(root: Path) -> dict[str, bytes]:
    """Every file of a cache folder (entries and manifest), by relative path; not the log of the commands that
    filled it (``embed.log``: the same work, told with other times and command lines)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != EMBED_LOG}


def entries(root: Path) -> list[Path]:
    return sorted(root.rglob("*.npz"))


def assert_whole_entries(root: Path) -> None:
    """Each entry reads back and passes its checksum; a kill may leave a temporary file, never an entry."""
    for path in entries(root):
        entry = _read_entry(path)
        assert entry is not None and entry[0]["key"] == path.stem, path
    strays = [p for p in root.rglob("*") if p.is_file() and p.suffix not in (".npz", ".json", ".tmp")
              and p.name != EMBED_LOG]
    assert not strays, strays


# --- on the cluster -------------------------------------------------------------------------------

def test_the_cluster_fills_the_cache_a_local_run_fills(phantom, cluster, tmp_path):
    data, reference = phantom
    result = run_fewsam("embed", "--data", str(data), "--cache", str(tmp_path / "cache"), *FP32, "--ray", cluster,
                        "--ray-workers", "2", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert '"encoded": 6' in result.stdout and '"workers": 2' in result.stdout, result.stdout
    got, want = cache_files(tmp_path / "cache"), cache_files(reference)
    assert len(entries(reference)) == 6 and got.keys() == want.keys()
    assert all(got[name] == want[name] for name in want)  # byte for byte


def _kill_soon(pid: int, delay: float) -> None:
    """SIGKILL a Ray worker of this test's cluster, ``delay`` seconds from now (while it encodes)."""
    threading.Timer(delay, lambda: os.kill(pid, signal.SIGKILL)).start()


def _embed(data: Path, cache_root: Path, address: str, **kwargs) -> dict:
    from fewsam.data import open_dataset
    from fewsam.distributed.ray_jobs import embed_cases_on_ray
    from fewsam.models.registry import load_model

    dataset = open_dataset(data)
    cache = EmbeddingCache(cache_root, load_model("litemedsam"))
    ids = dataset.split("train") + dataset.split("val")
    return embed_cases_on_ray(address, data, ids, cache, None, "cpu", show_progress=False, **kwargs)


def copy_case_entries(data: Path, case_id: str, reference: Path, cache_root: Path) -> int:
    """Put the reference entries of ``case_id``'s slices into ``cache_root`` (as a finished earlier job
    would have); how many. The case costs no encoding then, and comes back at once as a cache hit."""
    from fewsam.data import open_dataset
    from fewsam.models.registry import load_model

    case = open_dataset(data).load(case_id, with_label=False)
    index = EmbeddingCache(reference, load_model("litemedsam"))
    paths = [index.path_for(index.key(case.slice_image(z))) for z in range(case.num_slices)]
    for path in paths:
        (cache_root / path.relative_to(reference)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, cache_root / path.relative_to(reference))
    return len(paths)


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_its_case_retried(phantom, cluster, tmp_path):
    """The first case is in the cache already: its worker is handed the third case at once and killed
    while encoding it, the second case encoded beside it: four slices to encode (and the killed one's
    again), not six."""
    data, reference = phantom
    assert copy_case_entries(data, "phantom_000", reference, tmp_path / "cache") == 2
    killed = []

    def kill_first_finisher(result: dict) -> None:
        if not killed:  # it has just been handed the next case: killed half-way through it
            killed.append(result["pid"])
            _kill_soon(result["pid"], 1.5)

    stats = _embed(data, tmp_path / "cache", cluster, workers=2, on_case=kill_first_finisher)
    assert killed and stats["cases"] == 3 and stats["slices"] == 6 and stats["cache_hits"] >= 2
    assert_whole_entries(tmp_path / "cache")
    got = cache_files(tmp_path / "cache")
    assert {k: v for k, v in got.items() if not k.endswith(".tmp")} == cache_files(reference)


@pytest.mark.slow
def test_a_worker_killed_without_restarts_stops_the_job_and_a_rerun_does_the_rest(phantom, cluster, tmp_path):
    data, reference = phantom
    killed = []

    def kill_first_finisher(result: dict) -> None:
        if not killed:
            killed.append(result["pid"])
            _kill_soon(result["pid"], 1.5)

    with pytest.raises(FewsamError) as err:
        _embed(data, tmp_path / "cache", cluster, workers=2, retries=0, on_case=kill_first_finisher)
    message = str(err.value)
    assert "a Ray worker died while embedding case" in message and "run the same command again" in message
    assert "\n" not in message
    assert_whole_entries(tmp_path / "cache")
    done = len(entries(tmp_path / "cache"))
    assert 2 <= done < 6  # the first case was finished, the killed worker's was not
    stats = _embed(data, tmp_path / "cache", cluster, workers=2)
    assert stats["encoded"] == 6 - done and stats["cache_hits"] == done
    got = cache_files(tmp_path / "cache")
    assert {k: v for k, v in got.items() if not k.endswith(".tmp")} == cache_files(reference)


@pytest.mark.slow
def test_predictions_on_the_cluster_are_the_local_ones(phantom, cluster, tmp_path):
    from fewsam.api import FitOptions, fit
    from fewsam.methods.fewshot import FewShotConfig
    from fewsam.predict import predict

    data, reference = phantom
    cache = tmp_path / "cache"
    shutil.copytree(reference, cache)
    fit("fewshot", FitOptions(data=data, run=tmp_path / "run", labeled_slices=2, cache=str(cache), precision="fp32",
                              show_progress=False), FewShotConfig(augmented_views=0, steps=2, val_every=2, views=1, batch_size=2))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' one thread: the same float sums, so the same argmax everywhere
    try:
        local = predict(tmp_path / "run", data, tmp_path / "local", "val", cache, show_progress=False,
                        precision="fp32", save_probabilities=True)
    finally:
        torch.set_num_threads(threads)
    result = run_fewsam("predict", str(tmp_path / "run"), "--data", str(data), "--split", "val", "--out",
                        str(tmp_path / "ray"), "--cache", str(cache), *FP32, "--ray", cluster, "--quiet",
                        "--save-probabilities", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert local and all((tmp_path / "ray" / p.relative_to(tmp_path / "local")).read_bytes() == p.read_bytes()
                         for p in local)
    saved = sorted((tmp_path / "local").rglob(f"*{PROBABILITIES_ENDING}"))
    assert len(saved) == len(local)  # each case's class probabilities beside it, from the workers too
    for path in saved:
        with np.load(path) as mine, np.load(tmp_path / "ray" / path.relative_to(tmp_path / "local")) as theirs:
            assert mine.files == theirs.files and all(np.array_equal(mine[k], theirs[k]) for k in mine.files)
    # no token left; the log says which command wrote them
    assert sorted(p.name for p in (tmp_path / "ray").rglob("*")) == sorted(
        [PREDICT_LOG] + [p.name for p in local] + [p.name for p in saved])
    assert "done: 1 predictions" in (tmp_path / "ray" / PREDICT_LOG).read_text(encoding="utf-8")


@pytest.mark.slow
def test_real_acdc_volumes_embed_on_the_cluster_as_locally(cluster, tmp_path):
    source = shared_data("acdc")
    root = tmp_path / "acdc"
    (root / "data").mkdir(parents=True)
    # Two of its real slices, as they are stored: each slice costs a LiteMedSAM encoding twice (here and
    # on the cluster), and several slices per case and several cases are the phantom tests' part.
    volume = "patient028_frame01"
    with h5py.File(source / "data" / f"{volume}.h5") as whole, h5py.File(root / "data" / f"{volume}.h5", "w") as part:
        for key in ("image", "label"):
            part[key] = whole[key][3:5]
    (root / "val.list").write_text(volume + "\n")
    local_embed(root, tmp_path / "local")
    result = run_fewsam("embed", "--data", str(root), "--split", "val", "--cache", str(tmp_path / "ray"), *FP32,
                        "--ray", cluster, "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    want = cache_files(tmp_path / "local")
    assert len(entries(tmp_path / "local")) == 2 and cache_files(tmp_path / "ray") == want


# --- without a cluster ----------------------------------------------------------------------------

def _job(tmp_path: Path, data: Path, **changes):
    from fewsam.distributed.ray_jobs import EncoderJob
    from fewsam.models.registry import load_model

    job = dict(data=str(data), model="litemedsam", checkpoint=None, cache_root=str(tmp_path / "cache"),
               precision="fp32", device="cpu", threads=1, weights_sha256=load_model("litemedsam").weights_sha256)
    return EncoderJob(**{**job, **changes})


def test_a_worker_encodes_with_the_drivers_precision(phantom, tmp_path):
    """The worker class itself, in this process: the resolved precision travels by name, and the
    cache folder it fills is the one the driver's precision names."""
    pytest.importorskip("openvino")
    from fewsam.distributed.ray_jobs import EmbedWorker, precision_option
    from fewsam.models.precision import resolve_precision

    openvino = resolve_precision("fp32-openvino")
    assert precision_option(openvino) == "fp32-openvino" and precision_option(resolve_precision("fp32")) == "fp32"
    worker = EmbedWorker(_job(tmp_path, phantom[0], precision=precision_option(openvino)))
    assert worker.error is None and worker.cache.precision == openvino
    assert worker.cache.dir.name.endswith("-openvino-fp32")


def test_a_worker_with_other_weights_or_without_the_shared_folder_refuses(phantom, tmp_path):
    from fewsam.distributed.ray_jobs import EmbedWorker

    other = EmbedWorker(_job(tmp_path, phantom[0], weights_sha256="0" * 64))
    with pytest.raises(ModelError, match="other weights for litemedsam"):
        other.ready()
    unseen = EmbedWorker(_job(tmp_path, phantom[0], tokens=(str(tmp_path / "elsewhere" / ".fewsam-ray-x"),)))
    with pytest.raises(CacheError, match="not visible from Ray worker .* every node mounts"):
        unseen.embed("phantom_000")


def test_without_ray_installed_the_option_says_how_to_get_it(monkeypatch):
    from fewsam.distributed.ray_jobs import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(FewsamError, match=r"pip install 'fewsam\[ray\]'"):
        import_ray()


def test_plain_commands_do_not_import_ray(phantom, tmp_path):
    code = ("import sys; from fewsam.cli import main; sys.argv = ['fewsam', 'embed', '--data', sys.argv[1], "
            "'--cache', sys.argv[2], '--precision', 'fp32', '--quiet']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "assert 'ray' not in sys.modules, 'ray imported'; print('no ray')")
    shutil.copytree(phantom[1], tmp_path / "cache")
    result = subprocess.run([sys.executable, "-c", code, str(phantom[0]), str(tmp_path / "cache")],
                            capture_output=True, text=True, env=fewsam_env(), timeout=300)
    assert result.returncode == 0 and "no ray" in result.stdout, result.stderr


def test_ray_options_are_checked_up_front(tmp_path):
    result = run_fewsam("embed", "--data", str(tmp_path), "--ray-workers", "2", cwd=tmp_path)
    assert_one_line_error(result, "--ray-workers needs --ray")


def test_no_cluster_at_the_address_is_one_line(monkeypatch):
    from fewsam.distributed import ray_jobs

    class NoCluster:  # what ray.init(address=...) does when nothing answers there
        @staticmethod
        def is_initialized():
            return False

        @staticmethod
        def init(**kwargs):
            raise ConnectionError("Could not find any running Ray instance.\nPlease specify the one to connect to.")

    monkeypatch.setattr(ray_jobs, "import_ray", lambda: NoCluster)
    monkeypatch.setattr(ray_jobs, "check_cluster_reachable", lambda address: None)  # something listens there
    with pytest.raises(FewsamError) as err:
        with ray_jobs.ray_cluster("head-node:6379"):
            pass
    assert str(err.value) == ("--ray head-node:6379: no Ray cluster to connect to (Could not find any running Ray "
                              "instance.); start one with `ray start --head` and pass its address, or use --ray local")


def test_worker_count_follows_the_cluster():
    from fewsam.distributed.ray_jobs import worker_count

    class Cluster:
        def cluster_resources(self):
            return {"CPU": 8.0}

    assert worker_count(Cluster(), "cpu", 1, None, cases=100) == 8
    assert worker_count(Cluster(), "cpu", 2, None, cases=100) == 4
    assert worker_count(Cluster(), "cpu", 1, None, cases=3) == 3
    assert worker_count(Cluster(), "cpu", 1, 5, cases=100) == 5
    with pytest.raises(FewsamError, match="has no GPU"):
        worker_count(Cluster(), "cuda", 1, None, cases=3)


def test_entry_bytes_do_not_depend_on_when_they_were_written(tmp_path, fake_sam, monkeypatch):
    """Identical entries from two workers or two jobs: the file holds no time stamp."""
    import time

    image = np.random.default_rng(0).random((20, 24)).astype(np.float32)
    first = EmbeddingCache(tmp_path / "a", fake_sam)
    first.embed([image])
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 3 * 86400)  # written three days later
    second = EmbeddingCache(tmp_path / "b", fake_sam)
    second.embed([image])
    path = first.path_for(first.key(image))
    assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes()


def test_workers_the_cluster_cannot_place_are_reported_not_awaited(cluster, tmp_path):
    """Asking for more CPUs than the cluster has: one line after the start timeout, not a hang."""
    import ray

    from fewsam.distributed.ray_jobs import EmbedWorker, start_workers

    options = {"num_cpus": 3, "max_restarts": 0, "max_task_retries": 0}
    with pytest.raises(FewsamError, match="started 0 of 1 workers within 2 s; .*ray status"):
        start_workers(ray, EmbedWorker, None, 1, options, timeout=2)
