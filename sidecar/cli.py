"""`airflow-secrets-sidecar serve | demo | get | check`."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from sidecar import DEFAULT_PORT, DEFAULT_URL, KINDS, __version__, client
from sidecar.client import Endpoint, locate, resolve
from sidecar.daemon.config_error import ConfigError
from sidecar.daemon.logs import setup_logging
from sidecar.daemon.settings import SETTINGS, Settings, load_settings

log = logging.getLogger("sidecar")


# How each kind of flag of the settings table (sidecar/daemon/settings.py) reaches argparse. No
# flag has a default, so that an unset one falls through to its SIDECAR_* variable.
FLAG_ACTIONS: dict[str, dict[str, Any]] = {
    "value": {},
    "switch": {"action": "store_const", "const": "true"},
    "on/off": {"action": argparse.BooleanOptionalAction},
}


def _serve_flags(parser: argparse.ArgumentParser) -> None:
    """The daemon's flags: one for each setting of the table that has one."""
    for setting in SETTINGS:
        if setting.option:
            help_line = setting.help_line().replace("%", "%%")  # argparse formats help with %
            parser.add_argument(setting.option, help=help_line, **FLAG_ACTIONS[setting.flag])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="airflow-secrets-sidecar",
        description="A caching AWS Secrets Manager sidecar for Apache Airflow.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _serve_flags(commands.add_parser("serve", help="run the daemon"))
    _serve_flags(commands.add_parser("check", help="validate the configuration and list the prefixes"))
    demo = commands.add_parser("demo", help="run the daemon against an embedded AWS emulation")
    demo.add_argument("--port", default=str(DEFAULT_PORT), help=f"port for the daemon (default {DEFAULT_PORT})")
    get = commands.add_parser(
        "get",
        help="ask a running daemon for one value (prints it)",
        description="Ask a running daemon for one value and print it. The token it sends, as the Airflow "
        "backend finds it: the file SIDECAR_TOKEN_FILE names, else SIDECAR_TOKEN, else, with a Unix socket, "
        "the token file autostart writes beside it.",
    )
    get.add_argument("kind", choices=KINDS)
    get.add_argument("key")
    get.add_argument("--team")
    get.add_argument("--url", help=f"default: SIDECAR_URL, else SIDECAR_HOST / SIDECAR_PORT, else {DEFAULT_URL}")
    get.add_argument(
        "--unix-socket", help="ask over this Unix socket (default SIDECAR_UNIX_SOCKET); it wins over a URL"
    )
    probe = commands.add_parser(
        "probe", help="exit 0 if the local daemon is live (--ready: ready); for container probes"
    )
    probe.add_argument("--ready", action="store_true", help="check /readyz instead of /healthz")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    environ, links = _without_service_links(os.environ)
    if args.command in ("get", "probe"):
        for note in links:
            print(f"airflow-secrets-sidecar: {note}", file=sys.stderr)
        if args.command == "get":
            return _get(args, environ)
        return _probe("/readyz" if args.ready else "/healthz", environ)
    missing = [name for name in ("aiobotocore", "aiohttp") if importlib.util.find_spec(name) is None]
    if missing:  # found, not imported: the daemon's process imports what it needs in its own order
        print(
            f"airflow-secrets-sidecar: the daemon needs its dependencies ({missing[0]} is missing): "
            "pip install 'airflow-secrets-sidecar[daemon]'",
            file=sys.stderr,
        )
        return 2
    if args.command == "demo":
        from sidecar.daemon.demo import run_demo

        return run_demo(port=args.port)
    try:
        settings = load_settings(args, environ)
    except ConfigError as exc:
        print(f"airflow-secrets-sidecar: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    for note in links:
        log.warning("%s", note)
    if args.command == "check":
        try:
            return asyncio.run(_check(settings))
        except ConfigError as exc:
            print(f"airflow-secrets-sidecar: configuration error: {exc}", file=sys.stderr)
            return 2
    return run_serve(settings)


# Kubernetes gives every pod in a namespace <NAME>_PORT=tcp://<ip>:<port> for each Service there:
# SIDECAR_PORT for a Service named `sidecar`. Such a value is not the daemon's setting.
SERVICE_LINK = ("tcp://", "udp://", "sctp://")


def _without_service_links(environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """`environ` without the SIDECAR_*_PORT service links Kubernetes set, and a note on each."""
    links = [
        name
        for name, value in environ.items()
        if name.startswith("SIDECAR_") and name.endswith("_PORT") and value.startswith(SERVICE_LINK)
    ]
    notes = [
        f"{name}={environ[name]!r} is the Kubernetes service link of a Service named "
        f"{name[: -len('_PORT')].lower().replace('_', '-')!r}, not a port: ignored, the default applies"
        for name in links
    ]
    return {name: value for name, value in environ.items() if name not in links}, notes


# The daemon reaches AWS through aiohttp. Where httpx is installed (Airflow depends on it, so in
# any Airflow image) aiobotocore imports it, and with it rich and pygments, only to offer it as
# another transport the daemon never uses: they would sit in its memory for its whole life.
# frozenlist's compiled list, which aiohttp's web applications use and its low-level server does
# not, would load the C++ runtime (libstdc++, 1 MB) for it: its pure Python twin stands in.
UNUSED_IMPORTS = ("httpx", "httpx2", "frozenlist._frozenlist")


def skip_unused_imports() -> None:
    """In the daemon's own process only: those imports fail there, as if they were not installed.
    Then aiohttp's default TLS contexts are emptied (see _drop_unused_tls_contexts)."""
    for name in UNUSED_IMPORTS:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    _drop_unused_tls_contexts()


def _drop_unused_tls_contexts() -> None:
    """aiohttp loads the system's CA store at import into two TLS contexts, the default of its
    clients (1.5 MB). The daemon's one client, aiobotocore, passes its own, built with botocore's CA
    bundle and the `verify` kwarg, so they go: in their place, a context that trusts no CA, so
    that a connection that ever fell back on aiohttp's default would fail, never go unverified.
    Done before the daemon's other imports, which take the memory back."""
    import ssl

    from aiohttp import connector

    trusts_nothing = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies peers (CERT_REQUIRED) against no CA
    connector._SSL_CONTEXT_VERIFIED = connector._SSL_CONTEXT_UNVERIFIED = trusts_nothing  # type: ignore[attr-defined]


def run_serve(settings: Settings) -> int:
    skip_unused_imports()
    from sidecar.daemon.lifecycle import serve

    if settings.token is None:
        log.warning("--no-token: ANY process on this host can read these secrets. Local development only!")
    run = asyncio.run
    if settings.event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            print(
                "airflow-secrets-sidecar: configuration error: SIDECAR_EVENT_LOOP=uvloop needs uvloop: "
                "pip install 'airflow-secrets-sidecar[daemon,uvloop]'",
                file=sys.stderr,
            )
            return 2
        run = uvloop.run
    try:
        run(serve(settings))
    except ConfigError as exc:
        print(f"airflow-secrets-sidecar: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # where it listens says what to change itself, as a ConfigError
        print(f"airflow-secrets-sidecar: {exc}", file=sys.stderr)
        return 1
    return 0


async def _check(settings: Settings) -> int:
    from sidecar.daemon.answers.names import Names
    from sidecar.daemon.metrics import Metrics
    from sidecar.daemon.sources.base import UpstreamError
    from sidecar.daemon.sources.configured import open_source

    async with open_source(settings, Metrics()) as source:  # a ConfigError if AWS's client refuses it
        ttls = f"ttl {settings.ttl:g}s, negative ttl {settings.negative_ttl:g}s"
        print(f"configuration ok: source {settings.source}, {ttls}")
        for prefix in Names(settings.store).listed_prefixes():
            try:
                names = (await source.list_secrets([prefix])).versions
            except UpstreamError as exc:
                print(f"{prefix}*: {exc} ({exc.hint})")
                return 1
            print(f"{prefix}*: {len(names)} secrets")
    if settings.events != "off":
        from sidecar.daemon.events import check_events

        try:
            print(await check_events(settings))
        except UpstreamError as exc:
            print(f"events: {exc} ({exc.hint}; the events' policy: docs/events.md)")
            return 1
    return 0


# `get` and `probe` run beside the daemon and ask it as the backend does: the same client, and
# the same endpoint and token (sidecar/client.py), plus the daemon's own listen settings.
TIMEOUT = 10.0  # s


def _ask(endpoint: Endpoint, path: str) -> tuple[int, bytes, bytes | None]:
    """GET `path`: status, body, X-Cache as sent. Raises OSError or client.ProtocolError."""
    status, body, _, cache = client.exchange(
        endpoint.address, f"GET {path}".encode() + client.request_tail(endpoint.token), TIMEOUT
    )
    return status, body, cache


def _probe(path: str, environ: Mapping[str, str]) -> int:
    """Exit 0 when the local daemon answers `path` with 200; else say why on stderr."""
    try:
        endpoint = locate(daemon_settings=True, environ=environ)  # no token: /healthz and /readyz need none
    except ValueError as exc:
        print(f"{path}: {_address_error(exc)}", file=sys.stderr)
        return 1
    try:
        status, body, _ = _ask(endpoint, path)
    except (OSError, client.ProtocolError) as exc:
        print(f"{path}: {_unanswered(endpoint, exc)}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"{path}: {status} {body.decode('utf-8', 'replace')}", file=sys.stderr)
    return 0 if status == 200 else 1


def _unanswered(endpoint: Endpoint, exc: Exception) -> str:
    if isinstance(exc, PermissionError) and endpoint.unix_socket:
        return client.socket_denied(endpoint.unix_socket)
    if isinstance(exc, client.ProtocolError):
        return f"the sidecar at {endpoint.where} sent a malformed answer: {exc}"
    return f"no answer from the sidecar at {endpoint.where}: {exc}"


def _address_error(exc: ValueError) -> str:
    return f"the sidecar's address (--url, SIDECAR_URL, or SIDECAR_HOST and SIDECAR_PORT) {exc}"


def _get_endpoint(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> Endpoint | None:
    """The endpoint and token `get` asks with, as the backend resolves them; None after saying why."""
    try:
        return resolve(args.url, args.unix_socket, daemon_settings=True, environ=environ)
    except OSError as exc:
        print(f"cannot read the sidecar token file {exc.filename!r}: {exc.strerror}", file=sys.stderr)
    except ValueError as exc:
        print(_address_error(exc), file=sys.stderr)
    return None


def _get(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    endpoint = _get_endpoint(args, environ)
    if endpoint is None:
        return 2
    path = f"/v1/{args.kind}/{quote(args.key, safe='')}"
    if args.team:
        path += f"?team={quote(args.team, safe='')}"
    started = time.perf_counter()
    try:
        status, body, cache = _ask(endpoint, path)
    except (OSError, client.ProtocolError) as exc:
        print(_unanswered(endpoint, exc), file=sys.stderr)
        return 2
    took = f"{1000 * (time.perf_counter() - started):.1f} ms"
    shown = None if cache is None else cache.strip().decode("latin-1")
    if status == 200:
        print(json.loads(body)["value"])
        print(f"({shown}, {took})", file=sys.stderr)
        return 0
    text = body[:500].decode("utf-8", "replace")
    if status == 404 and not client.is_not_found(body, cache):
        print(
            f"{endpoint.where} answered 404, but not as the sidecar does: another server listens there "
            f"(a wrong port, a proxy?): {text}",
            file=sys.stderr,
        )
        return 2
    cache_note = "" if shown is None else f", X-Cache: {shown}"
    token_note = ""
    if status == 401:
        token_note = " (give `get` the sidecar's token: SIDECAR_TOKEN_FILE=<its file>, or SIDECAR_TOKEN=<the token>)"
    print(f"{status}{cache_note}: {text}{token_note}", file=sys.stderr)
    return 1 if status == 404 else 2
