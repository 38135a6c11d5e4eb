"""Ray for the encoder's embarrassingly parallel work: ``fewsam embed --ray`` and ``fewsam predict --ray``.

Cases go to a pool of Ray actors. Each loads the model once and opens the dataset once, then
handles one case per call: a case is read once and its slices are encoded, which is the unit the
readers and the embedding cache are built around. Every worker writes into the same
content-addressed cache the local commands use (``fewsam.cache``), through the same atomic writes:
an entry is a temporary file renamed into place, so two workers or two jobs that encode the same
slice write the same bytes, and a reader sees a whole entry or none. A worker reads its case's
slices from the cache first and encodes only the misses, so a rerun after an interruption does
only the work that is left.

The cache, the dataset and, for predict, the run folder and the output folder must be on a
filesystem every node mounts at the same path: the driver leaves a token file in each folder a
worker must write in, and a worker that does not see it refuses with one line. Ray restarts a
crashed worker and retries its case (``retries``); beyond that the job stops with one line naming
the case, and what was finished stays in the cache.

Actors rather than Ray Data's ``map_batches``: the work is "read a case, skip its cached slices,
encode the rest", whose input is a case id and whose output is files on the shared filesystem, so
there is nothing for a dataset pipeline to stream; an actor keeps the model (and an OpenVINO
compilation) for the whole job, and a failure names its case.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from fewsam.config import argument_name
from fewsam.errors import CacheError, FewsamError, ModelError

RETRIES = 3  # restarts of a crashed worker (and retries of its case) before the job gives up
# One CPU (one torch thread) per worker: the encoder runs one slice at a time, which scales better
# over processes than over threads (docs/results.md has the measured 1- and 2-worker rates).
CPUS_PER_WORKER = 1
START_TIMEOUT = 600.0  # seconds for all workers to load the model and check the folders
# Seconds to wait for the cluster's port to accept a connection: ray.init retries an address where
# nothing listens for minutes, printing a warning every few seconds, before it gives up.
CONNECT_TIMEOUT = 5.0
CLUSTER_ADDRESS_HELP = "give auto, local or the cluster's HOST:PORT (ray://HOST:PORT for Ray Client)"
TOKEN_PREFIX = ".fewsam-ray-"


# --- the cluster -------------------------------------------------------------------------------

def import_ray() -> Any:
    """Ray, or one line saying how to install it (it is an optional extra)."""
    try:
        import ray
    except ImportError:
        raise FewsamError("--ray needs Ray, an optional extra: pip install 'fewsam[ray]'") from None
    return ray


def check_workers_have_a_cluster(ray: str | None, workers: int | None) -> None:
    """``ray_workers`` sizes a Ray job: given without ``ray`` the work runs here, in one process, and the
    number was silently ignored (the command line refused it; a Python caller was not told)."""
    if workers is not None and ray is None:
        raise FewsamError(f"{argument_name('ray_workers')} needs {argument_name('ray')} (auto, local or the "
                          "cluster's HOST:PORT)")


def cluster_endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) of a cluster address (HOST:PORT, [IPv6]:PORT or ray://HOST:PORT); None for
    ``auto`` and ``local``, which name no endpoint. An address without a valid port is refused here:
    Ray's own message for it ("Invalid address format") does not say what to give instead."""
    if address in ("auto", "local"):
        return None
    from urllib.parse import urlsplit

    rest = address[len("ray://"):] if address.startswith("ray://") else address
    try:
        parts = urlsplit(f"//{rest}")
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or port is None or port < 1 or parts.path or parts.query:
        raise FewsamError(f"--ray {address} is not a cluster address; {CLUSTER_ADDRESS_HELP}")
    return host, port


def check_cluster_reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Refuse, in one line and within ``timeout`` seconds, a cluster address where nothing accepts a
    connection (a typo, a stopped head node, a firewall): left to ``ray.init``, the command would
    hang for minutes printing Ray's reconnection warnings instead. ``auto`` means the address in
    RAY_ADDRESS when that is set (as Ray reads it), which is checked the same way."""
    from_env = os.environ.get("RAY_ADDRESS", "") if address == "auto" else ""
    endpoint = cluster_endpoint(from_env or address)
    if endpoint is None:
        return
    if from_env:
        address = f"auto (RAY_ADDRESS={from_env})"
    host, port = endpoint
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        reason = f"no answer within {timeout:g} s" if isinstance(err, TimeoutError) else err.strerror or str(err)
        raise FewsamError(f"--ray {address}: no Ray cluster answers at {shown} ({reason}); start one with "
                          f"`ray start --head --port {port}` on {host} and pass its address, or use --ray local"
                          ) from None


@contextmanager
def _environment_without(name: str) -> Iterator[None]:
    """``name`` left out of the environment for the block. Ray takes RAY_ADDRESS over ``--ray local``
    (a new cluster) and an explicit HOST:PORT alike, so a variable left set in a shell profile sent
    the job to another cluster than the one the user named."""
    saved = os.environ.pop(name, None) if name else None
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


@contextmanager
def ray_cluster(address: str) -> Iterator[Any]:
    """Ray connected to the cluster ``address`` names: ``auto`` (the one ``ray start`` made on this
    machine), ``local`` (a new one on this machine, for this command only), HOST:PORT or
    ray://HOST:PORT. A connection the caller opened already (``ray.init`` in a notebook or a test) is
    used as it is and left open."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    check_cluster_reachable(address)
    try:
        with _environment_without("RAY_ADDRESS" if address != "auto" else ""):
            if address == "local":
                ray.init(include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise FewsamError(f"--ray {address}: no Ray cluster to connect to ({reason}); start one with "
                          "`ray start --head` and pass its address, or use --ray local") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def worker_count(ray: Any, device: str, cpus_per_worker: int, requested: int | None, cases: int) -> int:
    """How many workers: as asked, else one per GPU (cuda) or per ``cpus_per_worker`` CPUs of the
    cluster; never more than there are cases."""
    if requested is not None:
        if requested < 1:
            raise FewsamError(f"--ray-workers must be at least 1, not {requested}")
        return min(requested, max(cases, 1))
    resources = ray.cluster_resources()
    if device.startswith("cuda"):
        available = int(resources.get("GPU", 0))
        if available < 1:
            raise FewsamError("--device cuda with --ray: the Ray cluster has no GPU; use --device cpu")
    else:
        available = int(resources.get("CPU", 1) // cpus_per_worker)
    return max(1, min(available, max(cases, 1)))


def worker_options(device: str, cpus_per_worker: int, retries: int) -> dict[str, Any]:
    """Ray options of one worker: its CPUs (or one GPU), restarts after a crash with the case retried,
    and the allocator tuning the CLI gives itself (SAM's encoder is 2-3x faster with it)."""
    from fewsam.allocator import ALLOCATOR_TUNING

    resources: dict[str, Any] = {"num_cpus": cpus_per_worker}
    if device.startswith("cuda"):
        resources = {"num_cpus": 1, "num_gpus": 1}
    env = {"GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", ALLOCATOR_TUNING)}
    return {**resources, "max_restarts": retries, "max_task_retries": retries, "runtime_env": {"env_vars": env}}


# --- shared folders ------------------------------------------------------------------------------

@contextmanager
def shared_tokens(folders: Sequence[Path]) -> Iterator[list[str]]:
    """A token file in each folder a worker must write in, removed when the job ends: a worker that
    cannot see one runs on a node that does not mount that folder, and says so."""
    paths = []
    try:
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{TOKEN_PREFIX}{secrets.token_hex(8)}"
            path.write_text(socket.gethostname() + "\n")
            paths.append(path)
        yield [str(p) for p in paths]
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


def check_tokens(tokens: Sequence[str]) -> None:
    """Refuse to work on a node that does not see the driver's folders (a cache on a local disk
    would fill a private copy on every node, a prediction would land where nobody looks)."""
    for token in map(Path, tokens):
        if not token.exists():
            raise CacheError(f"{token.parent} is not visible from Ray worker {socket.gethostname()}: the cache, "
                             "data, run and output folders must be on a filesystem every node mounts at the "
                             "same path (docs/scaling.md)")


def absolute(path: str | Path | None) -> str | None:
    """A path every worker resolves the same way (they do not share the driver's working folder)."""
    return None if path is None else str(Path(path).expanduser().absolute())


# --- the workers ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class EncoderJob:
    """What a worker needs to rebuild the driver's encoder and cache: sent once per worker.

    ``precision`` is the driver's resolved choice, spelled as --precision spells it, so that every
    worker encodes with the numerics (and into the cache folder) the driver chose;
    ``weights_sha256`` the driver's checkpoint hash, which a worker's copy must match."""

    data: str
    model: str
    checkpoint: str | None
    cache_root: str
    precision: str
    device: str
    threads: int
    weights_sha256: str
    tokens: tuple[str, ...] = ()


def precision_option(precision: Any) -> str:
    """The --precision value that resolves to ``precision`` (an ``EncoderPrecision``) on a worker."""
    return precision.name if precision.backend == "torch" else f"{precision.name}-{precision.backend}"


class CaseWorker:
    """The common part of a worker: a setup error (a folder it cannot see, other weights) is kept
    and raised by every call, so that the driver reports it as one line instead of a dead actor."""

    def __init__(self, job: Any) -> None:
        """``job``: the EncoderJob / PredictJob the worker serves (its ``threads`` and ``tokens`` used here)."""
        self.job = job
        self.host, self.pid, self.error = socket.gethostname(), os.getpid(), None
        try:
            import torch

            torch.set_num_threads(job.threads)  # the same threads as a local run: the same float sums
            check_tokens(job.tokens)
            self.setup()
        except FewsamError as err:
            self.error = err

    def setup(self) -> None:
        raise NotImplementedError

    def ready(self) -> dict[str, Any]:
        """Where this worker runs; raises its setup error."""
        self._check()
        return {"host": self.host, "pid": self.pid}

    def _check(self) -> None:
        if self.error is not None:
            raise self.error


class EmbedWorker(CaseWorker):
    """Fills the cache for one case per call."""

    def setup(self) -> None:
        from fewsam.cache import EmbeddingCache
        from fewsam.data import open_dataset
        from fewsam.models.precision import resolve_precision
        from fewsam.models.registry import load_model

        job = self.job
        self.dataset = open_dataset(job.data)
        model = load_model(job.model, job.checkpoint, device=job.device)
        if model.weights_sha256 != job.weights_sha256:
            raise ModelError(f"Ray worker {self.host} reads other weights for {job.model} at "
                             f"{job.checkpoint or 'the bundled checkpoint'} than the driver (sha256 mismatch); "
                             "install the same checkpoint on every node")
        self.cache = EmbeddingCache(job.cache_root, model, resolve_precision(job.precision, job.device))

    def embed(self, case_id: str) -> dict[str, Any]:
        """Embed every slice of ``case_id`` not in the cache yet; counts of what it did."""
        from fewsam.embedded import fill_case

        self._check()
        hits, misses, start = self.cache.hits, self.cache.misses, time.perf_counter()
        case = self.dataset.load(case_id, with_label=False)
        fill_case(case, self.cache, self.job.device)
        return {"case": case_id, "slices": case.num_slices, "encoded": self.cache.misses - misses,
                "hits": self.cache.hits - hits, "seconds": time.perf_counter() - start, "host": self.host,
                "pid": self.pid}


@dataclass(frozen=True)
class PredictJob:
    """What a worker needs to rebuild the driver's predictor (``predict.case_predictor``)."""

    run: str
    data: str
    cache_root: str
    precision: str
    device: str
    threads: int
    refined: bool
    tokens: tuple[str, ...] = ()
    probabilities: bool = False  # --save-probabilities: each case's beside its prediction
    class_names: tuple[tuple[int, str], ...] = ()  # (label value, name) of each class: probabilities', SEG's
    rtstruct: bool = False  # --rtstruct: each DICOM series' prediction as an RT structure set too


class PredictWorker(CaseWorker):
    """Writes the prediction of one case per call into the job's staging folder."""

    def setup(self) -> None:
        from fewsam.models.precision import resolve_precision
        from fewsam.predict import case_predictor, check_probabilities, open_for_run
        from fewsam.runs import read_config

        job = self.job
        config = read_config(Path(job.run))
        self.dataset = open_for_run(job.data, config)
        encoder = resolve_precision(job.precision, job.device)
        self.predictor, self.cache = case_predictor(Path(job.run), config, self.dataset,
                                                    job.refined, job.cache_root, encoder, job.device)
        if job.probabilities:
            check_probabilities(self.predictor, config)

    def predict(self, case_id: str, staging: str) -> dict[str, Any]:
        """Predict ``case_id`` into ``staging``; the prediction's path relative to it, and the paths of all the
        files it wrote (``case_files``, seen here, on the host that wrote them)."""
        from fewsam.predict import case_files, predict_case_file

        self._check()
        names = dict(self.job.class_names) if self.job.probabilities else None
        seg_names = dict(self.job.class_names) if self.dataset.format == "dicom" else None
        rel = predict_case_file(self.dataset, case_id, self.predictor, self.cache, self.job.device, Path(staging),
                                names=names, seg_names=seg_names, rtstruct=self.job.rtstruct)
        files = case_files(Path(staging), rel, names is not None, seg_names is not None, self.job.rtstruct)
        return {"case": case_id, "path": str(rel), "files": [str(path) for path in files], "host": self.host,
                "pid": self.pid}


# --- the driver ----------------------------------------------------------------------------------

Call = Callable[[Any, str], Any]  # (actor, case id) -> ObjectRef


def start_workers(ray: Any, worker: type, job: Any, count: int, options: dict[str, Any],
                  timeout: float = START_TIMEOUT) -> list[Any]:
    """``count`` actors of ``worker``, each set up (model loaded, folders checked) before any case is
    sent: a setup error is reported once, as one line, not once per case; workers that the cluster
    cannot place (its CPUs taken by other jobs) are reported instead of waited for forever."""
    actors = [ray.remote(worker).options(**options).remote(job) for _ in range(count)]
    refs = [actor.ready.remote() for actor in actors]
    _, waiting = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    if waiting:
        stop_workers(ray, actors)
        raise FewsamError(f"the Ray cluster started {count - len(waiting)} of {count} workers within "
                          f"{timeout:.0f} s; are its CPUs (GPUs) taken by other jobs? See `ray status`, or "
                          "ask for fewer with --ray-workers")
    try:
        for ref in refs:
            result_of(ray, ref, None, "starting", options["max_restarts"])
    except BaseException:
        stop_workers(ray, actors)
        raise
    return actors


def map_cases(ray: Any, actors: list[Any], call: Call, case_ids: Sequence[str], on_result: Callable[[dict], None],
              what: str, retries: int) -> None:
    """Each case to the next free worker, results to ``on_result`` as they come (in any order)."""
    queue, idle = list(reversed(case_ids)), list(actors)
    pending: dict[Any, tuple[str, Any]] = {}
    while queue or pending:
        while queue and idle:
            actor, case_id = idle.pop(), queue.pop()
            pending[call(actor, case_id)] = (case_id, actor)
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        case_id, actor = pending.pop(ref)
        on_result(result_of(ray, ref, case_id, what, retries))
        idle.append(actor)


def result_of(ray: Any, ref: Any, case_id: str | None, what: str, retries: int) -> Any:
    """``ray.get(ref)``, with a worker's user error raised again as itself (one line on the CLI) and a
    worker that died beyond its restarts turned into one line that names the case."""
    exceptions = ray.exceptions
    subject = f"case {case_id}" if case_id is not None else "a worker"
    try:
        return ray.get(ref)
    except exceptions.RayTaskError as err:
        if isinstance(err.cause, FewsamError):
            raise type(err.cause)(str(err.cause)) from None
        raise
    except exceptions.RayActorError as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise FewsamError(f"a Ray worker died while {what} {subject} and {retries} restart(s) did not bring it "
                          f"back ({reason}); finished work is kept: run the same command again to do the "
                          "rest") from None
    except exceptions.RayError as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise FewsamError(f"Ray failed while {what} {subject} ({type(err).__name__}: {reason}); finished work "
                          "is kept: run the same command again to do the rest") from None


def stop_workers(ray: Any, actors: list[Any]) -> None:
    """Free the workers' CPUs for the cluster's next job."""
    for actor in actors:
        ray.kill(actor)


def embed_on_ray(address: str, job: EncoderJob, case_ids: Sequence[str], workers: int | None = None,
                 retries: int = RETRIES, show_progress: bool = True,
                 on_case: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Fill the cache for ``case_ids`` on the Ray cluster at ``address``. ``on_case`` sees each
    case's counts as it finishes. Returns totals, the workers used and the throughput."""
    from fewsam.progress import progress_bar

    totals = {"cases": len(case_ids), "slices": 0, "encoded": 0, "cache_hits": 0}
    with ray_cluster(address) as ray, shared_tokens([Path(job.cache_root)]) as tokens:
        count = worker_count(ray, job.device, job.threads, workers, len(case_ids))
        job = replace(job, tokens=tuple(tokens))
        actors = start_workers(ray, EmbedWorker, job, count, worker_options(job.device, job.threads, retries))
        start = time.perf_counter()
        try:
            with progress_bar(show_progress) as bar:
                task = bar.add_task(f"embed on {count} Ray workers", total=len(case_ids))

                def done(result: dict) -> None:
                    totals["slices"] += result["slices"]
                    totals["encoded"] += result["encoded"]
                    totals["cache_hits"] += result["hits"]
                    bar.update(task, advance=1)
                    if on_case is not None:
                        on_case(result)

                map_cases(ray, actors, lambda actor, case_id: actor.embed.remote(case_id), case_ids, done,
                          "embedding", retries)
        finally:
            stop_workers(ray, actors)
        seconds = time.perf_counter() - start
    return {**totals, "workers": count, "seconds": round(seconds, 3),
            "encoded_per_second": round(totals["encoded"] / seconds, 4) if seconds > 0 else None}


def predict_on_ray(address: str, job: PredictJob, case_ids: Sequence[str], staging: Path,
                   workers: int | None = None, retries: int = RETRIES, show_progress: bool = True,
                   on_case: Callable[[str, list[Path]], None] | None = None) -> list[Path]:
    """Predict ``case_ids`` into ``staging`` on the Ray cluster; the predictions' relative paths, in
    case order. ``on_case(case id, its files)`` as each case's files are in place (predict's journal)."""
    from fewsam.progress import progress_bar

    written: dict[str, Path] = {}
    folders = [staging] + ([Path(job.cache_root)] if job.cache_root else [])
    with ray_cluster(address) as ray, shared_tokens(folders) as tokens:
        count = worker_count(ray, job.device, job.threads, workers, len(case_ids))
        job = replace(job, tokens=tuple(tokens))
        actors = start_workers(ray, PredictWorker, job, count, worker_options(job.device, job.threads, retries))
        try:
            with progress_bar(show_progress) as bar:
                task = bar.add_task(f"predict on {count} Ray workers", total=len(case_ids))

                def done(result: dict) -> None:
                    written[result["case"]] = Path(result["path"])
                    if on_case is not None:
                        on_case(result["case"], [Path(path) for path in result["files"]])
                    bar.update(task, advance=1)

                map_cases(ray, actors, lambda actor, case_id: actor.predict.remote(case_id, str(staging)),
                          case_ids, done, "predicting", retries)
        finally:
            stop_workers(ray, actors)
    return [written[case_id] for case_id in case_ids]


def embed_cases_on_ray(address: str, data: str | Path, case_ids: Sequence[str], cache: Any,
                       checkpoint: str | Path | None, device: str, workers: int | None = None,
                       show_progress: bool = True, retries: int = RETRIES,
                       on_case: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """``api.embed_dataset`` on a Ray cluster: the workers rebuild the driver's ``cache`` (model,
    weights, precision) and fill it. Returns the local command's counts plus the workers and rate."""
    cache.prepare_encoder()  # an OpenVINO conversion happens once here, not in every worker at once
    job = EncoderJob(data=absolute(data), model=cache.model.name, checkpoint=absolute(checkpoint),
                     cache_root=absolute(cache.dir.parent), precision=precision_option(cache.precision),
                     device=device, threads=CPUS_PER_WORKER, weights_sha256=cache.model.weights_sha256)
    stats = embed_on_ray(address, job, case_ids, workers, retries, show_progress, on_case)
    return {**stats, "cache": str(cache.dir), "precision": cache.precision.name}
