"""The one long-lived aiobotocore client, and the mapping of AWS failures to `UpstreamError`."""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aiohttp
from aiobotocore.client import AioBaseClient
from aiobotocore.config import AioConfig
from aiobotocore.credentials import AioAssumeRoleCredentialFetcher, AioDeferredRefreshableCredentials
from aiobotocore.session import AioSession
from botocore.credentials import CredentialProvider
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    DataNotFoundError,
    NoCredentialsError,
    NoRegionError,
    ProfileNotFound,
)
from botocore.loaders import Loader, create_loader
from botocore.parsers import ResponseParserError

from sidecar import __version__
from sidecar.daemon.backend_kwargs import StoreSettings
from sidecar.daemon.config_error import ConfigError
from sidecar.daemon.metrics import Metrics
from sidecar.daemon.sources.base import THROTTLING_CODES, TRANSIENT_CODES, UpstreamError
from sidecar.daemon.sources.quotas import RateLimits

log = logging.getLogger(__name__)
T = TypeVar("T")

# Every AWS call says whose it is (CloudTrail's userAgent), as AWS's own agent marks its calls.
USER_AGENT = f"airflow-secrets-sidecar/{__version__}"

# APIs with small account-wide quotas (100/s) whose throttling the daemon handles itself, by falling
# back to GetSecretValue or by listing again later, spread out: botocore does not retry them when
# throttled, so a fleet started together costs each daemon one throttled call, not a retry series.
NOT_RETRIED_WHEN_THROTTLED = frozenset({"ListSecrets", "BatchGetSecretValue", "GetParametersByPath"})


# botocore's retry mode. "adaptive" adds a client-side rate limiter that slows down while AWS
# throttles (tests/benchmarks/throttling.py measures it against "standard"), cached keys answered
# as fast (stale); a key with nothing cached waits in the limiter up to the request timeout.
RETRY_MODE = "adaptive"


def classify(api: str, exc: BaseException) -> UpstreamError:
    """Turn any failure of an AWS call into an UpstreamError (secret values never reach it)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "Unknown")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        transient = code in TRANSIENT_CODES or status >= 500
        return UpstreamError(api, code, transient, str(error.get("Message") or ""))
    if isinstance(exc, ResponseParserError):
        # An answer botocore cannot read (a proxy's page, a cut-off body): its message quotes the
        # body, which may hold a secret's value, so none of it is kept.
        return UpstreamError(api, "ResponseParserError", True, "AWS's answer could not be parsed")
    if isinstance(exc, NoCredentialsError):
        # Credentials may appear (IMDS, IRSA token refresh): keep serving stale meanwhile.
        return UpstreamError(api, "NoCredentials", True, str(exc))
    if isinstance(exc, (BotoCoreError, aiohttp.ClientError, asyncio.TimeoutError, OSError)):
        return UpstreamError(api, type(exc).__name__, True, str(exc))
    raise exc


class _AssumeRoleProvider(CredentialProvider):
    """Credentials of `role_arn`, renewed through STS before they expire."""

    METHOD = "assume-role"
    CANONICAL_NAME = "sidecar-assume-role"

    def __init__(self, base: AioSession, store: StoreSettings) -> None:
        super().__init__()
        self._base = base
        self._store = store

    async def load(self) -> AioDeferredRefreshableCredentials:
        source_credentials = await self._base.get_credentials()
        extra_args = {"RoleSessionName": "airflow-secrets-sidecar", **self._store.assume_role_kwargs}
        sts = {
            "region_name": self._store.region_name,
            "endpoint_url": self._store.sts_endpoint_url,
            "config": AioConfig(user_agent_extra=USER_AGENT),
        }
        fetcher = AioAssumeRoleCredentialFetcher(
            client_creator=functools.partial(self._base.create_client, **sts),
            source_credentials=source_credentials,
            role_arn=self._store.role_arn,
            extra_args=extra_args,
        )
        return AioDeferredRefreshableCredentials(refresh_using=fetcher.fetch_credentials, method=self.METHOD)


# The services whose endpoints the daemon's clients resolve: its stores, its events, and the ones
# botocore's credential providers call (assume-role, SSO profiles, console sign-in).
SERVICES = frozenset({"secretsmanager", "ssm", "sqs", "sns", "sts", "sso", "sso-oidc", "signin"})


class _Loader(Loader):
    """botocore's data loader, but its endpoints.json holds only the daemon's SERVICES.

    botocore would parse endpoints.json (1.2 MB: every AWS service in every region) into 7 MB of
    dicts, and keep them for as long as a client lives, to find a few services' endpoints. Even
    pruned at once, the parse would leave its memory to the daemon for life, as holes in
    pymalloc's arenas: here it is read one service at a time, and only SERVICES are kept."""

    def __init__(self, search_paths: list[str]) -> None:
        super().__init__(extra_search_paths=search_paths, include_default_search_paths=False)
        self._endpoints: tuple[dict[str, Any], str] | None = None

    def load_data_with_path(self, name: str) -> tuple[Any, str]:
        if name != "endpoints":
            return super().load_data_with_path(name)
        if self._endpoints is None:
            for directory in self.search_paths:  # the first found wins, as in botocore's own lookup
                path = os.path.join(directory, name)
                for suffix, read in ((".json", open), (".json.gz", gzip.open)):
                    if os.path.isfile(path + suffix):
                        with read(path + suffix, "rt", encoding="utf-8") as file:
                            self._endpoints = _read_endpoints(file.read())[0], path
                        return self._endpoints
            raise DataNotFoundError(data_path=name)
        return self._endpoints


_decode = json.JSONDecoder().raw_decode
_SPACE = re.compile(r"[ \t\n\r]*")
SERVICES_PATH = ("partitions", "*", "services")  # where endpoints.json lists each partition's services


def _read_endpoints(text: str, at: int = 0, depth: int = 0) -> tuple[Any, int]:
    """The JSON value at `at` in endpoints.json, and where it ends. The containers along
    SERVICES_PATH are read member by member, and in the last only SERVICES' members are kept."""
    at = _SPACE.match(text, at).end()
    if depth > len(SERVICES_PATH) or text[at] not in "[{":
        return _decode(text, at)
    is_list = text[at] == "["
    items: Any = [] if is_list else {}
    at += 1
    while True:
        at = _SPACE.match(text, at).end()
        if text[at] in "]}":
            return items, at + 1
        if text[at] == ",":
            at += 1
            continue
        key = "*"  # a list's every element
        if not is_list:
            key, at = _decode(text, at)
            at = _SPACE.match(text, at).end() + 1  # past the colon
        on_path = depth < len(SERVICES_PATH) and SERVICES_PATH[depth] == key
        value, at = _read_endpoints(text, at, depth + 1 if on_path else len(SERVICES_PATH) + 1)
        if is_list:
            items.append(value)
        elif depth < len(SERVICES_PATH) or key in SERVICES:
            items[key] = value


# botocore data loaders by AWS_DATA_PATH, shared by every session the daemon makes: each would
# otherwise parse its own copy of the same models, one per client (source, STS, SQS, SNS).
_loaders: dict[str | None, Loader] = {}


def _loader(session: AioSession) -> Loader:
    data_path = session.get_config_variable("data_path")
    loader = _loaders.get(data_path)
    if loader is None:
        loader = _loaders[data_path] = _Loader(create_loader(data_path).search_paths)
    return loader


def _new_session(store: StoreSettings) -> AioSession:
    session = AioSession(profile=store.profile_name)
    session.register_component("data_loader", _loader(session))
    return session


def _session(store: StoreSettings) -> AioSession:
    """The standard credential chain, unless the kwargs gave keys; role_arn assumed on top of either."""
    base = _new_session(store)
    if store.credentials:
        base.set_credentials(*store.credentials)
    if not store.role_arn:
        return base
    session = _new_session(store)
    session.get_component("credential_provider").insert_before("env", _AssumeRoleProvider(base, store))
    return session


@asynccontextmanager
async def open_client(
    service: str, store: StoreSettings, max_upstream: int, *, store_service: bool = True, read_timeout: float = 10
) -> AsyncIterator[AioBaseClient]:
    """One client for the daemon's life: its connection pool is sized for `max_upstream` calls.
    `store_service=False` (SQS, SNS): the kwargs' endpoint_url and api_version, which are the
    store's, are left out; botocore's AWS_ENDPOINT_URL_<SERVICE> still applies."""
    config = AioConfig(
        # Retries transient errors and throttling with jittered back-off; the cache serves stale
        # answers meanwhile, so a few quick attempts beat many slow ones.
        retries={"mode": RETRY_MODE, "total_max_attempts": 3},
        connect_timeout=3,
        read_timeout=read_timeout,
        user_agent_extra=USER_AGENT,
    )
    try:
        config = config.merge(AioConfig(**store.config_kwargs))  # the user's config_kwargs win...
    except TypeError as exc:
        raise ConfigError(f"--backend-kwargs / SIDECAR_BACKEND_KWARGS: 'config_kwargs': {exc}") from None
    # ...but the pool stays sized for the calls the daemon allows in flight.
    config = config.merge(AioConfig(max_pool_connections=max_upstream))
    options = {
        "region_name": store.region_name,
        "endpoint_url": store.endpoint_url if store_service else None,
        "verify": store.verify,
        "api_version": store.api_version if store_service else None,
        "use_ssl": store.use_ssl,
    }
    kwargs: dict[str, Any] = {"config": config}
    kwargs.update((key, value) for key, value in options.items() if value not in (None, ""))
    try:
        session = _session(store)  # a profile's data_path is read here: ProfileNotFound too
        client_context = session.create_client(service, **kwargs)
        client = await client_context.__aenter__()
    except ProfileNotFound:
        raise ConfigError(
            f"--backend-kwargs / SIDECAR_BACKEND_KWARGS: profile_name {store.profile_name!r} is not in the "
            "AWS config files (AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE)"
        ) from None
    except NoRegionError:
        raise ConfigError(
            "no AWS region: set region_name in --backend-kwargs / SIDECAR_BACKEND_KWARGS, or AWS_REGION"
        ) from None
    except DataNotFoundError:
        if "api_version" not in kwargs:
            raise  # botocore's own data is missing: a broken install, not the configuration
        known = session.get_component("data_loader").list_api_versions(service, "service-2")
        raise ConfigError(
            f"--backend-kwargs / SIDECAR_BACKEND_KWARGS: api_version {store.api_version!r} is not a version of "
            f"{service} this botocore knows; it knows {', '.join(known)} (or leave api_version out)"
        ) from None
    service_id = client.meta.service_model.service_id.hyphenize()
    for api in NOT_RETRIED_WHEN_THROTTLED:
        # More specific than the retry handler's event: it answers first, and False means no retry.
        client.meta.events.register(f"needs-retry.{service_id}.{api}", _not_when_throttled)
    try:
        yield client
    finally:
        await client_context.__aexit__(None, None, None)


def _not_when_throttled(response: Any = None, **_: Any) -> bool | None:
    """botocore's needs-retry hook: no retry for a throttled answer (None: let botocore decide)."""
    if response is not None and response[1].get("Error", {}).get("Code") in THROTTLING_CODES:
        return False
    return None


class Caller:
    """Runs AWS calls: each API within the daemon's share of its quota, at most `max_upstream`
    at once, each counted and classified."""

    def __init__(self, metrics: Metrics, max_upstream: int, limits: RateLimits) -> None:
        self._metrics = metrics
        self._slots = asyncio.Semaphore(max_upstream)
        self._limits = limits

    async def __call__(
        self, api: str, call: Callable[[], Awaitable[T]], ok_codes: frozenset[str] = frozenset()
    ) -> T | None:
        """Await `call()`; a ClientError whose code is in `ok_codes` returns None (a miss)."""
        delay = self._limits.delay(api)
        if delay:
            self._metrics.paced_calls.labels(api).inc()
            await asyncio.sleep(delay)
        async with self._slots:
            try:
                result = await call()
            except Exception as exc:
                if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in ok_codes:
                    self._metrics.upstream_calls.labels(api, "not_found").inc()
                    return None
                error = classify(api, exc)
                self._metrics.upstream_calls.labels(api, "throttled" if error.throttled else "error").inc()
                raise error from None
        self._metrics.upstream_calls.labels(api, "ok").inc()
        return result
