"""Test helpers: a counting AWS emulation (moto's server mode), a fake clock, settings."""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import re
import socket
import threading
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import boto3
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

from sidecar.daemon.settings import Settings, load_settings

if TYPE_CHECKING:
    from prometheus_client.samples import Sample

    from sidecar.daemon.metrics import Metrics

REGION = "us-east-1"
TOKEN = "test-token-0123456789abcdef"
REPO = Path(__file__).resolve().parent.parent
# The daemon and boto3 find these through the standard credential chain; nothing reaches AWS.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class AwsEmulator(ThreadedMotoServer):
    """moto in server mode (a real HTTP endpoint) that counts calls and can fail on purpose.

    `calls` counts requests per API as they reach AWS (retries included); `names` records every
    SecretId / Name asked for. `fail[api] = code` answers that API with that error code, and
    `fail[f"{api}:{name}"] = code` only the requests that name that secret.
    """

    def __init__(self) -> None:
        super().__init__(ip_address="127.0.0.1", port=0, verbose=False)
        self.calls: Counter[str] = Counter()
        self.names: list[str] = []
        self.access_keys: Counter[str] = Counter()  # the key id each signed request was signed with
        self.user_agents: dict[str, set[str]] = {}  # API -> the User-Agent headers its requests carried
        self.fail: dict[str, str] = {}
        self._lock = threading.Lock()

    def _server_entry(self) -> None:
        moto_app = DomainDispatcherApplication(create_backend_app)

        def counting_app(environ: dict[str, Any], start_response: Any) -> Any:
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            environ["wsgi.input"] = io.BytesIO(body)
            api, names = _describe(environ, body)
            if api:
                signed = re.search(r"Credential=([^/]+)/", environ.get("HTTP_AUTHORIZATION", ""))
                with self._lock:
                    self.calls[api] += 1
                    self.names.extend(names)
                    self.access_keys[signed[1] if signed else ""] += 1
                    self.user_agents.setdefault(api, set()).add(environ.get("HTTP_USER_AGENT", ""))
                code = next((self.fail[f"{api}:{name}"] for name in names if f"{api}:{name}" in self.fail), None)
                code = code or self.fail.get(api) or self.fail.get("*")
                if code:
                    status = "500 Internal Server Error" if code.startswith("Internal") else "400 Bad Request"
                    payload = json.dumps({"__type": code, "message": f"injected {code}"}).encode()
                    start_response(status, [("Content-Type", "application/x-amz-json-1.1")])
                    return [payload]
            return moto_app(environ, start_response)

        self._server = make_server(self._ip_address, self._port, counting_app, True, request_handler=MotoRequestHandler)
        self._port = self._server.server_address[1]  # a restart comes back on the same port
        self._server_ready_event.set()
        self._server.serve_forever()

    def stop(self) -> None:
        server = self._server
        super().stop()
        if server is not None:
            server.server_close()  # free the port now, so a restart can bind it again

    @property
    def endpoint(self) -> str:
        host, port = self.get_host_and_port()
        return f"http://{host}:{port}"

    def client(self, service: str = "secretsmanager") -> Any:
        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION)

    def reset(self) -> None:
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")).read()
        self.clear_counts()
        self.fail.clear()

    def clear_counts(self) -> None:
        with self._lock:
            self.calls.clear()
            self.names.clear()
            self.access_keys.clear()
            self.user_agents.clear()

    def total(self) -> int:
        return sum(self.calls.values())

    def put(self, name: str, value: str | bytes) -> None:
        client = self.client()
        if isinstance(value, bytes):
            client.create_secret(Name=name, SecretBinary=value)
        else:
            client.create_secret(Name=name, SecretString=value)
        self.clear_counts()


def _describe(environ: dict[str, Any], body: bytes) -> tuple[str, list[str]]:
    """The API a request calls and the secret names it asks for."""
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        api = target.rsplit(".", 1)[-1]
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            payload = {}
        names = [payload[k] for k in ("SecretId", "Name") if isinstance(payload.get(k), str)]
        names += payload.get("SecretIdList") or payload.get("Names") or []
        return api, names
    form = parse_qs(body.decode("utf-8", "replace"))
    return (form.get("Action") or [""])[0], []


def make_settings(aws: AwsEmulator | str, backend_kwargs: dict[str, Any] | None = None, **env: Any) -> Settings:
    """Settings as the CLI would build them: port 0, the emulator as endpoint, SIDECAR_* from `env`."""
    endpoint = aws if isinstance(aws, str) else aws.endpoint
    kwargs = {"region_name": REGION, "endpoint_url": endpoint, **(backend_kwargs or {})}
    environ = {"SIDECAR_TOKEN": TOKEN, "SIDECAR_BACKEND_KWARGS": json.dumps(kwargs), "SIDECAR_PORT": "0"}
    environ.update({f"SIDECAR_{name.upper()}": str(value) for name, value in env.items()})
    return load_settings(argparse.Namespace(), environ)


class DaemonThread:
    """A Daemon on its own event loop in a thread, for blocking clients (http.client, the backend),
    started in full: serving HTTP, its background loops running."""

    def __init__(self, settings: Settings, **options: Any) -> None:
        import asyncio

        from sidecar.daemon.lifecycle import Daemon

        self.loop = asyncio.new_event_loop()
        self.daemon = Daemon(settings, **options)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> DaemonThread:
        self._thread.start()
        self.run(self._start())
        return self

    def _start(self) -> Coroutine[Any, Any, None]:
        return self.daemon.start()

    def __exit__(self, *_: object) -> None:
        self.run(self.daemon.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def run(self, coroutine: Any) -> Any:
        """Run a coroutine on the daemon's loop and wait for its result."""
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.daemon.url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)


class OpenDaemonThread(DaemonThread):
    """A DaemonThread only opened (`Daemon.open`): serving HTTP with nothing in the background, the
    test drives the warm-up and the refresh passes."""

    def _start(self) -> Coroutine[Any, Any, None]:
        return self.daemon.open()


def airflow_env(home: Path, **settings: str) -> dict[str, str]:
    """The environment of a fresh Airflow process: this one's, minus any Airflow or sidecar setting."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AIRFLOW", "SIDECAR_", "_AIRFLOW")) and name != "PYTEST_CURRENT_TEST"
    }
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
        **settings,
    )
    return env


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def refused(port: int) -> bool:
    """True when a connection to the loopback port is refused (nothing listens)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True


async def resolved(resolver: Any, kind: str, key: str) -> tuple[str | None, Any]:
    """What the daemon's lookup gives for `key`: (the value, the status)."""
    answer, status = await resolver.get(kind, key)
    return answer.value, status


def _variable_into(backend: Any, key: str, results: Any) -> None:
    try:
        results.put(("ok", backend.get_variable(key)))
    except Exception as exc:
        results.put(("error", repr(exc)))


def variable_in_forked_child(backend: Any, key: str) -> tuple[tuple[str, Any], int | None]:
    """`backend.get_variable(key)` in a forked child: ("ok", value) or ("error", repr), and its exit code."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_variable_into, args=(backend, key, results))
    child.start()
    result = results.get(timeout=30)
    child.join(timeout=30)
    return result, child.exitcode


def metric_samples(metrics: Metrics) -> list[Sample]:
    """Every sample of the daemon's /metrics text, as Prometheus's own client library parses it."""
    from prometheus_client.parser import text_string_to_metric_families

    return [sample for family in text_string_to_metric_families(metrics.render().decode()) for sample in family.samples]


def sample_value(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float | None:
    """One sample's value in the daemon's /metrics text (None: no such series)."""
    wanted = labels or {}
    return next((s.value for s in metric_samples(metrics) if s.name == name and s.labels == wanted), None)


def served_requests(sidecar_url: str) -> dict[tuple[str, str], float]:
    """/v1 requests the daemon answered, by (kind, status), from its /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{sidecar_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.labels["kind"], sample.labels["status"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "sidecar_request_seconds_count"
    }


def connection_port(address: tuple[str, int]) -> int | None:
    """The local port of this thread's kept-alive connection to `address` (None: none open)."""
    from sidecar import client

    sock, _ = client._connections().get(address, (None, None))
    return sock.getsockname()[1] if sock is not None else None


def exception_chain(exc: BaseException) -> list[BaseException]:
    """`exc` and every exception it holds as a cause or a context, shown in a traceback or not."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return chain
