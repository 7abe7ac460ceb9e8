"""The daemon's log: text or JSON lines on stderr; libraries kept quiet, the daemon's own at its level."""

from __future__ import annotations

import json
import logging
import sys


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)  # libraries (botocore, aiohttp, werkzeug) stay quiet ...
    logging.getLogger("sidecar").setLevel(level)  # ... the daemon says what it does
    # aiohttp logs each malformed request with a traceback that may quote its bytes (a token);
    # a stranger's garbage is not worth an ERROR, and our own handler errors are logged by the HTTP handler.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
