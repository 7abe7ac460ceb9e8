"""A JSON connection secret as Airflow gets it: the provider's field aliases, in its order."""

from __future__ import annotations

import json
from typing import Any

# The provider's alias words for each connection field (`_standardize_secret_keys`).
CONN_WORDS: dict[str, tuple[str, ...]] = {
    "login": ("login", "user", "username", "user_name"),
    "password": ("password", "pass", "key"),
    "host": ("host", "remote_host", "server"),
    "port": ("port",),
    "schema": ("database", "schema"),
    "conn_type": ("conn_type", "conn_id", "connection_type", "engine"),
    "extra": ("extra",),
}


class InvalidSecret(Exception):
    """A stored secret cannot be served as what Airflow asked for (never holds the value)."""


def normalise(value: str, words: dict[str, tuple[str, ...]]) -> str:
    """JSON connections get the provider's field aliases; URIs pass through untouched."""
    if not value.strip().startswith("{"):
        return value
    try:
        secret: Any = json.loads(value)
    except json.JSONDecodeError:
        pass
    else:
        return json.dumps(
            {field: next((v for k, v in secret.items() if k in aliases), None) for field, aliases in words.items()}
        )
    # Raised here, not in the except clause: the decoding error holds the whole value.
    raise InvalidSecret("the connection secret starts with '{' but is not valid JSON")
