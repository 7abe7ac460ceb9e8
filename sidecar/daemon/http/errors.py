"""Every error answer, and the one table that maps a failure to its HTTP status and code.

Messages name keys, secret names and AWS error codes, never a value: no value is put in an
exception, and AWS's own message (`UpstreamError.detail`) is logged, never sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web

from sidecar import ERRORS
from sidecar.daemon.answers.connections import InvalidSecret
from sidecar.daemon.answers.names import InvalidTeam
from sidecar.daemon.settings import Settings
from sidecar.daemon.sources.base import UpstreamError

log = logging.getLogger(__name__)

RETRY_SOON = {"Retry-After": "1"}


class Busy(Exception):
    """Too many requests wait on AWS already."""


def error(code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=ERRORS[code], headers=headers)


def _upstream(exc: UpstreamError, _: Settings) -> web.Response:
    log.debug("%s: 503 %s", exc.api, exc.code)
    return error("upstream_unavailable" if exc.transient else "upstream_error", f"{exc} ({exc.hint})", RETRY_SOON)


def _timeout(_: Exception, settings: Settings) -> web.Response:
    return error("timeout", f"AWS did not answer within {settings.request_timeout:g}s")


def _invalid_secret(exc: Exception, _: Settings) -> web.Response:
    return error("invalid_secret", str(exc))


def _invalid_team(exc: Exception, _: Settings) -> web.Response:
    return error("bad_request", str(exc))


def _busy(_: Exception, __: Settings) -> web.Response:
    return error("busy", "too many requests in flight; retry shortly", RETRY_SOON)


FAILURES: tuple[tuple[type[Exception], Callable[..., web.Response]], ...] = (
    (UpstreamError, _upstream),
    (asyncio.TimeoutError, _timeout),
    (InvalidSecret, _invalid_secret),
    (InvalidTeam, _invalid_team),
    (Busy, _busy),
)


def failure(exc: Exception, settings: Settings, path: str) -> web.Response:
    """The answer for a lookup that raised `exc`: from the table, else our own bug (500)."""
    for kind, answer in FAILURES:
        if isinstance(exc, kind):
            return answer(exc, settings)
    return internal_error(path)


def internal_error(path: str) -> web.Response:
    # The traceback names code, never a value (none is put in one).
    log.exception("internal error answering %s", path)
    return error("internal", "internal error; see the sidecar's log")
