"""One `Settings` object from CLI flags, `SIDECAR_*` environment variables and defaults.

Flags win over environment variables. Every error names the flag and the variable to change,
and never echoes a token or the backend kwargs JSON (it may hold credentials).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from sidecar import DEFAULT_HOST, DEFAULT_PORT, KINDS, SECRETSMANAGER, SSM, STORES, client
from sidecar.daemon.lookup.connections import CONN_WORDS

SOURCES = STORES

# The provider backends' own defaults, so an empty SIDECAR_BACKEND_KWARGS behaves like theirs.
DEFAULT_PREFIXES: dict[str, dict[str, str]] = {
    SECRETSMANAGER: {
        "variables": "airflow/variables",
        "connections": "airflow/connections",
        "config": "airflow/config",
    },
    SSM: {
        "variables": "/airflow/variables",
        "connections": "/airflow/connections",
        "config": "/airflow/config",
    },
}

# The keys `_standardize_secret_keys` of the provider knows; `user` is its alias of `login`.
CONN_FIELDS = tuple(CONN_WORDS)

# AWS client options the provider reads from its kwargs: its own (api_version, use_ssl) and those of
# the AWS connection it builds from them (AwsConnectionWrapper). Each reaches the daemon's client.
AWS_KEYS = (
    "role_arn",
    "assume_role_method",
    "assume_role_kwargs",
    "region_name",
    "profile_name",
    "endpoint_url",
    "verify",
    "api_version",
    "use_ssl",
    "config_kwargs",
    "service_config",
    *("aws_access_key_id", "aws_secret_access_key", "aws_session_token", "session_kwargs"),
)
CREDENTIAL_KEYS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
BACKEND_KWARGS_KEYS = frozenset(
    [f"{kind}_prefix" for kind in KINDS]
    + [f"{kind}_lookup_pattern" for kind in KINDS]
    + ["sep", "extra_conn_words", *AWS_KEYS]
)

T = TypeVar("T")


class ConfigError(Exception):
    """A setting is invalid. The message names the flag or variable to change."""


@dataclass(frozen=True)
class KindRule:
    """How one kind (variables, connections, config) maps to secret names."""

    prefix: str | None  # None: this kind is never looked up; "": the bare key is the name
    lookup_pattern: re.Pattern[str] | None

    def admits(self, key: str) -> bool:
        if self.prefix is None:
            return False
        return self.lookup_pattern is None or self.lookup_pattern.match(key) is not None


@dataclass(frozen=True)
class StoreSettings:
    """What `SIDECAR_BACKEND_KWARGS` says: the provider backend's kwargs, parsed."""

    kinds: dict[str, KindRule]
    source: str = "secretsmanager"
    sep: str = "/"
    extra_conn_words: dict[str, tuple[str, ...]] = field(default_factory=dict)
    role_arn: str | None = None
    assume_role_kwargs: dict[str, Any] = field(default_factory=dict)
    region_name: str | None = None
    profile_name: str | None = None
    endpoint_url: str | None = None
    verify: bool | str | None = None
    api_version: str | None = None
    use_ssl: bool | None = None
    # botocore.config.Config's options, over the daemon's own.
    config_kwargs: dict[str, Any] = field(default_factory=dict)
    # STS's endpoint for role_arn (the provider's service_config {"sts": {"endpoint_url": ...}}).
    sts_endpoint_url: str | None = None
    # Access key, secret key and session token given in the JSON, as the provider takes them.
    credentials: tuple[str, str, str | None] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Settings:
    store: StoreSettings
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    # The listener Prometheus scrapes (sidecar/daemon/http/scrape.py): None is none; "" is every interface.
    metrics_port: int | None = None
    metrics_host: str = ""
    unix_socket: str | None = None
    unix_socket_group: str | None = None
    token: str | None = field(default=None, repr=False)
    token_file: str | None = None
    source: str = "secretsmanager"
    ttl: float = 1800.0
    negative_ttl: float = 600.0
    max_stale: float = 21600.0
    max_entries: int = 10000
    warmup: bool = True
    list_interval: float = 300.0
    log_level: str = "INFO"
    log_format: str = "text"
    # uvloop (the `uvloop` extra; the Docker image's choice): a faster event loop under the daemon.
    event_loop: str = "asyncio"
    # AWS calls in flight at once; also sizes the HTTP connection pool to AWS.
    max_upstream: int = 32
    # The share of each AWS API's account-wide quota this daemon may use (sidecar/daemon/sources/quotas.py).
    aws_quota_share: float = 0.1
    # Seconds over which a fleet spreads its warm-ups: > 0 serves lazily at once, warms up later.
    warmup_jitter: float = 0.0
    # HTTP requests handled at once before the daemon answers 429.
    max_requests: int = 512
    # Open client connections (keep-alive ones included) before the daemon answers 429.
    max_connections: int = 1024
    # Longest a request waits on AWS before it gets a 503.
    request_timeout: float = 8.0
    # AWS's change events (docs/events.md): off, sns (a queue of this daemon's own on the topic)
    # or sqs (a queue the operator made for this daemon alone).
    events: str = "off"
    events_topic_arn: str | None = None
    events_queue_url: str | None = None
    # Seconds between listings while events arrive: the listing is then only the backstop.
    events_list_interval: float = 3600.0
    # Mode sns: this daemon's queue is named prefix + identity (default: the host name, a pod's name).
    events_queue_prefix: str = "airflow-secrets-sidecar-"
    events_identity: str | None = None
    # Core dumps off and no debugger of the same user (sidecar/daemon/harden.py); false to debug.
    harden: bool = True


# Each setting's default, written once: in the field above.
DEFAULTS: dict[str, Any] = {each.name: each.default for each in fields(Settings)}


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


def _text(raw: str) -> str:
    return raw


def _group(raw: str) -> str:
    import grp

    try:
        grp.getgrnam(raw)
    except KeyError:
        raise ValueError(f"no such group {raw!r} on this host") from None
    return raw


def _number_error(exc: ValueError) -> str:
    text = str(exc)
    if text.startswith(("invalid literal", "could not convert")):
        return "must be a number, got " + text.split(": ", 1)[-1]
    return text


def _setting(
    args: argparse.Namespace, environ: Mapping[str, str], name: str, parse: Callable[[Any], T], default: Any = None
) -> T:
    """Resolve one setting: the flag if given, else `SIDECAR_<NAME>`, else the default (the
    `Settings` field's own unless one is given)."""
    if default is None:
        default = DEFAULTS.get(name)
    env_var = f"SIDECAR_{name.upper()}"
    flag = "--" + name.replace("_", "-")
    raw = getattr(args, name, None)
    if raw is None:
        raw = environ.get(env_var)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except ValueError as exc:
        raise ConfigError(f"invalid {flag} / {env_var}: {_number_error(exc)}") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """Build the daemon's settings; raises ConfigError naming the first bad setting."""
    source = _setting(args, environ, "source", _choice(*SOURCES))
    store = parse_backend_kwargs(_setting(args, environ, "backend_kwargs", _text, "{}"), source)
    ttl = _setting(args, environ, "ttl", _positive_float)
    host = _setting(args, environ, "host", _text)
    allow_remote = _setting(args, environ, "allow_remote", _bool)
    unix_socket = _setting(args, environ, "unix_socket", _text)
    if not unix_socket and not allow_remote and not _is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host!r}: --host / SIDECAR_HOST must be a loopback address "
            "(127.0.0.1, ::1, localhost); set --allow-remote / SIDECAR_ALLOW_REMOTE=true only if "
            "a network policy keeps everyone else out"
        )
    token, token_file = _token(args, environ)
    warmup = _setting(args, environ, "warmup", _bool)
    warmup_jitter = _setting(args, environ, "warmup_jitter", _non_negative_float)
    list_interval = _setting(args, environ, "list_interval", _positive_float)
    # A pod that runs one task (KubernetesExecutor) fetches what the task reads and nothing else,
    # whatever the rest of its settings say: the Helm values share one sidecar spec between Celery
    # workers and task pods and tell them apart by the label Airflow puts on task pods only. A daemon
    # autostarted inside a task pod's own container sees the variable Airflow sets there.
    task_pod_by_airflow = environ.get("AIRFLOW_IS_K8S_EXECUTOR_POD", "").lower() == "true"
    task_pod = _setting(args, environ, "task_pod", _bool, task_pod_by_airflow)
    if task_pod:
        warmup, warmup_jitter = False, 0.0
    return Settings(
        store=store,
        host=host,
        port=_setting(args, environ, "port", _port),
        metrics_port=_setting(args, environ, "metrics_port", _port),
        metrics_host=_setting(args, environ, "metrics_host", _text),
        unix_socket=unix_socket,
        unix_socket_group=_setting(args, environ, "unix_socket_group", _group),
        token=token,
        token_file=token_file,
        source=source,
        ttl=ttl,
        negative_ttl=_setting(args, environ, "negative_ttl", _non_negative_float, 2 * list_interval),
        max_stale=_setting(args, environ, "max_stale", _non_negative_float),
        max_entries=_setting(args, environ, "max_entries", _positive_int),
        warmup=warmup,
        list_interval=list_interval,
        log_level=_setting(args, environ, "log_level", _choice("debug", "info", "warning", "error")).upper(),
        log_format=_setting(args, environ, "log_format", _choice("text", "json")),
        event_loop=_setting(args, environ, "event_loop", _choice("asyncio", "uvloop")),
        max_upstream=_setting(args, environ, "max_upstream", _positive_int),
        aws_quota_share=_setting(args, environ, "aws_quota_share", _share),
        warmup_jitter=warmup_jitter,
        max_requests=_setting(args, environ, "max_requests", _positive_int),
        max_connections=_setting(args, environ, "max_connections", _positive_int),
        request_timeout=_setting(args, environ, "request_timeout", _positive_float),
        harden=_setting(args, environ, "harden", _bool),
        **_events(args, environ, task_pod),
    )


def _events(args: argparse.Namespace, environ: Mapping[str, str], task_pod: bool) -> dict[str, Any]:
    """The SIDECAR_EVENTS_* settings, each checked against the mode that needs it."""
    mode = _setting(args, environ, "events", _choice("off", "sns", "sqs"))
    found = {
        "events": "off" if task_pod else mode,  # a pod that lives for one task never subscribes
        "events_topic_arn": _setting(args, environ, "events_topic_arn", _matching(TOPIC_ARN, "an SNS topic's ARN")),
        "events_queue_url": _setting(args, environ, "events_queue_url", _matching(QUEUE_URL, "an SQS queue's URL")),
        "events_list_interval": _setting(args, environ, "events_list_interval", _positive_float),
        "events_queue_prefix": _setting(
            args, environ, "events_queue_prefix", _matching(QUEUE_PREFIX, "1 to 40 of A-Z, a-z, 0-9, _ and -")
        ),
        "events_identity": _setting(args, environ, "events_identity", _text),
    }
    if mode == "sns" and not found["events_topic_arn"]:
        raise ConfigError("--events sns / SIDECAR_EVENTS=sns needs --events-topic-arn / SIDECAR_EVENTS_TOPIC_ARN")
    if mode == "sqs" and not found["events_queue_url"]:
        raise ConfigError("--events sqs / SIDECAR_EVENTS=sqs needs --events-queue-url / SIDECAR_EVENTS_QUEUE_URL")
    return found


TOPIC_ARN = re.compile(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_.-]{1,256}")
QUEUE_URL = re.compile(r"https?://[^\s/]+/\d{12}/[A-Za-z0-9_-]{1,80}(\.fifo)?")
QUEUE_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,40}")


def _matching(pattern: re.Pattern[str], what: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if not pattern.fullmatch(raw.strip()):
            raise ValueError(f"must be {what}, got {raw!r}")
        return raw.strip()

    return parse


def _token(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The token: `--token-file`, else `SIDECAR_TOKEN_FILE`, else `SIDECAR_TOKEN`."""
    token_file = getattr(args, "token_file", None) or environ.get("SIDECAR_TOKEN_FILE") or None
    no_token = bool(getattr(args, "no_token", False))
    if token_file:
        return read_token_file(token_file), token_file
    token = environ.get("SIDECAR_TOKEN") or None
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


# --- SIDECAR_BACKEND_KWARGS: the provider's JSON, unchanged ---

_KWARGS = "--backend-kwargs / SIDECAR_BACKEND_KWARGS"


def parse_backend_kwargs(raw: str, source: str = "secretsmanager") -> StoreSettings:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        # The position only: the text may hold credentials.
        raise ConfigError(f"{_KWARGS} is not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{_KWARGS} must be a JSON object, like the provider's backend_kwargs")
    unknown = sorted(set(data) - BACKEND_KWARGS_KEYS)
    if unknown:
        raise ConfigError(
            f"{_KWARGS} has keys neither the provider's backend nor its AWS connection reads: {unknown} "
            f"(misspelt?); the keys: {sorted(BACKEND_KWARGS_KEYS)}"
        )
    if source == SSM:
        only_secretsmanager = sorted({"sep", "extra_conn_words"} & set(data))
        if only_secretsmanager:
            raise ConfigError(
                f"{_KWARGS}: {only_secretsmanager} are SecretsManagerBackend options; Parameter Store "
                "names always use '/' and its connections are not normalised"
            )
    sep = _typed(data, "sep", str, "/")
    if not sep:
        raise ConfigError(f"{_KWARGS}: 'sep' must not be empty")
    kinds = {kind: _kind_rule(data, kind, source, sep) for kind in KINDS}
    verify = data.get("verify")
    if verify is not None and not isinstance(verify, (bool, str)):
        raise ConfigError(f"{_KWARGS}: 'verify' must be true, false or a CA bundle path")
    use_ssl = data.get("use_ssl")
    if use_ssl is not None and not isinstance(use_ssl, bool):
        raise ConfigError(f"{_KWARGS}: 'use_ssl' must be true or false")
    if data.get("assume_role_method", "assume_role") != "assume_role":
        raise ConfigError(
            f"{_KWARGS}: 'assume_role_method' {data['assume_role_method']!r} is not supported, only "
            "'assume_role'; for web identity (IRSA) drop role_arn: the standard chain assumes the role"
        )
    sts = _typed(data, "service_config", dict, {}).get("sts") or {}
    return StoreSettings(
        kinds=kinds,
        source=source,
        sep=sep,
        extra_conn_words=_extra_conn_words(data.get("extra_conn_words")),
        role_arn=_typed(data, "role_arn", str, None),
        assume_role_kwargs=_typed(data, "assume_role_kwargs", dict, {}),
        region_name=_typed(data, "region_name", str, None),
        profile_name=_typed(data, "profile_name", str, None),
        endpoint_url=_typed(data, "endpoint_url", str, None),
        verify=verify,
        api_version=_typed(data, "api_version", str, None),
        use_ssl=use_ssl,
        config_kwargs=_typed(data, "config_kwargs", dict, {}),
        sts_endpoint_url=sts.get("endpoint_url") if isinstance(sts, dict) else None,
        credentials=_credentials(data),
    )


def _kind_rule(data: dict[str, Any], kind: str, source: str, sep: str) -> KindRule:
    prefix_key = f"{kind}_prefix"
    prefix = data[prefix_key] if prefix_key in data else DEFAULT_PREFIXES[source][kind]
    if prefix is not None and not isinstance(prefix, str):
        raise ConfigError(f"{_KWARGS}: {prefix_key!r} must be a string or null")
    if prefix:
        # As the providers do: Secrets Manager strips its sep, Parameter Store a "/".
        prefix = prefix.rstrip(sep if source == SECRETSMANAGER else "/")
    return KindRule(prefix, _pattern(data, f"{kind}_lookup_pattern"))


def _credentials(data: dict[str, Any]) -> tuple[str, str, str | None] | None:
    """Keys given in the JSON, or in its session_kwargs, as the provider's AWS connection reads them;
    None leaves credentials to the standard chain. Error messages name keys, never values."""
    nested = _typed(data, "session_kwargs", dict, {})
    access, secret, token = (data.get(key) or nested.get(key) for key in CREDENTIAL_KEYS)
    if access is None and secret is None:
        if token is not None:
            raise ConfigError(f"{_KWARGS}: 'aws_session_token' needs 'aws_access_key_id' and 'aws_secret_access_key'")
        return None
    if not (isinstance(access, str) and isinstance(secret, str) and isinstance(token, (str, type(None)))):
        raise ConfigError(f"{_KWARGS}: 'aws_access_key_id' and 'aws_secret_access_key' must both be strings")
    return access, secret, token


def _typed(data: dict[str, Any], key: str, kind: type[T], default: Any) -> Any:
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise ConfigError(f"{_KWARGS}: {key!r} must be a {'string' if kind is str else 'JSON object'}")
    return value


def _pattern(data: dict[str, Any], key: str) -> re.Pattern[str] | None:
    pattern = _typed(data, key, str, None)
    if not pattern:
        return None
    try:
        return re.compile(pattern, re.IGNORECASE)  # the provider uses re.match(..., re.IGNORECASE)
    except re.error as exc:
        raise ConfigError(f"{_KWARGS}: {key!r} is not a valid regular expression: {exc}") from None


def _extra_conn_words(value: Any) -> dict[str, tuple[str, ...]]:
    if value is None:
        return {}
    allowed = ("user", *CONN_FIELDS)
    if not isinstance(value, dict):
        raise ConfigError(f"{_KWARGS}: 'extra_conn_words' must be an object of lists, like {{'login': ['usr']}}")
    words: dict[str, tuple[str, ...]] = {}
    for conn_field, extra in value.items():
        if conn_field not in allowed:
            raise ConfigError(f"{_KWARGS}: 'extra_conn_words' key {conn_field!r} is not one of {list(allowed)}")
        if not isinstance(extra, list) or not all(isinstance(word, str) for word in extra):
            raise ConfigError(f"{_KWARGS}: 'extra_conn_words'[{conn_field!r}] must be a list of strings")
        target = "login" if conn_field == "user" else conn_field
        words[target] = (*words.get(target, ()), *extra)
    return words
