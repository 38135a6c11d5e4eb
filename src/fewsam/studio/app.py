"""The studio's HTTP API (FastAPI) and the page's static files.

Every endpoint takes case ids and slice numbers, never file paths: what the server reads is the
dataset (through fewsam's readers) and the project folder, and the static files are served by
Starlette's ``StaticFiles``, which refuses paths that leave its folder. Mutations are checked
before anything is written: upload size (capped before the body is read), label shape and class
values. ``Guard`` enforces the binding's rules on every request (see ``security.py``).

    GET    /api/info                       dataset, classes, cases (labelled slices), job, latest fit
    GET    /api/slice?case=C&z=Z           image (float32), studio label and its revision, dataset label (or why it cannot be read), prediction
    PUT    /api/label?case=C&z=Z&h=H&w=W   save a slice's label (H*W bytes of class values); with &base=REVISION
                                           only if no other tab saved the slice since (else 409)
    DELETE /api/label?case=C&z=Z           take a slice out of the labelled set
    POST   /api/accept?case=C&z=Z          the prediction of a slice becomes its label; a labelled slice's
                                           label is replaced only with &replace=true (else 409)
    POST   /api/fit     {steps, views, cases, all_cases}    start a fit (202; 409 while a job runs)
    POST   /api/predict {cases, all_cases}                  predict more cases with the latest fit
    GET    /api/job                        the current job's state and progress
    DELETE /api/job                        cancel the running job (404 when none runs)
    POST   /api/job/resume                 start the interrupted job, or the failed fit that left a checkpoint,
                                           again (a fit from its last checkpoint; 404 when there is none,
                                           409 while a job runs)
    GET    /api/suggest                    the unlabelled slice with the highest predictive entropy
    POST   /api/export                     write the labelled set in the dataset's format
"""

from __future__ import annotations

import base64
import errno
import shutil
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from fewsam.config import DEFAULT_CACHE
from fewsam.errors import FewsamError, disk_full_message, is_disk_full, is_not_permitted, is_out_of_memory
from fewsam.studio.errors import (StudioError, again, for_the_page, request_memory_message, status_of,
                                  studio_folders)
from fewsam.studio.jobs import JobRunner, WorkerArgv, worker_argv
from fewsam.studio.project import FITS, JOBS, LOG, Project, remove_label_leftovers
from fewsam.studio.security import BodyCap, Guard

STATIC = Path(__file__).parent / "static"
MAX_UPLOAD = 32 * 2**20  # a 4096 x 4096 slice label is 16 MiB
DEFAULT_STEPS = 80  # fewsam demo's recipe (``demo_config``): tested to agree
DEFAULT_VIEWS = 8  # FewShotConfig's default: every dihedral view of each labelled slice
MAX_STEPS = 20000
WINDOW_PERCENTILES = (0.5, 99.5)
WINDOW_SAMPLE = 1_000_000
FASTAPI_BODY_ERROR = "There was an error parsing the body"  # fastapi.routing's words for any other body error


@dataclass
class StudioSettings:
    """How one studio runs: what it labels, where it writes, how it is reached and how it fits."""

    data: Path
    project: Path
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None  # required on every request when set (non-loopback bindings)
    device: str = "cpu"
    cache: str = DEFAULT_CACHE
    precision: str = "fp32"
    max_upload: int = MAX_UPLOAD
    worker_argv: WorkerArgv = worker_argv
    worker_env: dict[str, str] | None = None  # None: the tuned environment of ``jobs.worker_env``


class ProjectLog:
    """PROJECT/studio.log: one timestamped line per thing the server did (no global logging state)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def __call__(self, message: str) -> None:
        """Append one line; a log that cannot be written (a full disk, a studio.log another user owns)
        is skipped, so that it never fails a label save that already succeeded, nor the start."""
        try:
            with self._lock, open(self.path, "a", encoding="utf-8") as fh:
                fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
        except OSError:
            pass


class FitRequest(BaseModel):
    """Strict types: a script's ``{"steps": true}`` was a 1-step fit and ``"5"`` five steps. Unknown fields
    are refused: a misspelt ``{"step": 5}`` would otherwise start a fit of the default 80 steps."""

    model_config = ConfigDict(strict=True, extra="forbid")
    steps: int = Field(DEFAULT_STEPS, ge=1, le=MAX_STEPS)
    views: int = Field(DEFAULT_VIEWS, ge=1, le=8)
    cases: list[str] = Field(default_factory=list, max_length=100_000)
    all_cases: bool = False


class PredictRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    cases: list[str] = Field(default_factory=list, max_length=100_000)
    all_cases: bool = False


def b64(array: np.ndarray | None, dtype: str) -> str | None:
    """An array's bytes for the page (little-endian, row-major), or None."""
    return None if array is None else base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode()


def intensity_window(image: np.ndarray) -> list[float]:
    """The case's default display range: 0.5th to 99.5th percentile of a sample of its voxels, so a few
    bright voxels (CT metal, MRI flow artefacts) do not darken every slice."""
    flat = image.reshape(-1)
    sample = flat[:: max(1, flat.size // WINDOW_SAMPLE)]
    sample = sample[np.isfinite(sample)]
    if not sample.size:
        return [0.0, 1.0]
    lo, hi = (float(v) for v in np.percentile(sample, WINDOW_PERCENTILES))
    return [lo, hi] if hi > lo else [float(sample.min()), float(sample.max()) or 1.0]


def case_slices(project: Project, case_id: str) -> dict[str, Any]:
    """{"slices": n} for the case list, or {"slices": 0, "error": why} for a case whose file cannot be
    read: one damaged scan among many must not take the whole list (and every other case) away."""
    try:
        return {"slices": project.num_slices(case_id)}
    except FewsamError as err:
        return {"slices": 0, "error": str(err)}
    except OSError as err:  # a file this user may not read
        return {"slices": 0, "error": f"cannot read case {case_id}: {err.strerror or err} ({err.filename})"}


def create_app(settings: StudioSettings) -> FastAPI:
    """The studio app for one dataset and project folder (opened here: a bad dataset fails at once)."""
    project = Project(settings.data, settings.project)
    runner = JobRunner(project.folder / JOBS, settings.worker_argv, settings.worker_env)
    log = ProjectLog(project.folder / LOG)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log(f"studio started on {settings.host}:{settings.port} for {project.data}")
        # Served now: the project lock is held (``one_studio``). The interrupted save first: undoing it puts back
        # the label file it kept aside, which is a leftover only after that.
        finished = project.finish_interrupted_save()
        if finished is not None:
            log(finished)
        remove_label_leftovers(project.labels_dir)
        yield
        runner.stop()
        log("studio stopped")

    app = FastAPI(title="fewsam studio", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.project, app.state.runner, app.state.settings, app.state.log = project, runner, settings, log
    # BodyCap added first sits inside Guard: its refusal, raised while an endpoint reads the body, reaches
    # FastAPI as raised (through Guard, an HTTP middleware, it would arrive wrapped in an ExceptionGroup).
    app.add_middleware(BodyCap, max_upload=settings.max_upload)
    app.middleware("http")(Guard(settings.host, settings.token, settings.max_upload))
    _add_error_handlers(app, log)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _add_page(app, settings)
    _add_browse(app, project)
    _add_labels(app, project, settings, log)
    _add_jobs(app, project, runner, settings, log)
    return app


def _add_error_handlers(app: FastAPI, log: ProjectLog) -> None:
    @app.exception_handler(FewsamError)
    async def fewsam_error(request: Request, exc: FewsamError) -> JSONResponse:
        return JSONResponse({"detail": for_the_page(str(exc), request_kind(request))}, status_code=status_of(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": "; ".join(map(validation_message, exc.errors()))}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """FastAPI's own "There was an error parsing the body" (a body that is not UTF-8, JSON nested too
        deeply, a number of thousands of digits) said as what is wrong with the body; others as they are."""
        if exc.status_code == 400 and exc.detail == FASTAPI_BODY_ERROR and exc.__cause__ is not None:
            return JSONResponse({"detail": unreadable_body_message(exc.__cause__)}, status_code=422)
        return await http_exception_handler(request, exc)

    @app.exception_handler(OSError)
    async def os_error(request: Request, exc: OSError) -> JSONResponse:
        log(f"{request.method} {request.url.path} failed: {exc}")
        folder, kind = app.state.project.folder, request_kind(request)
        blocker = in_the_way(exc, folder)
        if blocker is not None:
            return JSONResponse({"detail": in_the_way_message(blocker, kind)}, status_code=409)
        return JSONResponse({"detail": os_error_message(exc, folder, kind, app.state.project.data)},
                            status_code=507 if is_disk_full(exc) else 500)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        if is_out_of_memory(exc):  # not the studio's fault, nor the request's: said as the workers say it
            log(f"{request.method} {request.url.path} ran out of memory: {exc}")
            return JSONResponse({"detail": request_memory_message(exc, request_kind(request))}, status_code=503)
        log(f"internal error on {request.method} {request.url.path}: {type(exc).__name__}: {exc}")
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)


def validation_message(error: dict[str, Any]) -> str:
    """One refused request field as "field: reason". A body that is not JSON at all says so (FastAPI
    reports it at a character position, which would read as a field named "12"), and so does one that
    is not a JSON object (FastAPI's "request: Field required" for an empty body named nothing)."""
    if error.get("type") == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", error.get("msg"))
        return f"the request body is not valid JSON ({reason} at character {error['loc'][-1]})"
    field = ".".join(str(p) for p in error.get("loc", ())[1:])
    if error.get("loc", ())[:1] == ("body",) and not field:
        return f"{body_shape(error)}; send a JSON object ({{...}}) with Content-Type: application/json"
    if error.get("type") == "extra_forbidden":
        return f"{field}: not a setting of this request (misspelt?)"
    return f"{field or 'request'}: {error.get('msg')}"


def body_shape(error: dict[str, Any]) -> str:
    """What a request body that should be a JSON object is instead: empty, of another content type (FastAPI
    then hands its bytes on unread), or another JSON value."""
    value = error.get("input")
    if error.get("type") == "missing":
        return "the request body is empty"
    if isinstance(value, (bytes, bytearray)):
        return "the request body was not sent as JSON"
    kind = {type(None): "null", bool: "true or false", list: "an array", str: "a string"}.get(type(value), "a number")
    return f"the request body is {kind}, not a JSON object"


def unreadable_body_message(cause: BaseException) -> str:
    """Why a request body could not be read as JSON, for the errors FastAPI reports only as "There was
    an error parsing the body"."""
    if isinstance(cause, UnicodeDecodeError):
        return "the request body is not UTF-8 text; send JSON encoded as UTF-8"
    if isinstance(cause, RecursionError):
        return "the request body's JSON is nested too deeply to read"
    return f"the request body is not valid JSON ({str(cause).split(';')[0]})"  # not Python's own advice after it


# What each request the page sends does, as ``for_the_page`` names it (the button that sends it again).
REQUEST_KINDS = {("PUT", "/api/label"): "save", ("DELETE", "/api/label"): "unmark", ("POST", "/api/accept"): "accept",
                 ("POST", "/api/fit"): "fit", ("POST", "/api/predict"): "predict",
                 ("POST", "/api/job/resume"): "resume", ("POST", "/api/export"): "export"}


def request_kind(request: Request) -> str:
    """What a request does (``REQUEST_KINDS``), or "request" for one no button sends again."""
    return REQUEST_KINDS.get((request.method, request.url.path), "request")


def in_the_way(exc: OSError, project: Path) -> Path | None:
    """The file or folder in the project folder standing where the studio writes the other kind, when that is
    why ``exc`` was raised: a folder where a label file goes (EISDIR), a file where a folder of the studio's
    goes (labels/, jobs/, fits/: ENOTDIR, or EEXIST from making it). Such a thing is no studio's doing, and
    neither "writable" nor a server error says so; None for any other error."""
    if exc.errno not in (errno.EISDIR, errno.ENOTDIR, errno.EEXIST):
        return None
    for name in (exc.filename2, exc.filename):  # os.replace(temporary, target) names the target second
        if not isinstance(name, str):
            continue
        existing = next((p for p in (Path(name), *Path(name).parents) if p.exists()), None)
        if existing is None or existing == project or project not in existing.parents:
            continue
        if existing.is_dir() == (exc.errno == errno.EISDIR):
            return existing
    return None


def in_the_way_message(blocker: Path, kind: str) -> str:
    """What to do about a file or folder in the way (``in_the_way``)."""
    what = "a folder where the studio writes a file" if blocker.is_dir() else "a file where the studio keeps a folder"
    return f"{blocker} is {what}; the studio did not put it there: move it out of the project folder, {again(kind)}"


def os_error_message(exc: OSError, project: Path, kind: str = "request", data: Path | None = None) -> str:
    """A file the studio could not read or write, as the page shows it: what failed, where, what to do. A
    full disk is said as a job's is (``for_the_page``): a request writes only into the project folder (the
    embedding cache is the workers'), which is named when the error names no file. A file of the dataset
    ``data`` is one the studio only reads, so only reading it is advised on."""
    where = f" ({exc.filename})" if exc.filename else ""
    reason = exc.strerror or str(exc)
    if is_disk_full(exc):
        return for_the_page(disk_full_message(exc), kind, studio_folders(str(project)))
    if data is not None and isinstance(exc.filename, str) and data in Path(exc.filename).parents:
        advice = "give the studio read access to it" if is_not_permitted(exc) else f"restore it in the dataset {data}"
        return f"the studio could not read {exc.filename} of the dataset: {reason}; {advice}, {again(kind)}"
    return (f"the studio could not read or write a file{where}: {reason}; check that the project folder "
            f"{project} is writable (and the dataset readable), then try again")


def _add_page(app: FastAPI, settings: StudioSettings) -> None:
    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        """The page, its asset links carrying the token when one is required."""
        from urllib.parse import quote

        query = f"?token={quote(settings.token)}" if settings.token else ""
        html = (STATIC / "index.html").read_text(encoding="utf-8").replace("__ASSET_QUERY__", query)
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})


def _add_browse(app: FastAPI, project: Project) -> None:
    windows: dict[str, list[float]] = {}

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        labelled = project.labelled()
        predicted = set(project.predicted_cases())
        cases = [{"id": c, **case_slices(project, c), "labelled": labelled.get(c, []),
                  "predicted": c in predicted, "has_label": project.dataset.has_label(c)} for c in project.case_ids()]
        return {"data": str(project.data), "name": project.data.name, "layout": project.dataset.layout,
                "format": project.dataset.format, "project": str(project.folder),
                "classes": [{"value": v, "name": n} for v, n in sorted(project.class_map.names.items())],
                "cases": cases, "latest_fit": project.latest_run(), "job": app.state.runner.status(),
                "defaults": {"steps": DEFAULT_STEPS, "views": DEFAULT_VIEWS, "max_steps": MAX_STEPS}}

    @app.get("/api/slice")
    def get_slice(case: str = Query(...), z: int = Query(...)) -> dict[str, Any]:
        project.check_slice(case, z)
        loaded = project.load_case(case)
        if case not in windows:
            windows[case] = intensity_window(loaded.image)
        prediction = project.prediction(case)
        image = loaded.image[z]
        label, labelled, revision = project.saved_slice(case, z)
        return {"case": case, "z": z, "slices": loaded.num_slices, "height": int(image.shape[0]),
                "width": int(image.shape[1]), "channels": 3 if image.ndim == 3 else 1,
                "image": b64(image, "<f4"), "window": windows[case],
                "label": b64(label, "u1"), "labelled": labelled, "revision": revision,
                "dataset_label": b64(loaded.slice_label(z), "u1"), "dataset_label_error": project.label_error(case),
                "prediction": None if prediction is None else b64(prediction.labels[z], "u1"),
                "entropy": None if prediction is None else float(prediction.entropy[z]),
                "fit": None if prediction is None else prediction.fit}

    @app.get("/api/suggest")
    def suggest() -> dict[str, Any]:
        return project.suggest()


def _add_labels(app: FastAPI, project: Project, settings: StudioSettings, log: ProjectLog) -> None:
    @app.put("/api/label")
    async def put_label(request: Request, case: str = Query(...), z: int = Query(...), h: int = Query(..., ge=1),
                        w: int = Query(..., ge=1),
                        base: str | None = Query(None, min_length=1, max_length=64)) -> dict[str, Any]:
        """``base``: the slice's revision when the page loaded it (GET /api/slice); a save painted on an
        older version than the saved one (another tab saved since) is refused with 409."""
        raw = await request.body()  # capped by BodyCap as it arrives
        await run_in_threadpool(project.check_slice, case, z)
        label = await run_in_threadpool(project.check_label, raw, case, z, h, w)
        revision = await run_in_threadpool(project.save_slice, case, z, label, base)
        log(f"saved label {case} slice {z}")
        return {"case": case, "labelled": project.labelled().get(case, []), "revision": revision}

    @app.delete("/api/label")
    def delete_label(case: str = Query(...), z: int = Query(...)) -> dict[str, Any]:
        project.unmark(case, z)
        log(f"unmarked {case} slice {z}")
        return {"case": case, "labelled": project.labelled().get(case, [])}

    @app.post("/api/accept")
    def accept(case: str = Query(...), z: int = Query(...), replace: bool = Query(False)) -> dict[str, Any]:
        project.accept_prediction(case, z, replace)
        log(f"accepted the prediction of {case} slice {z}" + (" in place of its label" if replace else ""))
        return {"case": case, "labelled": project.labelled().get(case, [])}

    @app.post("/api/export")
    def export() -> dict[str, Any]:
        result = project.export()
        log(f"exported {result['slices']} labelled slices of {result['cases']} cases to {result['folder']}")
        return result


def _add_jobs(app: FastAPI, project: Project, runner: JobRunner, settings: StudioSettings, log: ProjectLog) -> None:
    def base_spec(cases: list[str], all_cases: bool) -> dict[str, Any]:
        for case in cases:
            project.check_case(case)
        chosen = project.case_ids() if all_cases else list(dict.fromkeys(cases))
        return {"data": str(project.data), "project": str(project.folder), "device": settings.device,
                "cache": settings.cache, "precision": settings.precision, "cases": chosen}

    @app.post("/api/fit", status_code=202)
    def start_fit(request: FitRequest) -> dict[str, Any]:
        made: list[Path] = []  # what to remove if the fit does not start: its folder, and PROJECT/fits if new

        def prepare() -> dict[str, Any]:
            fits_made = not (project.folder / FITS).exists()
            fit_dir = project.next_fit_dir()
            made.append(fit_dir.parent if fits_made else fit_dir)
            count, blank = project.write_fit_dataset(fit_dir / "data")
            return {"fit_dir": str(fit_dir), "labelled_slices": count, "blank_slices_left_out": blank}

        spec = {**base_spec(request.cases, request.all_cases), "steps": request.steps, "views": request.views}
        try:
            job = runner.start("fit", spec, prepare)
        except BaseException:  # a refused fit (no labels, a full disk) leaves the project as it was
            for folder in made:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        blank = job.spec["blank_slices_left_out"]
        log(f"started fit {job.id} ({job.spec['labelled_slices']} labelled slices, {request.steps} steps, "
            f"{request.views} views) in {job.spec['fit_dir']}"
            + (f"; left out {len(blank)} blank labelled slice(s): {', '.join(blank)}" if blank else ""))
        return runner.status()

    @app.post("/api/predict", status_code=202)
    def start_predict(request: PredictRequest) -> dict[str, Any]:
        latest = project.run_to_predict_with()
        spec = {**base_spec(request.cases, request.all_cases), "run": latest["run"], "fit": latest["fit"]}
        if not spec["cases"]:
            raise StudioError("say which cases to predict")
        job = runner.start("predict", spec)
        log(f"started predicting {len(spec['cases'])} case(s) with {latest['fit']} ({job.id})")
        return runner.status()

    @app.get("/api/job")
    def job_status() -> dict[str, Any]:
        return runner.status()

    @app.post("/api/job/resume", status_code=202)
    def resume_job() -> dict[str, Any]:
        """The interrupted job again, with this studio's device, cache and precision, on the dataset it serves
        (moved since the job started, with its project, the dataset's old folder is gone)."""
        job = runner.resume({"device": settings.device, "cache": settings.cache, "precision": settings.precision,
                             "data": str(project.data)})
        log(f"resumed {job.spec['resumes']} as {job.id}" + (f" in {job.spec['fit_dir']}" if job.kind == "fit" else ""))
        return runner.status()

    @app.delete("/api/job")
    def cancel_job() -> dict[str, Any]:
        status = runner.cancel()
        log(f"cancelled {status['kind']} {status['id']}")
        return status
