"""Attacks on the daemon: escapes from the prefixes, hostile HTTP, token rotation, leaks into logs."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import REGION, TOKEN, AwsEmulator, FakeClock, OpenDaemonThread, make_settings

PREFIXES = ("airflow/variables/", "airflow/connections/", "airflow/config/")
OUTSIDE = {"other/secret": "outside-value-91ff", "airflow/other": "sibling-value-52aa", "root": "root-value-77cc"}
DOCUMENTED_503 = {"upstream_unavailable", "upstream_error", "timeout", "invalid_secret"}


def _outside_prefixes(names: list[str]) -> list[str]:
    return [name for name in names if not name.startswith(PREFIXES)]


def _request(address: tuple[str, int], path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        for name, value in {"X-Sidecar-Token": TOKEN, **(headers or {})}.items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.fixture
def served(aws: AwsEmulator) -> Iterator[OpenDaemonThread]:
    for name, value in OUTSIDE.items():
        aws.put(name, value)
    aws.put("airflow/variables/inside", "inside-value")
    with OpenDaemonThread(make_settings(aws, warmup="false")) as running:
        yield running


ESCAPES = [
    "..%2F..%2Fother%2Fsecret",
    "%2E%2E%2F%2E%2E%2Fother%2Fsecret",
    "..%252F..%252Fother%252Fsecret",
    "%252E%252E%252Fother",
    "..",
    "%2E%2E",
    "a%2F..%2F..%2F..%2Fother%2Fsecret",
    "%2Fother%2Fsecret",
    "arn%3Aaws%3Asecretsmanager%3Aus-east-1%3A123456789012%3Asecret%3Aother%2Fsecret",
    "inside%00",
    "%00",
    "inside%0D%0AX-Injected%3A%201",
    "inside%0A",
    "a" * 600,
    "%C3%BC",
    "%E2%80%AE",
    "%F0%9F%94%91",
    "%FF%FE",
    "inside%20",
    "~",
    "%5C..%5Cother",
]


@pytest.mark.parametrize("raw_key", ESCAPES)
def test_escape_attempts_are_4xx_and_ask_aws_for_nothing_outside_the_prefixes(served, aws, raw_key):
    for kind in ("variables", "connections", "config"):
        status, body = _request(served.address, f"/v1/{kind}/{raw_key}")
        assert 400 <= status < 500, (kind, raw_key, status)
        for value in OUTSIDE.values():
            assert value.encode() not in body
    assert _outside_prefixes(aws.names) == []


def test_team_cannot_escape_the_prefix(served, aws):
    for team in ("..%2F..%2Fother", "a%2Fb", "x--y%2F..", "%00", "t" * 51):
        status, _ = _request(served.address, f"/v1/variables/inside?team={team}")
        assert status == 400, team
    assert _outside_prefixes(aws.names) == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(["variables", "connections", "config", "secrets", ""]),
    key=st.text(min_size=0, max_size=700),
    team=st.none() | st.text(max_size=60),
    refresh=st.booleans(),
    extra=st.dictionaries(
        st.sampled_from(["X-Sidecar-Token", "Accept", "X-Custom", "Content-Type", "Range", "Cookie"]),
        st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=100),
        max_size=3,
    ),
)
def test_fuzzed_requests_get_only_documented_answers(served, aws, kind, key, team, refresh, extra):
    path = f"/v1/{kind}/{quote(key, safe='')}"
    query = [f"team={quote(team, safe='')}"] if team is not None else []
    query += ["refresh=true"] if refresh else []
    status, body = _request(served.address, path + ("?" + "&".join(query) if query else ""), extra)

    assert status in {200, 400, 401, 403, 404, 405, 413, 429, 503}, (status, body[:200])
    document = json.loads(body)
    if status == 503:
        assert document["error"] in DOCUMENTED_503
    for value in OUTSIDE.values():
        assert value.encode() not in body
    assert _outside_prefixes(aws.names) == []


HOSTILE = [
    b"\x00\xff\xfe garbage \r\n\r\n",
    b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 70_000 + b"\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(2000)) + b"\r\n",
    bytes.fromhex("16030100a5010000a10303") + os.urandom(160),  # a TLS ClientHello
    b"GET /v1/variables/inside HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\npartial",
    b"GET /v1/variables/inside HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /v1/variables/inside",  # and hang up half-way
    b"BREW /coffee HTCPCP/1.0\r\n\r\n",
    b"GET /v1/variables/inside HTTP/1.1\r\nHost: x\r\nX-Sidecar-Token: " + TOKEN.encode() + b"\x00\r\n\r\n",
]


@pytest.mark.parametrize("payload", HOSTILE, ids=range(len(HOSTILE)))
def test_malformed_and_oversized_http_leaves_the_daemon_healthy(served, payload):
    with socket.create_connection(served.address, timeout=5) as raw:
        raw.sendall(payload)
        raw.shutdown(socket.SHUT_WR)
        try:
            answer = raw.recv(65536)
        except (ConnectionResetError, TimeoutError):
            answer = b""
    assert not answer.startswith(b"HTTP/1.1 200"), answer[:100]
    assert _request(served.address, "/healthz")[0] == 200
    assert _request(served.address, "/v1/variables/inside") == (200, b'{"value": "inside-value"}')


def test_token_file_rotation_needs_no_restart(aws, tmp_path):
    aws.put("airflow/variables/v", "1")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    clock = FakeClock()
    environment = {"token_file": str(token_file), "warmup": "false"}
    with OpenDaemonThread(make_settings(aws, **environment), timer=clock) as running:
        assert _request(running.address, "/v1/variables/v")[0] == 200
        new_token = "rotated-token-abcdefghijklmnop"
        replacement = tmp_path / "token.new"
        replacement.write_text(new_token + "\n")
        os.replace(replacement, token_file)  # how a Kubernetes Secret volume swaps files
        clock.advance(1.1)

        assert _request(running.address, "/v1/variables/v")[0] == 401
        assert _request(running.address, "/v1/variables/v", {"X-Sidecar-Token": new_token})[0] == 200

        token_file.write_text("short")  # an invalid token file keeps the previous token
        clock.advance(1.1)
        assert _request(running.address, "/v1/variables/v", {"X-Sidecar-Token": new_token})[0] == 200


def test_a_debug_log_of_every_scenario_holds_no_value_and_no_token(aws: AwsEmulator, tmp_path: Path):
    values = {
        "airflow/variables/plain": "plain-secret-value-0001",
        "airflow/variables/doc": json.dumps({"password": "json-secret-value-0002"}),
        "airflow/connections/uri": "postgresql://user:uri-secret-value-0003@db/x",
        "airflow/connections/json": json.dumps({"conn_type": "http", "password": "json-secret-value-0004"}),
        "airflow/connections/broken": '{"password": "broken-secret-value-0005",',
        "airflow/config/smtp_password": "config-secret-value-0006",
        "airflow/variables/ops--plain": "team-secret-value-0007",
    }
    for name, value in values.items():
        aws.put(name, value)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environ = {
        **os.environ,
        "SIDECAR_TOKEN": TOKEN,
        "SIDECAR_PORT": str(port),
        "SIDECAR_LOG_LEVEL": "debug",
        "SIDECAR_TTL": "1",
        "SIDECAR_NEGATIVE_TTL": "1",
        "SIDECAR_BACKEND_KWARGS": json.dumps({"region_name": REGION, "endpoint_url": aws.endpoint}),
    }
    daemon = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "serve"], env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        address = ("127.0.0.1", port)
        _wait_ready(address)
        scenario = [
            ("/v1/variables/plain", {}),
            ("/v1/variables/plain?refresh=true", {}),
            ("/v1/variables/doc", {}),
            ("/v1/variables/plain?team=ops", {}),
            ("/v1/connections/uri", {}),
            ("/v1/connections/json", {}),
            ("/v1/connections/broken", {}),
            ("/v1/config/smtp_password", {}),
            ("/v1/variables/absent", {}),
            ("/v1/variables/plain", {"X-Sidecar-Token": "wrong-token-but-long-enough"}),
            ("/v1/variables/plain", {"X-Forwarded-For": "1.2.3.4"}),
        ]
        for path, headers in scenario:
            _request(address, path, headers)
        for failure in ("ThrottlingException", "InternalServiceError", "AccessDeniedException"):
            aws.fail["GetSecretValue"] = failure
            aws.fail["BatchGetSecretValue"] = failure
            for path, headers in scenario:
                _request(
                    address,
                    path.replace("refresh=true", "x=1") + ("&" if "?" in path else "?") + "refresh=true",
                    headers,
                )
        aws.fail.clear()
        daemon.send_signal(signal.SIGTERM)
        output = daemon.communicate(timeout=30)[0].decode()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert "DEBUG" in output and "variables 'plain'" in output  # the debug log really ran
    leaked = [fragment for fragment in (*_fragments(values), TOKEN) if fragment in output]
    assert leaked == []


def _fragments(values: dict[str, str]) -> list[str]:
    return [f"secret-value-{n:04d}" for n in range(1, len(values) + 1)]


def _wait_ready(address: tuple[str, int]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if _request(address, "/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("the daemon did not become ready")


def test_unix_socket_is_0660_and_takes_the_configured_group(aws, tmp_path):
    import grp
    import stat as stat_module

    group = grp.getgrgid(os.getgid()).gr_name
    path = tmp_path / "sidecar.sock"
    settings = make_settings(aws, unix_socket=str(path), unix_socket_group=group, warmup="false")
    with OpenDaemonThread(settings):
        mode = path.stat()
        assert stat_module.S_ISSOCK(mode.st_mode)
        assert stat_module.S_IMODE(mode.st_mode) == 0o660
        assert mode.st_gid == os.getgid()
    assert not path.exists()


def test_unknown_socket_group_is_a_configuration_error(aws, tmp_path):
    from sidecar.daemon.config_error import ConfigError

    with pytest.raises(ConfigError, match="SIDECAR_UNIX_SOCKET_GROUP"):
        make_settings(aws, unix_socket=str(tmp_path / "s.sock"), unix_socket_group="no-such-group-x")


@pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o604, True), (0o640, False), (0o600, False)])
def test_a_token_file_every_user_may_read_is_warned_about_once(aws, tmp_path, caplog, mode, warned):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(mode)
    clock = FakeClock()
    settings = make_settings(aws, token_file=str(token_file), warmup="false")
    with caplog.at_level("WARNING"), OpenDaemonThread(settings, timer=clock) as running:
        rotated = tmp_path / "token.new"
        rotated.write_text("rotated-token-abcdefghijklmnop")
        rotated.chmod(mode)
        os.replace(rotated, token_file)
        clock.advance(1.1)
        assert _request(running.address, "/v1/variables/v", {"X-Sidecar-Token": "rotated-token-abcdefghijklmnop"})[0]

    warnings = [record.getMessage() for record in caplog.records if str(token_file) in record.getMessage()]
    if not warned:
        assert warnings == []
        return
    assert len(warnings) == 1, warnings
    assert "chmod 0640" in warnings[0] and "0600" in warnings[0]
    assert TOKEN not in caplog.text
