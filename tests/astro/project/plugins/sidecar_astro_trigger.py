"""A trigger of `make test-astro` (tests/astro/project/dags/astro_sidecar.py): it reads a Connection in
the triggerer, as the amazon provider's async hooks do, and hands back what it found (the password as
its digest). In plugins/, which every Airflow component has on sys.path."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

from airflow.sdk import BaseHook
from airflow.triggers.base import BaseTrigger, TriggerEvent


def described(conn) -> dict:
    """What a check compares of a Connection: the password as its digest, never the password."""
    return {
        "conn_type": conn.conn_type,
        "host": conn.host,
        "login": conn.login,
        "port": conn.port,
        "schema": conn.schema,
        "password_sha256": hashlib.sha256((conn.password or "").encode()).hexdigest(),
    }


class ConnectionTrigger(BaseTrigger):
    def __init__(self, conn_id: str) -> None:
        super().__init__()
        self.conn_id = conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return "sidecar_astro_trigger.ConnectionTrigger", {"conn_id": self.conn_id}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        yield TriggerEvent(described(await BaseHook.aget_connection(self.conn_id)))
