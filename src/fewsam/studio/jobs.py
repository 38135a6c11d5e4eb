"""One background job at a time (a fit, or predicting more cases) in a worker subprocess.

The server never fits in its own process: a worker that crashes, runs out of memory or is killed
leaves the server answering and the labels on disk as they were; the page is told what happened
(the worker's own error line, or its exit code and the end of its log). A second job while one
runs is refused (``Conflict``, HTTP 409): two fits would compete for the CPU and for the meaning
of "the latest fit". Workers run in their own process group, so a studio killed hard leaves its
worker running; the next studio on the project adopts it (``LeftRunning``) rather than starting a
second fit on the same run. A job whose worker ended unfinished with no studio watching it (the
studio was stopped, Ctrl+C, while it ran) is shown after the restart as ``interrupted``, with how far
it got, and ``resume`` starts it again on its own spec: a fit goes on from its run's last checkpoint.
A fit that failed (disk full, out of memory, a crash) after its training loop saved a resume checkpoint
is offered Resume too, in this studio and the next: the steps before that checkpoint are not lost.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fewsam.atomic import atomic_write_bytes
from fewsam.errors import disk_full_message
from fewsam.studio.errors import Conflict, NotFound, again, for_the_page, memory_advice, remedy, studio_folders

WorkerArgv = Callable[[Path], list[str]]
DISK_FULL_EXIT = errno.ENOSPC  # the worker's exit code when a full disk kept it from writing why it failed
LOG_TAIL_LINES = 6
FIT_LOG_TAIL = 16384  # bytes of RUN/fit.log read for its newest progress line (a line every 5% or 30 s)
# "2026-01-01 12:00:00 mirror val 3/10 (30%), 0:21 elapsed, ~0:50 left": a line of ``progress.PlainProgress``
PROGRESS_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (?P<text>(?P<task>\D+?) \d+/\d+ \(\d+%\).*)$")


def worker_argv(spec: Path) -> list[str]:
    """The worker command: this Python running ``fewsam.studio.worker`` on the job's spec file."""
    return [sys.executable, "-m", "fewsam.studio.worker", str(spec)]


def worker_env() -> dict[str, str]:
    """The worker's environment: glibc's allocator tuned as the CLI tunes it (2-3x faster SAM passes)."""
    from fewsam.allocator import ALLOCATOR_TUNING

    return dict(os.environ, GLIBC_TUNABLES=os.environ.get("GLIBC_TUNABLES", ALLOCATOR_TUNING), PYTHONUNBUFFERED="1")


class LeftRunning:
    """A worker that an earlier studio started and that outlived it (the server was killed hard; its
    workers run in their own process group): enough of ``Popen`` to watch it and stop it."""

    def __init__(self, pid: int, spec_file: Path) -> None:
        self.pid, self.spec_file = pid, spec_file
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not worker_alive(self.pid, self.spec_file):
            self.returncode = 0  # not our child: its exit code is lost; status.json says how it ended
        return self.returncode

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.spec_file), timeout)
            time.sleep(0.1)
        return 0


class Ended:
    """The worker of a job that ended before this studio started: nothing left to watch or stop."""

    pid: int | None = None
    returncode = 0

    def poll(self) -> int:
        return 0

    def wait(self, timeout: float) -> int:
        return 0


FINAL_STATES = ("done", "failed", "cancelled")  # status.json states after which a job is not taken up again
STOPPED_WITH_THE_STUDIO = "interrupted"  # the state the server records for the worker it stops when it stops


def worker_alive(pid: int, spec_file: Path) -> bool:
    """Whether process ``pid`` lives and is the worker of ``spec_file`` (not another program that
    was given the same pid since)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError, OverflowError):
        return False
    try:
        return str(spec_file).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return not Path("/proc").is_dir()  # no /proc (macOS): trust the pid


@dataclass
class Job:
    """A started worker: its folder (spec, status.json, worker.log) and process."""

    id: str
    kind: str
    folder: Path
    process: subprocess.Popen | LeftRunning | Ended
    spec: dict[str, Any]
    started: float = field(default_factory=time.time)
    cancelled: bool = False
    interrupted: bool = False  # ended unfinished before this studio started: shown so, and resumable
    oom_kills_at_start: int | None = field(default_factory=lambda: oom_kills())  # None: not countable here
    oom_kills_at_end: int | None = None  # read once, when the worker is first seen killed by SIGKILL

    @property
    def status_file(self) -> Path:
        return self.folder / "status.json"

    @property
    def log_file(self) -> Path:
        return self.folder / "worker.log"


class JobRunner:
    """Starts workers in PROJECT/jobs/job-NNNN and reports on the current (or last) one."""

    def __init__(self, folder: Path, argv: WorkerArgv = worker_argv, env: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.argv = argv
        self.env = env
        self.job: Job | None = self._last_unfinished()
        self._lock = threading.Lock()

    def _last_unfinished(self) -> Job | None:
        """The last job when it did not finish: adopted when its worker still runs after the studio that
        started it was killed (the page shows its progress and no second fit starts on the same run), or
        marked ``interrupted`` when its worker is gone (the studio was stopped while it ran), so that the
        page says how far it got and offers to resume it instead of forgetting it. A job folder without a
        job.json (a studio killed between making the folder and writing it) is a job that never started,
        passed over so that it does not hide the job before it."""
        numbers = [int(p.name[4:]) for p in self.folder.glob("job-*") if p.name[4:].isdigit()]
        started_jobs = [self.folder / f"job-{n:04d}" for n in sorted(numbers, reverse=True)
                        if (self.folder / f"job-{n:04d}" / "job.json").exists()]
        if not started_jobs:
            return None
        folder = started_jobs[0]
        spec, record = _read_json(folder / "job.json"), _read_json(folder / "status.json") or {}
        if not is_job_spec(spec):
            return None
        spec = in_project(spec, self.folder.parent)
        started = (folder / "job.json").stat().st_mtime
        if record.get("state") == "failed" and str(spec.get("kind", "fit")) == "fit":
            job = Job(folder.name, "fit", folder, Ended(), spec, started=started)
            return job if resumable_after_failing(job) else None
        if record.get("state") in FINAL_STATES:
            return None
        pid = record.get("pid")
        if isinstance(pid, int) and not isinstance(pid, bool):
            process = LeftRunning(pid, folder / "job.json")
            if process.poll() is None:
                return Job(folder.name, str(spec.get("kind", "fit")), folder, process, spec, started=started)
        return Job(folder.name, str(spec.get("kind", "fit")), folder, Ended(), spec, started=started,
                   interrupted=True)

    def running(self) -> bool:
        return self.job is not None and self.job.process.poll() is None

    def start(self, kind: str, spec: dict[str, Any], prepare: Callable[[], dict[str, Any]] | None = None) -> Job:
        """Start a worker, or refuse with Conflict while one runs. ``prepare`` (run under the same lock,
        so two requests cannot both pass the check) returns more of the spec, e.g. the fit's data."""
        with self._lock:
            self._refuse_while_running()
            spec = {**spec, **(prepare() if prepare else {})}
            folder = self._new_folder()
            try:
                spec = {**spec, "kind": kind, "status": str(folder / "status.json")}
                atomic_write_bytes(folder / "job.json", json.dumps(spec, indent=1).encode())
                with open(folder / "worker.log", "ab") as log:
                    process = subprocess.Popen(self.argv(folder / "job.json"), stdout=log, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, env=self.env if self.env is not None
                                               else worker_env(), process_group=0)
            except BaseException:
                # A job folder without a job (a full disk refused its job.json) would be the newest the next
                # studio reads back, hiding the job before it: a failed fit's Resume, an interrupted one.
                shutil.rmtree(folder, ignore_errors=True)
                raise
            self.job = Job(folder.name, kind, folder, process, spec)
            return self.job

    def _refuse_while_running(self) -> None:
        """Conflict (409) while a job runs: one job at a time."""
        if self.running():
            assert self.job is not None
            raise Conflict(f"a {self.job.kind} is already running (started "
                           f"{time.strftime('%H:%M:%S', time.localtime(self.job.started))}); wait until it "
                           "finishes, then try again")

    def _new_folder(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        numbers = [int(p.name[4:]) for p in self.folder.glob("job-*") if p.name[4:].isdigit()]
        folder = self.folder / f"job-{max(numbers, default=0) + 1:04d}"
        folder.mkdir()
        return folder

    def status(self) -> dict[str, Any]:
        """What the page shows: state (idle, running, done, failed), phase, message, fit progress."""
        job = self.job
        if job is None:
            return {"state": "idle"}
        code = job.process.poll()
        record = _read_json(job.status_file) or {}
        out: dict[str, Any] = {"id": job.id, "kind": job.kind, "started": job.started,
                               "phase": record.get("phase", "starting"), "message": record.get("message", ""),
                               "cases_done": record.get("cases_done"), "cases_total": record.get("cases_total"),
                               "log": str(job.log_file)}
        run = Path(job.spec["fit_dir"]) / "run" if job.kind == "fit" else None
        if run is not None:
            out.update(fit_progress(run, job.spec.get("steps")))
        if code is None:
            out["state"] = "running"
            if run is not None and out["phase"] == "fit":
                out["message"] = fit_activity(run, out["step"], job.spec.get("steps")) or out["message"]
        elif job.cancelled and record.get("state") != "done":
            out.update(state="cancelled", message=cancelled_message(job, record))
        elif code == 0 and record.get("state") == "done":
            out.update(state="done", result=record.get("result"), **kept_model_dice(record.get("result")))
        elif job.interrupted:
            out.update(state="interrupted", resumable=resumable(job), message=interrupted_message(job, record, out))
        else:
            error = for_the_page(record.get("error") or self._crash_message(job, code), job.kind, writes_to(job))
            out.update(state="failed", error=error, resumable=resumable_after_failing(job))
            if out["resumable"]:
                out["message"] = failed_message(job, error, out)
        return out

    def _crash_message(self, job: Job, code: int) -> str:
        """A worker that died without saying why: its exit code (or signal) and its last log lines."""
        tail = _tail(job.log_file, LOG_TAIL_LINES)
        return _how_the_worker_ended(job, code) + (f"; its log ends: {tail}" if tail else "") + \
            f" (full log: {job.log_file}). Your labels are unchanged."

    def cancel(self) -> dict[str, Any]:
        """Stop the running job at the user's request (a fit of far too many steps started by mistake
        would otherwise hold the studio until it ends): its worker and the worker's children end, what it
        wrote stays where it is (a fit cancelled while fitting is never named the latest), and a new job
        may start."""
        with self._lock:
            job = self.job
            if job is None or job.process.poll() is not None:
                raise NotFound("no fit or prediction is running; there is nothing to cancel")
            job.cancelled = True
            _terminate(job)
            _record_end(job, "cancelled")  # not taken for an interrupted job by the next studio
        return self.status()

    def resume(self, settings: dict[str, Any]) -> Job:
        """Start the interrupted job again on its own spec (the cases it was given; a fit its fit folder,
        whose run goes on from its last checkpoint, on the slices labelled when it started), with this
        studio's ``settings`` (device, cache, precision). Refused while a job runs (Conflict, as a second Fit
        is: "nothing to resume" would hide the running job), and when no job is interrupted."""
        self._refuse_while_running()
        job = self.job
        failed = job is not None and not job.interrupted and self.status()["state"] == "failed"
        if job is None or not (job.interrupted or (failed and resumable_after_failing(job))):
            raise NotFound("no interrupted fit or prediction, nor a failed fit with a checkpoint, to resume")
        if not resumable(job):
            raise Conflict(f"the {job.kind} {job.id} cannot be resumed: its fit folder {job.spec.get('fit_dir')} is "
                           "gone; press Fit to start a new fit on your labels")
        spec = {key: value for key, value in job.spec.items() if key not in ("kind", "status")}
        return self.start(job.kind, {**spec, **settings, "resumes": job.id})

    def stop(self) -> None:
        """Stop a running worker and its children (the server is shutting down); its status says it was
        interrupted, so that the next studio on the project offers to resume it."""
        job = self.job
        if job is not None and job.process.poll() is None:
            _terminate(job)
            _record_end(job, STOPPED_WITH_THE_STUDIO)


def _how_the_worker_ended(job: Job, code: int) -> str:
    """What a worker's exit says: SIGKILL (``killed_message``), ``DISK_FULL_EXIT`` a full disk under the
    job's own folder, any other code or signal as it is."""
    if isinstance(job.process, LeftRunning):
        return f"the {job.kind} worker ended while the studio was not running, without saying why"
    if code == -signal.SIGKILL:
        return killed_message(job)
    if code == DISK_FULL_EXIT:
        return disk_full_message(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(job.status_file)))
    how = f"was killed by signal {-code}" if code < 0 else f"stopped with exit code {code}"
    return f"the {job.kind} worker {how}"


def killed_message(job: Job) -> str:
    """A worker ended by SIGKILL. The system's out-of-memory killer sends it, but so do a user's ``kill -9``
    and a scheduler or container stopping the job: where the cgroup's count of out-of-memory kills can be
    read, it says which (a count that rose while the job ran: memory; one that did not: something else),
    else memory is named as the likely cause, not as a fact."""
    if job.oom_kills_at_end is None:
        job.oom_kills_at_end = oom_kills()
    before, after = job.oom_kills_at_start, job.oom_kills_at_end
    worker = f"the {job.kind} worker"
    if before is None or after is None:
        return f"{worker} was killed (SIGKILL), most often because memory ran out; {memory_advice(job.kind)}"
    if after > before:
        return f"{worker} was killed by the system's out-of-memory killer (SIGKILL); {memory_advice(job.kind)}"
    return (f"{worker} was killed (SIGKILL) by a person or program, not for lack of memory (the system's "
            f"out-of-memory killer killed nothing while it ran); {again(job.kind).removeprefix('then ')}")


def memory_events_file() -> Path | None:
    """This process's cgroup v2 memory.events (its workers start in the same cgroup), or None where there is
    none (cgroup v1, macOS)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    unified = [line[3:] for line in lines if line.startswith("0::")]
    return Path("/sys/fs/cgroup", unified[0].lstrip("/"), "memory.events") if unified else None


def oom_kills() -> int | None:
    """How many processes of this cgroup and those below it the kernel's out-of-memory killer has killed
    (memory.events ``oom_kill``), or None where it cannot be read."""
    path = memory_events_file()
    try:
        text = path.read_text() if path is not None else ""
    except OSError:
        return None
    counts = dict(line.split(None, 1) for line in text.splitlines() if len(line.split()) == 2)
    count = counts.get("oom_kill", "").strip()
    return int(count) if count.isdigit() else None


def writes_to(job: Job) -> str:
    """The folders a job writes into, for a full disk whose error named no file: the project folder (the
    job's own folder, a fit's folder and predictions are in it) and the embedding cache."""
    return studio_folders(job.spec.get("project"), job.spec.get("cache"))


def kept_model_dice(result: object) -> dict[str, Any]:
    """{"dice": the validation score of the checkpoint a finished fit kept} (its best step), or nothing: the
    latest validation, which a running fit shows, may be a later, worse step than the model now predicting."""
    score = result.get("best_score") if isinstance(result, dict) else None
    return {"dice": score} if isinstance(score, (int, float)) and not isinstance(score, bool) else {}


def cancelled_message(job: Job, record: dict[str, Any]) -> str:
    """What a cancel left. A fit cancelled once its training had finished (while it predicted the cases)
    is the project's latest fit already: predictions, "Predict" and "Suggest next" now use it, and the
    earlier fit's predictions are no longer shown, which "the fit was cancelled" would hide. A job.json
    edited by hand may lack the project or hold a non-string one: the cancel is then said without
    that part, rather than the Cancel answering 500."""
    project = job.spec.get("project")
    if job.kind == "fit" and isinstance(project, str) and project:
        from fewsam.studio.project import LATEST_RUN

        fit = Path(job.spec["fit_dir"]).name
        latest = _read_json(Path(project) / LATEST_RUN) or {}
        if latest.get("fit") == fit:
            done, total = record.get("cases_done") or 0, record.get("cases_total")
            return (f"the fit had finished and {fit} is now the latest fit; predicting its cases was cancelled"
                    + (f" after {done} of {total}" if total else "") + ": Predict goes on with the others. "
                    "Your labels are unchanged")
    return f"the {job.kind} was cancelled; your labels are unchanged"


def is_job_spec(spec: dict[str, Any] | None) -> bool:
    """Whether a job.json is a job this studio reads back: a prediction, or a fit naming its fit folder
    (every status the page asks for reads that folder's run)."""
    if not spec or spec.get("kind", "fit") not in ("fit", "predict"):
        return False
    return spec.get("kind", "fit") == "predict" or isinstance(spec.get("fit_dir"), str)


PROJECT_PATHS = ("fit_dir", "run")  # the paths of a job spec that lie in its project folder


def in_project(spec: dict[str, Any], project: Path) -> dict[str, Any]:
    """A job spec read back from ``project``'s jobs folder, its paths in the project folder (``PROJECT_PATHS``)
    moved to ``project``: a project moved or copied since the job started would otherwise have it resumed,
    and shown, from the folder it was started in, outside the project served (or not at all, once gone)."""
    started_in = spec.get("project")
    if not isinstance(started_in, str) or Path(started_in) == project:
        return spec
    moved: dict[str, Any] = {**spec, "project": str(project)}
    for key in PROJECT_PATHS:
        value = spec.get(key)
        if isinstance(value, str) and Path(started_in) in Path(value).parents:
            moved[key] = str(project / Path(value).relative_to(started_in))
    return moved


def resumable(job: Job) -> bool:
    """Whether the job can start again on its spec: a fit needs the dataset of its labelled slices, which
    it was given in its fit folder (a prediction needs only the project's fit, which its worker checks)."""
    return job.kind != "fit" or (Path(job.spec.get("fit_dir", "")) / "data").is_dir()


def resumable_after_failing(job: Job) -> bool:
    """Whether a failed job can go on where it stopped: a fit whose run holds the training loop's resume
    checkpoint beside the config it was saved under (a fewshot fit of the job's steps), with its fit
    dataset. A failed fit without one, or a failed prediction, is started anew with Fit or Predict."""
    from fewsam.runs import CONFIG, LAST

    if job.kind != "fit" or not resumable(job):
        return False
    run = Path(job.spec["fit_dir"]) / "run"
    config = _read_json(run / CONFIG)
    if not (run / LAST).is_file() or config is None or config.get("method", "fewshot") != "fewshot":
        return False
    section = config.get("fewshot")
    steps = section.get("steps") if isinstance(section, dict) else None
    return steps is None or steps == job.spec.get("steps")


def failed_message(job: Job, error: str, progress: dict[str, Any]) -> str:
    """What failed and what Resume does, for a failed fit that left a resume checkpoint (the error the
    page shows first, then where Resume goes on: only the steps after the checkpoint are fitted again)."""
    fit, steps = Path(job.spec["fit_dir"]).name, progress.get("steps")
    checkpoint = progress.get("checkpoint_step") or 0
    where = f"its last checkpoint, step {checkpoint}" if checkpoint else "its last checkpoint"
    first = remedy(error)  # free space, fewer views: Resume meets the same failure until it is done
    return (f"{fit} failed at step {progress.get('step', 0)}" + (f" of {steps}" if steps else "")
            + f" ({what_failed(error)}); " + (f"{first}, then " if first else "")
            + f"Resume goes on from {where}, on the "
            f"{job.spec.get('labelled_slices', '?')} slice(s) labelled when it started, or Fit starts a new fit on "
            "your current labels. Your labels are unchanged")


def what_failed(error: str) -> str:
    """The first clause of a failed job's error, which says what failed, without the advice, log tail or
    log path that follow it (the page shows the whole error too). A "; " in parentheses is kept: torch's
    own words on memory ("(GPU 0; 15.78 GiB total capacity)") are part of what failed."""
    depth = 0
    for at, char in enumerate(error):
        if error.startswith(" (full log: ", at) or (depth == 0 and error.startswith("; ", at)):
            return error[:at].rstrip(". ")
        depth += {"(": 1, ")": -1}.get(char, 0)
    return error.split("; ", 1)[0].rstrip(". ")  # parentheses left open (a shortened detail)


def interrupted_message(job: Job, record: dict[str, Any], progress: dict[str, Any]) -> str:
    """How far an interrupted job got and what the page offers: Resume (the same job again: a fit from
    its last checkpoint, on the slices labelled when it started) or a new one on the current labels."""
    if "pid" not in record:  # the worker records its process id before anything else
        return not_started_message(job, record)
    how = ("the studio was stopped while it ran" if record.get("state") == STOPPED_WITH_THE_STUDIO
           else "its worker ended while no studio was running")
    if job.kind != "fit":
        done, total = record.get("cases_done") or 0, record.get("cases_total")
        return (f"the prediction was interrupted ({how})" + (f" after {done} of {total} case(s)" if total else "")
                + "; Resume predicts its cases again. Your labels are unchanged")
    fit, steps = Path(job.spec["fit_dir"]).name, progress.get("steps")
    if record.get("phase") == "predict":
        done, total = record.get("cases_done") or 0, record.get("cases_total")
        return (f"{fit} had finished fitting; predicting its cases was interrupted ({how})"
                + (f" after {done} of {total}" if total else "") + "; Resume predicts them. Your labels are unchanged")
    checkpoint = progress.get("checkpoint_step") or 0
    where = (f"Resume goes on from its last checkpoint, step {checkpoint}" if checkpoint
             else "Resume starts it again (it had saved no checkpoint yet)")
    return (f"{fit} was interrupted ({how}) at step {progress.get('step', 0)}" + (f" of {steps}" if steps else "")
            + f"; {where}, on the {job.spec.get('labelled_slices', '?')} slice(s) labelled when it started, "
            "or Fit starts a new fit on your current labels. Your labels are unchanged")


def not_started_message(job: Job, record: dict[str, Any]) -> str:
    """An interrupted job whose worker never began it (no process id in its status.json): "its worker ended"
    and "at step 0" would tell of a fit that never ran. Why, where that is known: the studio was stopped while
    the worker was starting, or the worker's own last lines (a Python that cannot import fewsam)."""
    tail = _tail(job.log_file, LOG_TAIL_LINES)
    if record.get("state") == STOPPED_WITH_THE_STUDIO:
        why = "the studio was stopped while its worker was starting"
    elif tail:
        why = f"its worker stopped before it began; its log ends: {tail} (full log: {job.log_file})"
    else:
        why = "its worker never began and left no word of why (the studio may have ended before starting it)"
    if job.kind != "fit":
        return f"the prediction did not start: {why}; Resume starts it. Your labels are unchanged"
    return (f"the fit did not start: {why}; Resume starts it, on the {job.spec.get('labelled_slices', '?')} "
            "slice(s) labelled when it was made, or Fit starts a new fit on your current labels. Your labels are "
            "unchanged")


def _record_end(job: Job, state: str) -> None:
    """Write how the server ended a job into its status.json (its worker, now gone, cannot say it); a
    status that cannot be written leaves the job as its worker left it."""
    record = _read_json(job.status_file) or {}
    try:
        atomic_write_bytes(job.status_file, json.dumps({**record, "state": state, "ended": time.time()}).encode())
    except OSError:
        pass


def _terminate(job: Job) -> None:
    """End a job's worker process group: SIGTERM, then SIGKILL if it has not ended in 10 seconds."""
    try:
        os.killpg(job.process.pid, signal.SIGTERM)
        job.process.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(job.process.pid, signal.SIGKILL)
            job.process.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


def fit_progress(run: Path, steps: int | None) -> dict[str, Any]:
    """Step, loss and the latest validation Dice from the run's fit_log.jsonl (the training loop's log).
    ``checkpoint_step``: the step of the last validation, after which the loop writes its resume
    checkpoint (0 while RUN holds none), where a resumed fit goes on."""
    from fewsam.runs import LAST, LOG

    out: dict[str, Any] = {"steps": steps, "step": 0, "loss": None, "dice": None, "checkpoint_step": 0}
    path = run / LOG
    if not path.is_file():
        return out
    validated = 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written
        if not isinstance(record, dict):
            continue
        if isinstance(record.get("validation"), dict):
            out["dice"] = record["validation"].get("score")
            validated = record.get("step", validated)
        elif "loss" in record:
            out.update(step=record.get("step", out["step"]), loss=record["loss"])
    out["checkpoint_step"] = validated if (run / LAST).is_file() else 0
    return out


def fit_activity(run: Path, step: int, steps: int | None) -> str | None:
    """What the fit does outside its training loop (whose steps the page shows), from the newest progress
    line of RUN/fit.log: encoding the labelled slices before the loop, and after it the post-processing
    chosen on the labelled slices (mirrored views encode every view of each: minutes at the default 8
    views), which fit_log.jsonl does not show; without it the page would sit at the last step under the
    worker's "encoding ..., then fitting". None during the loop (its first lines may come after a few
    steps: the encoding's last line is no news then), and until such a line is written."""
    from fewsam.runs import TEXT_LOG

    try:
        with open(run / TEXT_LOG, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - FIT_LOG_TAIL))
            lines = fh.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    progress = [match for line in lines if (match := PROGRESS_LINE.match(line.strip()))]
    if not progress or progress[-1]["task"] == "fit":
        return None
    loop_ended = any(m["task"] == "fit" for m in progress) or (steps is not None and step >= steps)
    return progress[-1]["text"] if step == 0 or loop_ended else None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:] if line.strip())
