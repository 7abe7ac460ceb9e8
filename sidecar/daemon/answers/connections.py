"""A JSON connection secret as Airflow gets it: the provider's field aliases, in its order."""

from __future__ import annotations

import json
from typing import Any


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
