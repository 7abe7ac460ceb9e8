"""The listener Prometheus scrapes (SIDECAR_METRICS_PORT): the open paths without the token, on every
interface by default, beside a main listener on a Unix socket or a loopback port; never /v1."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys

import aiohttp
import pytest

from sidecar import __version__
from sidecar.daemon.config_error import ConfigError
from sidecar.daemon.http.scrape import MAX_CONNECTIONS
from sidecar.daemon.settings import load_settings
from tests.support import REPO, TOKEN, airflow_env, free_port


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def fetch(http: aiohttp.ClientSession, url: str, method: str = "GET", **headers: str) -> tuple[int, str]:
    async with http.request(method, url, headers=headers) as response:
        return response.status, await response.text()


async def test_the_metrics_port_serves_the_open_paths_without_a_token_beside_a_unix_socket(
    aws, start_sidecar, http, tmp_path
):
    aws.client().create_secret(Name="airflow/variables/greeting", SecretString="hello")
    running = await start_sidecar(unix_socket=str(tmp_path / "s.sock"), metrics_port=0)
    metrics = running.daemon.metrics_url
    assert running.url == f"unix:{tmp_path / 's.sock'}"

    status, text = await fetch(http, metrics + "/metrics")
    assert status == 200
    assert f'sidecar_build_info{{version="{__version__}"}} 1.0' in text
    for name in ("process_resident_memory_bytes", "process_open_fds", "process_cpu_seconds_total", "sidecar_ready"):
        assert f"\n{name} " in text, name
    assert (await fetch(http, metrics + "/healthz"))[0] == 200
    assert (await fetch(http, metrics + "/readyz"))[0] == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/variables/greeting"),
        ("GET", "/v1/variables/greeting?refresh=true"),
        ("GET", "/v1/connections/db"),
        ("GET", "/metrics/"),
        ("POST", "/metrics"),
        ("GET", "/"),
    ],
)
async def test_the_metrics_port_never_serves_a_secret_even_with_the_token(aws, start_sidecar, http, method, path):
    aws.client().create_secret(Name="airflow/variables/greeting", SecretString="hello")
    running = await start_sidecar(metrics_port=0)
    status, text = await fetch(http, running.daemon.metrics_url + path, method, **{"X-Sidecar-Token": TOKEN})
    assert status == 404
    assert json.loads(text)["error"] == "not_found"
    assert "hello" not in text
    assert (await running.get("variables", "greeting"))[:2] == (200, {"value": "hello"})  # the main port serves it


async def test_the_metrics_port_listens_on_every_interface_unless_narrowed(aws, start_sidecar):
    everywhere = await start_sidecar(metrics_port=0)
    assert everywhere.daemon.metrics_url.split("//")[1].rsplit(":", 1)[0] in ("0.0.0.0", "[::]")
    narrowed = await start_sidecar(metrics_port=0, metrics_host="127.0.0.1")
    assert narrowed.daemon.metrics_url.startswith("http://127.0.0.1:")
    off = await start_sidecar()
    assert off.daemon.metrics_url == ""


async def test_sidecar_ready_follows_readyz(aws, start_sidecar, http):
    aws.client().create_secret(Name="airflow/variables/greeting", SecretString="hello")
    running = await start_sidecar(metrics_port=0, warmup="true")
    url = running.daemon.metrics_url
    assert (await fetch(http, url + "/readyz"))[0] == 503
    assert "\nsidecar_ready 0.0" in (await fetch(http, url + "/metrics"))[1]
    await running.daemon.warmup.warm_up()
    assert (await fetch(http, url + "/readyz"))[0] == 200
    assert "\nsidecar_ready 1.0" in (await fetch(http, url + "/metrics"))[1]


async def test_the_pod_network_cannot_take_the_daemons_connections_through_the_metrics_port(aws, start_sidecar):
    running = await start_sidecar(metrics_port=0, metrics_host="127.0.0.1")
    host, port = running.daemon.metrics_url.removeprefix("http://").rsplit(":", 1)
    streams = []
    try:
        statuses = []
        for _ in range(MAX_CONNECTIONS + 2):
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 10)
            streams.append(writer)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            statuses.append(int((await asyncio.wait_for(reader.readline(), 10)).split()[1]))
        assert statuses[:MAX_CONNECTIONS] == [200] * MAX_CONNECTIONS
        assert statuses[MAX_CONNECTIONS + 1] == 429
    finally:
        for writer in streams:
            writer.close()


def test_a_bad_metrics_port_names_its_setting():
    with pytest.raises(ConfigError, match="SIDECAR_METRICS_PORT"):
        load_settings(argparse.Namespace(), {"SIDECAR_TOKEN": TOKEN, "SIDECAR_METRICS_PORT": "prometheus"})


def test_a_metrics_port_in_use_is_one_line_naming_the_setting(aws, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = airflow_env(
            tmp_path,
            SIDECAR_TOKEN=TOKEN,
            SIDECAR_PORT=str(free_port()),
            SIDECAR_METRICS_HOST="127.0.0.1",
            SIDECAR_METRICS_PORT=str(taken.getsockname()[1]),
            SIDECAR_WARMUP="false",
            SIDECAR_BACKEND_KWARGS=json.dumps({"region_name": "us-east-1", "endpoint_url": aws.endpoint}),
        )
        result = subprocess.run(
            [sys.executable, "-m", "sidecar", "serve"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert "SIDECAR_METRICS_PORT" in lines[-1] and "Traceback" not in result.stderr
