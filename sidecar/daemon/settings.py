"""One `Settings` object from CLI flags, `SIDECAR_*` environment variables and defaults.

Each setting is one row of `SETTINGS`: its name, parser, default, help line and flag. From the
table come the `serve`/`check` flags (sidecar/cli.py), the variables read, the defaults and the
table of docs/configuration.md (tests/test_config.py checks it). Flags win over environment
variables. Every error names the flag and the variable to change, and never echoes a token or the
backend kwargs JSON (it may hold credentials).
"""

from __future__ import annotations

import argparse
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar import DEFAULT_HOST, DEFAULT_PORT, SECRETSMANAGER, STORES
from sidecar.daemon.backend_kwargs import StoreSettings, parse_backend_kwargs
from sidecar.daemon.config_error import ConfigError
from sidecar.daemon.token_checks import configured_token


@dataclass(frozen=True)
class Settings:
    """The daemon's settings, as `load_settings` builds them (their defaults: `SETTINGS`)."""

    store: StoreSettings
    host: str
    port: int
    # The listener Prometheus scrapes (sidecar/daemon/http/scrape.py): None is none; "" is every interface.
    metrics_port: int | None
    metrics_host: str
    unix_socket: str | None
    unix_socket_group: str | None
    token: str | None = field(repr=False)
    token_file: str | None
    ttl: float
    negative_ttl: float
    max_stale: float
    max_entries: int
    warmup: bool
    list_interval: float
    log_level: str
    log_format: str
    # uvloop (the `uvloop` extra; the Docker image's choice): a faster event loop under the daemon.
    event_loop: str
    # AWS calls in flight at once; also sizes the HTTP connection pool to AWS.
    max_upstream: int
    # The share of each AWS API's account-wide quota this daemon may use (sidecar/daemon/sources/quotas.py).
    aws_quota_share: float
    # Seconds over which a fleet spreads its warm-ups: > 0 serves lazily at once, warms up later.
    warmup_jitter: float
    # HTTP requests handled at once before the daemon answers 429.
    max_requests: int
    # Open client connections (keep-alive ones included) before the daemon answers 429.
    max_connections: int
    # Longest a request waits on AWS before it gets a 503.
    request_timeout: float
    # AWS's change events (docs/events.md): off, sns (a queue of this daemon's own on the topic)
    # or sqs (a queue the operator made for this daemon alone).
    events: str
    events_topic_arn: str | None
    events_queue_url: str | None
    # Seconds between listings while events arrive: the listing is then only the backstop.
    events_list_interval: float
    # Mode sns: this daemon's queue is named prefix + identity (default: the host name, a pod's name).
    events_queue_prefix: str
    events_identity: str | None
    # Core dumps off and no debugger of the same user (sidecar/daemon/harden.py); false to debug.
    harden: bool

    @property
    def source(self) -> str:
        """secretsmanager or ssm: the store's, which owns it (its names and kwargs depend on it)."""
        return self.store.source


# --- parsers: each raises ValueError with a message that completes "must be ..." ---


def _positive_float(raw: str) -> float:
    number = float(raw)
    if not number > 0 or number != number or number == float("inf"):
        raise ValueError(f"must be a number of seconds above 0, got {raw!r}")
    return number


def _non_negative_float(raw: str) -> float:
    number = float(raw)
    if not number >= 0 or number == float("inf"):
        raise ValueError(f"must be a number of seconds, 0 or more, got {raw!r}")
    return number


def _share(raw: str) -> float:
    number = float(raw)
    if not 0 < number <= 1:
        raise ValueError(f"must be a fraction above 0 and at most 1, got {raw!r}")
    return number


def _whole(raw: str, low: int, high: float, what: str) -> int:
    """A whole number from `low` to `high`; else ValueError saying `what` is expected ("1.5" is none)."""
    try:
        number = int(raw)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise ValueError(f"must be {what}, got {raw!r}")
    return number


def _positive_int(raw: str) -> int:
    return _whole(raw, 1, float("inf"), "a whole number above 0")


def _port(raw: str) -> int:
    return _whole(raw, 0, 65535, "a port number from 0 to 65535")


def _bool(raw: str | bool) -> bool:
    if isinstance(raw, bool):
        return raw
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"must be true or false, got {raw!r}")


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def _log_level(raw: str) -> str:
    return _choice("debug", "info", "warning", "error")(raw).upper()  # as the logging module names them


def _text(raw: str) -> str:
    return raw


def _group(raw: str) -> str:
    import grp

    try:
        grp.getgrnam(raw)
    except KeyError:
        raise ValueError(f"no such group {raw!r} on this host") from None
    return raw


def _matching(pattern: re.Pattern[str], what: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if not pattern.fullmatch(raw.strip()):
            raise ValueError(f"must be {what}, got {raw!r}")
        return raw.strip()

    return parse


TOPIC_ARN = re.compile(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_.-]{1,256}")
QUEUE_URL = re.compile(r"https?://[^\s/]+/\d{12}/[A-Za-z0-9_-]{1,80}(\.fifo)?")
QUEUE_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,40}")


# --- the table ---


@dataclass(frozen=True)
class Setting:
    """One setting, written once: what --help, the docs and `load_settings` know of it."""

    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str  # plain text, for --help and the docs alike
    # How it is given on the command line: "value" (--name VALUE), "switch" (--name alone),
    # "on/off" (--name / --no-name), or "" (no flag: a variable only).
    flag: str = "value"
    variable: bool = True  # read from SIDECAR_<NAME>
    shown: str = ""  # the default as --help and the docs say it, where the value alone would not
    see: str = ""  # a Markdown link the docs add after the help

    @property
    def option(self) -> str | None:
        return "--" + self.name.replace("_", "-") if self.flag else None

    @property
    def env_var(self) -> str | None:
        return f"SIDECAR_{self.name.upper()}" if self.variable else None

    @property
    def names(self) -> str:
        """How an error names it: its flag and its variable, those it has."""
        return " / ".join(name for name in (self.option, self.env_var) if name)

    def default_text(self, markdown: bool = False) -> str:
        if self.shown or self.default is None:
            return self.shown or "none"
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        if isinstance(self.default, float):
            return f"{self.default:g}"
        return f"`{self.default}`" if markdown and isinstance(self.default, str) else str(self.default)

    def help_line(self) -> str:
        """The flag's --help: what it does, its default and its variable."""
        return f"{self.help} ({'; '.join(filter(None, ['default: ' + self.default_text(), self.env_var]))})"


SETTINGS: tuple[Setting, ...] = (
    Setting("host", _text, DEFAULT_HOST, "address to listen on; a non-loopback one needs --allow-remote"),
    Setting("port", _port, DEFAULT_PORT, "port to listen on"),
    Setting("unix_socket", _text, None, "listen on this Unix socket (mode 0660) instead of TCP"),
    Setting(
        "metrics_port",
        _port,
        None,
        "also serve /metrics, /healthz and /readyz, without the token and never /v1, on this port for "
        "Prometheus, whatever the main listener is",
        shown="off",
        see="[Metrics](operations.md#metrics)",
    ),
    Setting("metrics_host", _text, "", "address of --metrics-port", shown="every interface"),
    Setting("unix_socket_group", _group, None, "group that may use the Unix socket", shown="the daemon's"),
    Setting("allow_remote", _bool, False, "allow a non-loopback --host", flag="switch"),
    Setting(
        "token_file",
        _text,
        None,
        "file holding the token; it wins over SIDECAR_TOKEN",
        see="[Token precedence](#token-precedence)",
    ),
    Setting(
        "token",
        _text,
        None,
        "the token itself, 16+ characters; a token file wins over it",
        flag="",
        shown="required, unless a token file is set or --no-token given",
        see="[Token precedence](#token-precedence)",
    ),
    Setting(
        "no_token",
        _bool,
        False,
        "accept requests without a token: local development ONLY",
        flag="switch",
        variable=False,
    ),
    Setting(
        "backend_kwargs", _text, "{}", "the provider backend's kwargs JSON", see="[below](#sidecar_backend_kwargs)"
    ),
    Setting("source", _choice(*STORES), SECRETSMANAGER, "secretsmanager, or ssm for Parameter Store"),
    Setting(
        "ttl", _positive_float, 1800.0, "seconds a found value is served from cache: how long a revocation can take"
    ),
    Setting(
        "negative_ttl",
        _non_negative_float,
        None,
        "seconds a miss is remembered when no listing checks it again",
        shown="twice the listing interval",
    ),
    Setting("max_stale", _non_negative_float, 21600.0, "seconds past the TTL a value may be served while AWS fails"),
    Setting("max_entries", _positive_int, 10000, "cache size limit, in entries"),
    Setting("warmup", _bool, True, "list the prefixes at start and every --list-interval", flag="on/off"),
    Setting(
        "list_interval",
        _positive_float,
        300.0,
        "seconds between listings: how long a creation, rotation or deletion can take",
        see="[bounds](faults.md#how-long-until-a-change-in-aws-reaches-airflow)",
    ),
    Setting("max_upstream", _positive_int, 32, "AWS calls in flight at once"),
    Setting("aws_quota_share", _share, 0.1, "share of each AWS API's account quota to use at most"),
    Setting(
        "warmup_jitter", _non_negative_float, 0.0, "seconds to spread a fleet's warm-ups over, serving lazily meanwhile"
    ),
    Setting(
        "task_pod",
        _bool,
        None,
        "this pod runs one task (KubernetesExecutor): no warm-up, no jitter, no events, whatever their settings say",
        flag="switch",
        shown="off; on where Airflow sets AIRFLOW_IS_K8S_EXECUTOR_POD=True",
    ),
    Setting("max_requests", _positive_int, 512, "requests in flight before 429"),
    Setting("max_connections", _positive_int, 1024, "open connections, keep-alive ones included, before 429"),
    Setting("request_timeout", _positive_float, 8.0, "seconds a request may wait on AWS before its 503"),
    Setting(
        "events",
        _choice("off", "sns", "sqs"),
        "off",
        "AWS change events: off, sns (a queue of the daemon's own on a topic) or sqs (a queue the operator "
        "made for this daemon alone)",
        see="[events.md](events.md)",
    ),
    Setting(
        "events_topic_arn",
        _matching(TOPIC_ARN, "an SNS topic's ARN"),
        None,
        "mode sns: the topic the operator's EventBridge rule sends to",
        shown="none, required in mode sns",
    ),
    Setting(
        "events_queue_url",
        _matching(QUEUE_URL, "an SQS queue's URL"),
        None,
        "mode sqs: this daemon's own queue",
        shown="none, required in mode sqs",
    ),
    Setting(
        "events_list_interval",
        _positive_float,
        3600.0,
        "seconds between listings while events arrive: the listing is then the backstop",
    ),
    Setting(
        "events_queue_prefix",
        _matching(QUEUE_PREFIX, "1 to 40 of A-Z, a-z, 0-9, _ and -"),
        "airflow-secrets-sidecar-",
        "mode sns: the name prefix of each daemon's queue",
    ),
    Setting(
        "events_identity",
        _text,
        None,
        "mode sns: this daemon's part of its queue name",
        shown="the host name, a pod's name",
    ),
    Setting("log_level", _log_level, "INFO", "debug, info, warning or error"),
    Setting(
        "event_loop",
        _choice("asyncio", "uvloop"),
        "asyncio",
        "asyncio or uvloop; uvloop needs the uvloop extra, and the Docker image sets it",
    ),
    Setting("log_format", _choice("text", "json"), "text", "text or json"),
    Setting(
        "harden",
        _bool,
        True,
        "no core dump, no debugger of the same user, /proc/PID/environ root's; false only to debug with py-spy or gdb",
        flag="",
        see="[Hardening](security.md#hardening)",
    ),
)
# Each setting's default, written once: in its row.
DEFAULTS: dict[str, Any] = {row.name: row.default for row in SETTINGS}


def markdown_table() -> str:
    """The settings table of docs/configuration.md, one row per setting."""
    lines = ["| setting | flag | env var | default |", "|---|---|---|---|"]
    for row in SETTINGS:
        flag = f"`{row.option}`" if row.option else ""
        if row.flag == "on/off":
            flag += f"/`--no-{row.name.replace('_', '-')}`"
        variable = f"`{row.env_var}`" if row.env_var else ""
        what = f"{row.help} ({row.see})" if row.see else row.help
        lines.append(f"| {what} | {flag} | {variable} | {row.default_text(markdown=True)} |")
    return "\n".join(lines) + "\n"


# --- loading ---


def _number_error(exc: ValueError) -> str:
    text = str(exc)
    if text.startswith(("invalid literal", "could not convert")):
        return "must be a number, got " + text.split(": ", 1)[-1]
    return text


def _resolve(row: Setting, args: argparse.Namespace, environ: Mapping[str, str]) -> Any:
    """One setting: the flag if given, else `SIDECAR_<NAME>`, else the default."""
    raw = getattr(args, row.name, None) if row.flag else None
    if raw is None and row.env_var:
        raw = environ.get(row.env_var)
    if raw is None or raw == "":
        return row.default
    try:
        return row.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"invalid {row.names}: {_number_error(exc)}") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """Build the daemon's settings; raises ConfigError naming the first bad setting."""
    given = {row.name: _resolve(row, args, environ) for row in SETTINGS}
    store = parse_backend_kwargs(given.pop("backend_kwargs"), given.pop("source"))
    allow_remote = given.pop("allow_remote")
    if not given["unix_socket"] and not allow_remote and not _is_loopback(given["host"]):
        raise ConfigError(
            f"refusing to listen on {given['host']!r}: --host / SIDECAR_HOST must be a loopback address "
            "(127.0.0.1, ::1, localhost); set --allow-remote / SIDECAR_ALLOW_REMOTE=true only if "
            "a network policy keeps everyone else out"
        )
    given["token"], given["token_file"] = configured_token(given["token"], given["token_file"], given.pop("no_token"))
    if given["negative_ttl"] is None:
        given["negative_ttl"] = 2 * given["list_interval"]
    _check_events(given)
    # A pod that runs one task (KubernetesExecutor) fetches what the task reads and nothing else,
    # whatever the rest of its settings say: the Helm values share one sidecar spec between Celery
    # workers and task pods and tell them apart by the label Airflow puts on task pods only. A daemon
    # autostarted inside a task pod's own container sees the variable Airflow sets there.
    task_pod = given.pop("task_pod")
    if task_pod is None:
        task_pod = environ.get("AIRFLOW_IS_K8S_EXECUTOR_POD", "").lower() == "true"
    if task_pod:  # it never warms up, nor subscribes to events
        given.update(warmup=False, warmup_jitter=0.0, events="off")
    return Settings(store=store, **given)


def _check_events(given: dict[str, Any]) -> None:
    """Each mode's SIDECAR_EVENTS_* setting is given."""
    if given["events"] == "sns" and not given["events_topic_arn"]:
        raise ConfigError("--events sns / SIDECAR_EVENTS=sns needs --events-topic-arn / SIDECAR_EVENTS_TOPIC_ARN")
    if given["events"] == "sqs" and not given["events_queue_url"]:
        raise ConfigError("--events sqs / SIDECAR_EVENTS=sqs needs --events-queue-url / SIDECAR_EVENTS_QUEUE_URL")
