"""The HTTP contract of docs/http-api.md, route by route and status by status, over a real socket."""

from __future__ import annotations

import asyncio
import gc
import json
import re
import socket
import threading
import time

import pytest

from tests.support import TOKEN


async def test_variable_is_a_miss_then_a_hit(aws, start_sidecar):
    aws.put("airflow/variables/greeting", "hello")
    sidecar = await start_sidecar()

    assert await sidecar.get("variables", "greeting") == (200, {"value": "hello"}, "miss")
    assert await sidecar.get("variables", "greeting") == (200, {"value": "hello"}, "hit")
    assert aws.calls["GetSecretValue"] == 1


async def test_connection_and_config_routes(aws, start_sidecar):
    aws.put("airflow/connections/db", "postgresql://u:p@h:5432/s")
    aws.put("airflow/config/smtp_password", "pw")
    sidecar = await start_sidecar()

    assert (await sidecar.get("connections", "db"))[:2] == (200, {"value": "postgresql://u:p@h:5432/s"})
    assert (await sidecar.get("config", "smtp_password"))[:2] == (200, {"value": "pw"})


async def test_not_found_is_404_and_cached_as_a_miss(aws, start_sidecar):
    sidecar = await start_sidecar()

    status, body, cache = await sidecar.get("variables", "absent")
    assert (status, body["error"], cache) == (404, "not_found", "miss")
    assert (await sidecar.get("variables", "absent"))[2] == "hit"
    assert aws.calls["GetSecretValue"] == 1


@pytest.mark.parametrize("key", ["with space", "semi;colon", "a" * 600, "ü", "../escape", "/leading"])
async def test_a_name_that_cannot_exist_is_404_without_an_aws_call(aws, start_sidecar, key):
    sidecar = await start_sidecar()

    assert (await sidecar.get("variables", key))[0] == 404
    assert aws.total() == 0


async def test_refresh_true_bypasses_the_cache_once(aws, start_sidecar):
    aws.put("airflow/variables/v", "one")
    sidecar = await start_sidecar()
    await sidecar.get("variables", "v")
    aws.client().put_secret_value(SecretId="airflow/variables/v", SecretString="two")

    assert (await sidecar.get("variables", "v"))[1] == {"value": "one"}
    sidecar.clock.advance(5)  # refresh=true re-fetches a key at most every 5 s
    assert (await sidecar.get("variables", "v", refresh=True))[:2] == (200, {"value": "two"})
    assert (await sidecar.get("variables", "v"))[1:] == ({"value": "two"}, "hit")


async def test_team_scoped_name_is_tried_before_the_global_one(aws, start_sidecar):
    aws.put("airflow/variables/ops--v", "team value")
    aws.put("airflow/variables/v", "global value")
    aws.put("airflow/variables/w", "only global")
    sidecar = await start_sidecar()

    assert (await sidecar.get("variables", "v", team="ops"))[1] == {"value": "team value"}
    assert (await sidecar.get("variables", "v"))[1] == {"value": "global value"}
    assert (await sidecar.get("variables", "w", team="ops"))[1] == {"value": "only global"}
    assert (await sidecar.get("variables", "v", team="other"))[1] == {"value": "global value"}


@pytest.mark.parametrize("token", [None, "", "wrong-token-0123456789", TOKEN + "x", TOKEN[:-1]])
async def test_missing_or_wrong_token_is_401(aws, start_sidecar, token):
    aws.put("airflow/variables/v", "secret")
    sidecar = await start_sidecar()

    status, body, _ = await sidecar.get("variables", "v", token=token)
    assert (status, body["error"]) == (401, "unauthorized")
    assert "secret" not in json.dumps(body)
    assert aws.total() == 0


@pytest.mark.parametrize("header", ["X-Forwarded-For", "Forwarded"])
async def test_forwarded_request_is_400(aws, start_sidecar, header):
    sidecar = await start_sidecar()

    status, body, _ = await sidecar.get("variables", "v", headers={header: "10.0.0.1"})
    assert (status, body["error"]) == (400, "forwarded")


async def test_browser_request_is_403(aws, start_sidecar):
    sidecar = await start_sidecar()

    status, body, _ = await sidecar.get("variables", "v", headers={"Origin": "http://evil.example"})
    assert (status, body["error"]) == (403, "browser")


async def test_unknown_route_and_method_are_json_errors(aws, start_sidecar):
    sidecar = await start_sidecar()
    headers = {"X-Sidecar-Token": TOKEN}
    async with sidecar.http.get(f"{sidecar.url}/v1/secrets/x", headers=headers) as response:
        assert (response.status, (await response.json())["error"]) == (404, "not_found")
    async with sidecar.http.post(f"{sidecar.url}/v1/variables/x", headers=headers) as response:
        assert response.status == 405
        assert (await response.json())["error"] == "method_not_allowed"


async def _exchange(url: str, method: str, target: str) -> tuple[int, dict[str, str]]:
    """One request sent byte for byte as written (a client library would normalise the path)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        request = f"{method} {target} HTTP/1.1\r\nHost: x\r\nX-Sidecar-Token: {TOKEN}\r\nConnection: close\r\n\r\n"
        writer.write(request.encode())
        head, _, body = (await asyncio.wait_for(reader.read(), timeout=10)).partition(b"\r\n\r\n")
    finally:
        writer.close()
    return int(head.split()[1]), json.loads(body) if body else {}


async def test_a_key_is_the_one_segment_after_its_kind_with_escaped_slashes_kept(aws, start_sidecar):
    aws.put("airflow/variables/team_a/setting", "nested")
    aws.put("airflow/variables/v", "x")
    sidecar = await start_sidecar()
    url = sidecar.url

    assert await _exchange(url, "GET", "/v1/variables/team_a%2Fsetting") == (200, {"value": "nested"})
    assert await _exchange(url, "GET", "/v1/variables/v?team=") == (200, {"value": "x"})
    for target in (
        "/v1/variables/team_a/setting",  # an unescaped slash is a path, not a key
        "/v1/variables/",
        "/v1/variables",
        "/v1/variables/v/",
        "//v1/variables/v",
        "/v1//variables/v",
        "/V1/variables/v",
        "/v1/variable/v",
        "/healthz/",
    ):
        status, body = await _exchange(url, "GET", target)
        assert (status, body["error"], body["message"].startswith("no such path")) == (404, "not_found", True), target
    status, body = await _exchange(url, "GET", "/v1/variables/100%25")  # "100%": no secret may have that name
    assert (status, body["error"]) == (404, "not_found")
    assert "no secret name may be looked up" in body["message"]
    for method, target in (("HEAD", "/healthz"), ("PUT", "/v1/variables/v"), ("DELETE", "/nowhere")):
        status, _ = await _exchange(url, method, target)
        assert status == 405, (method, target)
    assert aws.calls["GetSecretValue"] == 2


async def test_health_ready_and_metrics_need_no_token_and_name_no_key(aws, start_sidecar):
    aws.put("airflow/variables/very_private_name", "value-1234")
    sidecar = await start_sidecar(warmup="true")
    async with sidecar.http.get(f"{sidecar.url}/readyz") as response:
        assert response.status == 503  # warm-up not run yet
    await sidecar.daemon.warmup.warm_up()
    await sidecar.get("variables", "very_private_name")
    await sidecar.get("variables", "missing_name")

    for path, expected in (("/healthz", {"status": "ok"}), ("/readyz", {"status": "ready"})):
        async with sidecar.http.get(sidecar.url + path) as response:
            assert (response.status, await response.json()) == (200, expected)
    async with sidecar.http.get(f"{sidecar.url}/metrics") as response:
        text = await response.text()
    assert response.status == 200
    assert 'sidecar_upstream_calls_total{api="ListSecrets",outcome="ok"}' in text
    assert 'sidecar_cache_lookups_total{result="hit"} 1.0' in text
    for leak in ("very_private_name", "missing_name", "value-1234", "airflow/"):
        assert leak not in text


def _hanging_endpoint() -> tuple[str, socket.socket, list[socket.socket]]:
    """An 'AWS' that accepts connections and never answers; the list holds what it accepted."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.extend(iter(lambda: listener.accept()[0], None)), daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", listener, held


async def test_over_the_request_limit_is_429_and_a_slow_aws_is_503(aws, start_sidecar):
    endpoint, listener, held = _hanging_endpoint()
    try:
        sidecar = await start_sidecar(backend_kwargs={"endpoint_url": endpoint}, max_requests=1, request_timeout=0.5)
        task = asyncio.ensure_future(sidecar.get("variables", "slow"))
        deadline = time.monotonic() + 10
        while not held:  # the first request is waiting on "AWS"
            assert time.monotonic() < deadline, "the daemon never called AWS"
            await asyncio.sleep(0.01)
        status, body, _ = await sidecar.get("variables", "other")
        assert (status, body["error"]) == (429, "busy")
        status, body, _ = await task
        assert (status, body["error"]) == (503, "timeout")
    finally:
        listener.close()


async def test_unreachable_aws_is_503_naming_the_cause(aws, start_sidecar):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there
    sidecar = await start_sidecar(backend_kwargs={"endpoint_url": f"http://127.0.0.1:{port}"})

    status, body, _ = await sidecar.get("variables", "v")
    assert (status, body["error"]) == (503, "upstream_unavailable")
    assert "EndpointConnectionError" in body["message"]


async def test_a_request_body_is_refused(aws, start_sidecar):
    sidecar = await start_sidecar()
    async with sidecar.http.get(
        f"{sidecar.url}/v1/variables/x", headers={"X-Sidecar-Token": TOKEN}, data=b"payload"
    ) as response:
        assert response.status == 413


@pytest.mark.parametrize("path", ["/v1/variables/greeting", "/metrics"])
async def test_our_own_bug_is_a_json_500_that_names_no_value(aws, start_sidecar, caplog, path):
    aws.put("airflow/variables/greeting", "hello")
    sidecar = await start_sidecar()

    def broken(*_args):
        raise RuntimeError("a bug")

    sidecar.daemon.resolver.peek = broken
    sidecar.daemon.resolver.get = broken
    sidecar.daemon.metrics.render = broken
    async with sidecar.http.get(f"{sidecar.url}{path}", headers={"X-Sidecar-Token": TOKEN}) as response:
        assert response.status == 500
        assert await response.json() == {"error": "internal", "message": "internal error; see the sidecar's log"}
    assert "internal error answering" in caplog.text
    assert "hello" not in caplog.text


async def _ask_raw(port: int, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None):
    """GET /v1/variables/v on `connection` (a new one if None): (status, the connection)."""
    reader, writer = connection or await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /v1/variables/v HTTP/1.1\r\nHost: x\r\nX-Sidecar-Token: {TOKEN}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lengths = [line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    await asyncio.wait_for(reader.readexactly(int(lengths[0])), 10)
    return int(head.split()[1]), (reader, writer)


async def test_the_connection_limit_refuses_new_connections_and_keeps_serving_admitted_ones(aws, start_sidecar):
    from aiohttp.web_protocol import RequestHandler

    aws.put("airflow/variables/v", "x")
    sidecar = await start_sidecar(max_connections=2)
    port = int(sidecar.url.rsplit(":", 1)[1])
    first = (await _ask_raw(port))[1]
    second = (await _ask_raw(port))[1]
    status, third = await _ask_raw(port)
    assert status == 429
    assert await asyncio.wait_for(third[0].read(), 10) == b""  # closed by the daemon
    idle = await asyncio.open_connection("127.0.0.1", port)  # three open: over the limit

    assert (await _ask_raw(port, first))[0] == 200  # admitted connections are still served
    assert (await _ask_raw(port, second))[0] == 200
    for reader_writer in (first, second, idle):
        reader_writer[1].close()
    for _ in range(10):  # one after another: each finds room, and the closed ones are forgotten
        status, (_, writer) = await _ask_raw(port)
        assert status == 200
        writer.close()
        await writer.wait_closed()
    gc.collect()
    assert sum(isinstance(o, RequestHandler) for o in gc.get_objects()) <= 4  # not the 12 used


def test_docs_list_every_error_code_with_its_status():
    from pathlib import Path

    from sidecar import ERRORS

    text = (Path(__file__).resolve().parent.parent / "docs" / "http-api.md").read_text()
    documented = set(re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", text, re.MULTILINE))
    assert documented == {(str(status), code) for code, status in ERRORS.items()}
