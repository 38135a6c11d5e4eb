"""The studio's refusals, each a ``FewsamError`` (one readable line) with the HTTP status it maps to.

The CLI prints a ``FewsamError`` as one ``error:`` line; the web page shows the same text. The
status code is carried by the class so that the app has one handler for all of them.
"""

from __future__ import annotations

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
