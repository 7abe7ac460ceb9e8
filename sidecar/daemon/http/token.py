"""The token every /v1 request must carry, re-read when its file changes so rotation needs no restart."""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Callable
from stat import S_IMODE, S_IROTH

from aiohttp import web
from multidict import istr

from sidecar import TOKEN_HEADER
from sidecar.daemon.config_error import ConfigError
from sidecar.daemon.http.errors import error
from sidecar.daemon.settings import Settings
from sidecar.daemon.token_checks import read_token_file

log = logging.getLogger(__name__)

TOKEN_KEY = istr(TOKEN_HEADER)  # multidict's case-insensitive key, made once
TOKEN_RECHECK_SECONDS = 1.0
TOKEN_MISMATCH_RECHECK_SECONDS = 0.1


class Token:
    """The expected token, re-read when its file changes so rotation needs no restart.

    The file is checked once a second, and at once (at most every 0.1 s) when a request offers
    another token: an Airflow process that read the rotated file first is not refused meanwhile.
    A file every user may read is warned about once: whoever reads it reads every secret.
    """

    def __init__(self, settings: Settings, timer: Callable[[], float] = time.monotonic) -> None:
        self._file = settings.token_file
        self._timer = timer
        self._checked_at = timer()
        self._mismatch_checked_at = float("-inf")
        self._stamp: tuple[int, int, int] | None = None
        self._value = (settings.token or "").encode()
        self._warned_readable = False
        if self._file:
            self._value, self._stamp, mode = _read_with_stamp(self._file)
            self._warn_if_everyone_reads(mode)

    def check(self, request: web.BaseRequest) -> web.Response | None:
        """The guard of every lookup: the refusal of a request without the token, else None."""
        if self.admits(request.headers.get(TOKEN_KEY)):
            return None
        return error("unauthorized", f"missing or wrong {TOKEN_HEADER} header: use the sidecar's token")

    def admits(self, offered: str | None) -> bool:
        """Whether a request offering `offered` in the token header may be served."""
        if not self._value:
            return True  # no token configured: loopback alone guards the daemon
        if offered is None:
            return False
        now = self._timer()
        if self._file and now - self._checked_at >= TOKEN_RECHECK_SECONDS:
            self._reload(now, only_if_changed=True)
        # compare_digest: the time taken does not tell how much of a guess was right.
        if hmac.compare_digest(offered.encode(), self._value):
            return True
        if not self._file or now - self._mismatch_checked_at < TOKEN_MISMATCH_RECHECK_SECONDS:
            return False
        self._mismatch_checked_at = now
        self._reload(now, only_if_changed=False)  # the same stamp may hide a rewrite within one tick
        return hmac.compare_digest(offered.encode(), self._value)

    def _reload(self, now: float, only_if_changed: bool) -> None:
        assert self._file
        self._checked_at = now
        if only_if_changed:
            try:
                stat = os.stat(self._file)
            except OSError:
                return  # mid-swap, or gone: keep the token in force
            if _stamp(stat) == self._stamp:
                return
        try:
            value, stamp, mode = _read_with_stamp(self._file)
        except ConfigError as exc:
            log.error("keeping the previous token: %s", exc)
            return
        self._stamp = stamp
        self._warn_if_everyone_reads(mode)
        if value != self._value:
            self._value = value
            log.info("token file changed: the new token is in force")

    def _warn_if_everyone_reads(self, mode: int) -> None:
        if mode & S_IROTH and not self._warned_readable:
            self._warned_readable = True
            log.warning(
                "the token file %r may be read by every user on this host (mode %04o), and with the token "
                "every secret the sidecar serves: chmod 0640 (the Airflow user's group reads it) or 0600",
                self._file,
                S_IMODE(mode),
            )


def _stamp(stat: os.stat_result) -> tuple[int, int, int]:
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


def _read_with_stamp(path: str) -> tuple[bytes, tuple[int, int, int] | None, int]:
    """The token in `path`, and the stamp and mode of the very file it was read from."""
    try:
        stat = os.stat(path)
    except OSError:
        stat = None
    token = read_token_file(path).encode()
    # Taken before the read: a rotation after it changes the stamp and is seen at the next check.
    return token, _stamp(stat) if stat else None, stat.st_mode if stat else 0
