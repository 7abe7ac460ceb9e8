"""What the benchmarks store in the emulator and what each lookup must return."""

from __future__ import annotations

import json
import random
from typing import Any

from sidecar.daemon.backend_kwargs import CONN_WORDS

VARIABLES = "airflow/variables/"
CONNECTIONS = "airflow/connections/"

Lookup = tuple[str, str, Any]  # kind, key, expected (None: absent; dict: a normalised JSON connection)


def normalised(secret: dict[str, Any]) -> dict[str, Any]:
    return {field: next((v for k, v in secret.items() if k in words), None) for field, words in CONN_WORDS.items()}


def variable_value(index: int) -> str:
    """Varied values: plain, JSON, long, non-ASCII."""
    kinds = (
        lambda: f"value-{index}",
        lambda: json.dumps({"index": index, "enabled": True, "tags": ["a", "b"]}),
        lambda: f"{index}:" + "x" * 2048,
        lambda: f"schlüssel-{index}-✓ with spaces & symbols %/?",
    )
    return kinds[index % len(kinds)]()


def fresh_process_workload(present: int = 15, absent: int = 5) -> tuple[dict[str, str], list[Lookup]]:
    """15 present and 5 absent variables, 3 URI and 2 JSON connections, in a fixed shuffled order."""
    secrets: dict[str, str] = {}
    lookups: list[Lookup] = []
    for index in range(present):
        key = f"bench_var_{index:02d}"
        secrets[VARIABLES + key] = variable_value(index)
        lookups.append(("variables", key, secrets[VARIABLES + key]))
    lookups += [("variables", f"bench_absent_{index:02d}", None) for index in range(absent)]
    for index in range(3):
        key = f"bench_uri_{index}"
        uri = f"postgresql://user{index}:p%40ss{index}@db{index}.internal:5432/warehouse?sslmode=require"
        secrets[CONNECTIONS + key] = uri
        lookups.append(("connections", key, uri))
    for index in range(2):
        key = f"bench_json_{index}"
        secret = {
            "conn_type": "mysql",
            "user": f"json_user{index}",  # provider aliases: user -> login, database -> schema
            "password": f"s3cr3t-{index}",
            "host": f"mysql{index}.internal",
            "port": 3306,
            "database": "app",
            "extra": {"charset": "utf8mb4"},
        }
        secrets[CONNECTIONS + key] = json.dumps(secret)
        lookups.append(("connections", key, normalised(secret)))
    # The first lookup stays a present variable, so "first lookup" times the same thing for both.
    head, tail = lookups[0], lookups[1:]
    random.Random(15).shuffle(tail)
    return secrets, [head, *tail]


def day_workload(keys: int = 200) -> dict[str, str]:
    """`keys` variables, by key (not secret name)."""
    return {f"day_var_{index:03d}": variable_value(index) for index in range(keys)}
