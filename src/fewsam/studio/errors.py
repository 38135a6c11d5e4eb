"""The studio's refusals, each a ``FewsamError`` (one readable line) with the HTTP status it maps to.

The CLI prints a ``FewsamError`` as one ``error:`` line; the web page shows the same text. The
status code is carried by the class so that the app has one handler for all of them.
"""

from __future__ import annotations

import re

from fewsam.errors import DataError, FewsamError, out_of_memory_message


class StudioError(FewsamError):
    """A request the studio refuses; ``status`` is the HTTP status the page receives."""

    status = 400


class NotFound(StudioError):
    """An unknown case, a slice out of range, nothing to suggest: the request names nothing here."""

    status = 404


class Conflict(StudioError):
    """The request clashes with work in progress (a second fit while one runs)."""

    status = 409


class BadLabel(StudioError, DataError):
    """A label upload whose shape or class values do not fit the slice it is saved to."""

    status = 422


class Forbidden(StudioError):
    """A request without the token (non-loopback binding), or from a foreign host or origin."""

    status = 403


def status_of(error: FewsamError) -> int:
    """The HTTP status for any fewsam error: the studio's own carry theirs; data problems are 400."""
    return getattr(error, "status", 400)


# The button that does again what failed, by what failed: a job (fit, predict) or a page request (save, ...).
# The page's advice on a full disk, a refused file and memory that ran out ends in pressing it (``again``):
# what comes before that is what to do first (``remedy``), which a failed fit's Resume message repeats.
BUTTONS = {"fit": "Fit", "predict": "Predict", "resume": "Resume", "save": "Save", "unmark": "Unmark",
           "accept": "Accept prediction", "export": "Export labelled set"}
AGAIN = re.compile("then (?:press (?:" + "|".join(map(re.escape, BUTTONS.values())) + ")|try) again")


def again(kind: str) -> str:
    """How the advice ends for what failed: the button that does it again, "try again" when no button does."""
    button = BUTTONS.get(kind)
    return f"then press {button} again" if button else "then try again"


# The core's advice to a command-line user (the same `fewsam fit` command, another --out, deleting a run
# folder) as what the page offers instead: the studio names each fit's folder itself, so a new fit is the
# Fit button, an interrupted one the Resume button, and the core's own messages stay as the CLI needs them.
# The device is the studio's --device, chosen when it started, so it changes by restarting the studio. A full
# disk and memory that ran out are said by ``disk_space_advice`` and ``memory_advice``, which depend on what failed.
PAGE_ADVICE: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(pattern), advice) for pattern, advice in (
    (r"rerun with its settings to resume, or choose another --out",
     "press Fit to start a new fit on your current labels"),
    (r"resume (?:it|the run) with the same `fewsam fit` command(?: to write it again)?",
     "press Fit to fit again"),
    (r"run `fewsam fit \.\.\.` first", "press Fit to fit again"),
    (r"delete (?:it|\S+) to restart this fit from its first step", "press Fit to start a new fit"),
    (r"delete \S+ and fit again", "press Fit to fit again"),
    (r"give the folder `fewsam fit` wrote", "press Fit to fit again"),
    (r"choose another --out", "press Fit to start a new fit"),
    (r"^--device\b", "the studio's --device"),
    (r"(?:use|pass|rerun with) --device (\S+?)(?=[\s;,.)]|$)", r"restart the studio with --device \1"),
    (r"; use (cpu, cuda or cuda:N|cuda:0 to cuda:\d+)", r"; restart the studio with --device \1"),
))

# The core's advice on a refused file names the command line's options and command.
CORE_ACCESS_ADVICE = re.compile(r"give fewsam access to it \(or use another --out / --cache / --json\), then run the "
                                r"same command again")

# The core's advice on a full disk; " writing FILE" before it when the error named the file.
CORE_DISK_ADVICE = re.compile(r"(?P<file> writing [^;]+)?; free space \(or use another --out / --cache\), "
                              r"then run the same command again")

# The core's advice on memory names the fit's --batch-size, --image-size and --model, none of them the page's.
# A fit holds each labelled slice in memory once per view, which the page's views setting lowers; a prediction
# holds one case at a time whatever the page asks for, so freeing memory is all its page user can do.
CORE_MEMORY_ADVICE = re.compile(r"lower --batch-size or --image-size, choose a smaller --model, or free memory "
                                r"\(a GPU's: close other jobs on it\), then run the same command again "
                                r"\(a fit resumes from its last checkpoint\)")
FREE_MEMORY = "free memory (close other programs, or other jobs on the GPU)"
FEWER_VIEWS = "fit with fewer views (each labelled slice is held in memory once per view)"


def memory_advice(kind: str) -> str:
    """What the page user can do when memory ran out in a ``kind`` job: a fit can hold fewer views."""
    first = f"{FEWER_VIEWS} or " if kind == "fit" else ""
    return f"{first}{FREE_MEMORY}, {again(kind)}"


def request_memory_message(err: BaseException, kind: str) -> str:
    """Memory that ran out in a page request (a large case loaded to browse or export): the core's line, with
    what the page user can do; a fit's views play no part before its worker starts."""
    return CORE_MEMORY_ADVICE.sub(lambda found: f"{FREE_MEMORY}, {again(kind)}", out_of_memory_message(err))


# Where the studio writes when the job writing is unknown (an error of a request rather than of a job).
STUDIO_WRITES_TO = "the studio's project folder or embedding cache"


def for_the_page(message: str, kind: str = "fit", writes_to: str = STUDIO_WRITES_TO) -> str:
    """A core error's text as the page shows it: command-line advice (see ``PAGE_ADVICE``) replaced by
    what to press in the page; everything else, what went wrong and where, is kept word for word. ``kind``
    is what failed: a job (fit or predict, whose memory advice differs) or a page request (``BUTTONS``),
    whose button the advice names; ``writes_to`` names the folders it writes into, for a full disk whose
    error named no file."""
    for pattern, advice in PAGE_ADVICE:
        message = pattern.sub(advice, message)
    message = CORE_ACCESS_ADVICE.sub(lambda found: f"give the studio access to it, {again(kind)}", message)
    message = CORE_MEMORY_ADVICE.sub(lambda found: memory_advice(kind), message)
    return CORE_DISK_ADVICE.sub(lambda found: disk_space_advice(found.group("file"), writes_to, kind), message)


def studio_folders(project: str | None, cache: str | None = None) -> str:
    """The folders named for a full disk whose error named no file: the project folder and, for work that
    fills the embedding cache (a job's), that cache, which the studio's --cache may put on another disk."""
    folders = [f"the project folder {project}" if project else None, f"the embedding cache {cache}" if cache else None]
    return " or ".join(folder for folder in folders if folder) or STUDIO_WRITES_TO


def disk_space_advice(file: str | None, writes_to: str, kind: str = "fit") -> str:
    """Where to free space: on the named file's disk, or, when the error named no file, wherever the job
    or request writes (its disk is unknown, and "the disk that holds it" would name nothing)."""
    if file:
        return f"{file}; free space on the disk that holds it, {again(kind)}"
    return f"; free space on the disk that holds {writes_to}, {again(kind)}"


def remedy(message: str) -> str | None:
    """What to do before trying again, in a page message whose advice ends in pressing a button again
    (``AGAIN``: free space, fewer views): a failed fit's Resume needs it done first too. None for others."""
    found = re.search(f"; ([^;]+?), (?:{AGAIN.pattern})", message)
    return found.group(1) if found else None
