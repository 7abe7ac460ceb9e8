"""`SIDECAR_BACKEND_KWARGS`: the provider backend's kwargs JSON, unchanged, parsed into `StoreSettings`.

Two parts, as the provider reads them: how each kind's secret names are formed (prefixes, lookup
patterns, sep, the connection field words), and the options of the AWS client it opens. Every
error names `--backend-kwargs / SIDECAR_BACKEND_KWARGS` and the key, never a value (the JSON may
hold credentials).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sidecar import KINDS, SECRETSMANAGER, SSM
from sidecar.daemon.config_error import ConfigError

T = TypeVar("T")

# --- naming: how each kind maps to secret names ---

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

# The provider's alias words for each connection field (`_standardize_secret_keys`), in its order.
CONN_WORDS: dict[str, tuple[str, ...]] = {
    "login": ("login", "user", "username", "user_name"),
    "password": ("password", "pass", "key"),
    "host": ("host", "remote_host", "server"),
    "port": ("port",),
    "schema": ("database", "schema"),
    "conn_type": ("conn_type", "conn_id", "connection_type", "engine"),
    "extra": ("extra",),
}
# The keys `extra_conn_words` may name; `user` is the provider's alias of `login`.
CONN_FIELDS = tuple(CONN_WORDS)
NAMING_KEYS = (
    *(f"{kind}_prefix" for kind in KINDS),
    *(f"{kind}_lookup_pattern" for kind in KINDS),
    "sep",
    "extra_conn_words",
)

# --- the AWS client: options the provider reads from its kwargs ---

# Its own (api_version, use_ssl) and those of the AWS connection it builds from them
# (AwsConnectionWrapper). Each reaches the daemon's client.
CREDENTIAL_KEYS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
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
    *CREDENTIAL_KEYS,
    "session_kwargs",
)
BACKEND_KWARGS_KEYS = frozenset((*NAMING_KEYS, *AWS_KEYS))


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
    """What `SIDECAR_BACKEND_KWARGS` says, for the store `source` names (it owns the daemon's source:
    the default prefixes and the keys allowed depend on it)."""

    kinds: dict[str, KindRule]
    source: str = SECRETSMANAGER
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


_KWARGS = "--backend-kwargs / SIDECAR_BACKEND_KWARGS"


def parse_backend_kwargs(raw: str, source: str = SECRETSMANAGER) -> StoreSettings:
    data = _object(raw, source)
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


def _object(raw: str, source: str) -> dict[str, Any]:
    """The JSON object, with no key that nothing reads for `source`."""
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
    return data


def _kind_rule(data: dict[str, Any], kind: str, source: str, sep: str) -> KindRule:
    prefix_key = f"{kind}_prefix"
    prefix = data[prefix_key] if prefix_key in data else DEFAULT_PREFIXES[source][kind]
    if prefix is not None and not isinstance(prefix, str):
        raise ConfigError(f"{_KWARGS}: {prefix_key!r} must be a string or null")
    if prefix:
        # As the providers do: Secrets Manager strips its sep, Parameter Store a "/".
        prefix = prefix.rstrip(sep if source == SECRETSMANAGER else "/")
    return KindRule(prefix, _pattern(data, f"{kind}_lookup_pattern"))


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
