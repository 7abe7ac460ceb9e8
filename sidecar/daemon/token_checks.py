"""The daemon's token: which of its settings wins, and what a token must be.

The settings load it at start; the HTTP guard (sidecar/daemon/http/token.py) reads the file again
when it changes. No message holds the token.
"""

from __future__ import annotations

from sidecar import client
from sidecar.daemon.config_error import ConfigError


def configured_token(token: str | None, token_file: str | None, no_token: bool) -> tuple[str | None, str | None]:
    """The token and the file it came from: the token file (`--token-file`, else `SIDECAR_TOKEN_FILE`)
    wins over `SIDECAR_TOKEN`, so a stale variable is ignored after a rotation; none only with `--no-token`."""
    if token_file:
        return read_token_file(token_file), token_file
    if token is not None:
        check_token(token, "SIDECAR_TOKEN")
        return token, None
    if no_token:
        return None, None
    raise ConfigError(
        "no token: set SIDECAR_TOKEN or SIDECAR_TOKEN_FILE (or --token-file) to a random string of "
        "16+ characters, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`; "
        "--no-token is for local development only"
    )


def check_token(token: str, origin: str) -> None:
    if len(token) < 16:
        raise ConfigError(f"the token from {origin} is too short: use 16 characters or more")
    if not token.isprintable() or any(character.isspace() for character in token):
        raise ConfigError(f"the token from {origin} holds spaces or control characters")


def read_token_file(path: str) -> str:
    try:
        token = client.read_token_file(path)  # the Airflow side's reader: one rule for both sides
    except OSError as exc:
        raise ConfigError(
            f"cannot read the token file {path!r} (--token-file / SIDECAR_TOKEN_FILE): {exc.strerror}"
        ) from None
    check_token(token, f"the token file {path!r}")
    return token
