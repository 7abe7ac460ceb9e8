"""`on_unavailable="direct"`: with no daemon to ask, ask AWS in this process through the Amazon
provider's own backend, as Airflow would without the sidecar.

Imported only when no daemon answers: the provider backend imports boto3, which an Airflow process
using the sidecar otherwise never loads.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from typing import Any

from sidecar import BACKEND_KWARGS_ENV, CONFIG, SECRETSMANAGER, SSM, VARIABLES

# The backend's logger: this fallback is the backend's behaviour, and its users filter that name.
log = logging.getLogger("sidecar.backend")

PROVIDER_BACKENDS = {
    SECRETSMANAGER: "airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend",
    SSM: "airflow.providers.amazon.aws.secrets.systems_manager.SystemsManagerParameterStoreBackend",
}


class ProviderMissing(Exception):
    """The Amazon provider is not installed; the message says so."""


class DirectFallback:
    """The provider backend for `source`, built at the first lookup with `fallback_kwargs` (default
    SIDECAR_BACKEND_KWARGS, the daemon's kwargs), then kept for the process's life."""

    def __init__(self, source: str, fallback_kwargs: dict[str, Any] | None, where: str) -> None:
        self._source = source
        self._kwargs = fallback_kwargs
        self._where = where  # the daemon that did not answer, for the log
        self._provider: Any = None

    def lookup(self, kind: str, key: str, team: str | None) -> str | None:
        provider = self._provider if self._provider is not None else self._build()
        if kind == CONFIG:
            return provider.get_config(key)
        method = provider.get_variable if kind == VARIABLES else provider.get_conn_value
        return method(key, team_name=team) if team else method(key)

    def _build(self) -> Any:
        module_name, _, class_name = PROVIDER_BACKENDS[self._source].rpartition(".")
        try:
            backend_class = getattr(importlib.import_module(module_name), class_name)
        except ImportError:
            raise ProviderMissing(
                f"no sidecar at {self._where}, and on_unavailable 'direct' needs "
                "apache-airflow-providers-amazon installed"
            ) from None
        kwargs = self._kwargs
        if kwargs is None:
            kwargs = json.loads(os.environ.get(BACKEND_KWARGS_ENV) or "{}")
        self._provider = backend_class(**kwargs)
        log.warning("no sidecar answers at %s: asking AWS directly through %s in this process", self._where, class_name)
        return self._provider
