"""The studio's refusals, each a ``FewsamError`` (one readable line) with the HTTP status it maps to.

The CLI prints a ``FewsamError`` as one ``error:`` line; the web page shows the same text. The
status code is carried by the class so that the app has one handler for all of them.
"""

from __future__ import annotations

import re

from fewsam.errors import DataError, FewsamError


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


# The core's advice to a command-line user (the same `fewsam fit` command, another --out, deleting a run
# folder) as what the page offers instead: the studio names each fit's folder itself, so a new fit is the
# Fit button, an interrupted one the Resume button, and the core's own messages stay as the CLI needs them.
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
))


def for_the_page(message: str) -> str:
    """A core error's text as the page shows it: command-line advice (see ``PAGE_ADVICE``) replaced by
    what to press in the page; everything else, what went wrong and where, is kept word for word."""
    for pattern, advice in PAGE_ADVICE:
        message = pattern.sub(advice, message)
    return message
