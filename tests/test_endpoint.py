"""sidecar/client.py: one resolution of the daemon's address and token, for the backend and
the CLI alike. Each case builds a real `SidecarSecretsBackend` and parses a real `get` command line,
with real token files; then the daemon's side: `probe` and `get` against a real daemon."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from sidecar import cli, client
from sidecar.backend import SidecarError, SidecarSecretsBackend
from tests.support import TOKEN, OpenDaemonThread, exception_chain, make_settings

KWARG_TOKEN = "kwarg-token-0123456789abcdef"
ENV_TOKEN = "env-token-0123456789abcdefgh"
# The content of each token file a case may point at.
FILES = {
    "kwarg-file": "kwarg-file-token-0123456789",
    "env-file": "env-file-token-0123456789",
    "generated": "generated-0123456789ab",
}


def _clean_environment(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name in [name for name in os.environ if name.startswith("SIDECAR_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


# (id, the backend's kwargs, the environment, whether autostart's generated token file exists,
#  the token both resolve, the file re-read after a 401). `unix_socket`: an explicit socket, which
# the CLI gets as --unix-socket; "SOCKET" in the environment: SIDECAR_UNIX_SOCKET. A case with a
# `token`, `token_file` or `autostart` kwarg has no CLI equivalent: the backend alone is checked.
TOKEN_CASES: list[tuple[str, dict[str, Any], dict[str, str], bool, str, str | None]] = [
    ("nothing", {}, {}, False, "", None),
    ("SIDECAR_TOKEN", {}, {"SIDECAR_TOKEN": ENV_TOKEN}, False, ENV_TOKEN, None),
    ("SIDECAR_TOKEN_FILE", {}, {"SIDECAR_TOKEN_FILE": "env-file"}, False, FILES["env-file"], "env-file"),
    (
        "the file wins over a stale SIDECAR_TOKEN",
        {},
        {"SIDECAR_TOKEN_FILE": "env-file", "SIDECAR_TOKEN": ENV_TOKEN},
        False,
        FILES["env-file"],
        "env-file",
    ),
    ("token kwarg over SIDECAR_TOKEN", {"token": KWARG_TOKEN}, {"SIDECAR_TOKEN": ENV_TOKEN}, False, KWARG_TOKEN, None),
    (
        "token kwarg over SIDECAR_TOKEN_FILE",
        {"token": KWARG_TOKEN},
        {"SIDECAR_TOKEN_FILE": "env-file"},
        False,
        KWARG_TOKEN,
        None,
    ),
    (
        "token_file kwarg over everything",
        {"token_file": "kwarg-file", "token": KWARG_TOKEN},
        {"SIDECAR_TOKEN_FILE": "env-file", "SIDECAR_TOKEN": ENV_TOKEN},
        True,
        FILES["kwarg-file"],
        "kwarg-file",
    ),
    ("socket, generated token", {}, {"SIDECAR_UNIX_SOCKET": "SOCKET"}, True, FILES["generated"], "generated"),
    ("socket flag, generated token", {"unix_socket": "SOCKET"}, {}, True, FILES["generated"], "generated"),
    ("socket, none generated", {}, {"SIDECAR_UNIX_SOCKET": "SOCKET"}, False, "", None),
    (
        "socket: SIDECAR_TOKEN over the generated token",
        {},
        {"SIDECAR_UNIX_SOCKET": "SOCKET", "SIDECAR_TOKEN": ENV_TOKEN},
        True,
        ENV_TOKEN,
        None,
    ),
    (
        "socket: SIDECAR_TOKEN_FILE over the generated token",
        {},
        {"SIDECAR_UNIX_SOCKET": "SOCKET", "SIDECAR_TOKEN_FILE": "env-file"},
        True,
        FILES["env-file"],
        "env-file",
    ),
    ("TCP: no generated token", {}, {"SIDECAR_URL": "http://127.0.0.1:1"}, True, "", None),
    (
        "autostart: the generated file, before it exists",
        {"autostart": True, "unix_socket": "SOCKET"},
        {},
        False,
        "",
        "generated",
    ),
    (
        "autostart: the generated file",
        {"autostart": True, "unix_socket": "SOCKET"},
        {},
        True,
        FILES["generated"],
        "generated",
    ),
    (
        "autostart: SIDECAR_TOKEN over the generated file",
        {"autostart": True, "unix_socket": "SOCKET"},
        {"SIDECAR_TOKEN": ENV_TOKEN},
        True,
        ENV_TOKEN,
        None,
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "env", "generated", "token", "token_file"),
    [case[1:] for case in TOKEN_CASES],
    ids=[c[0] for c in TOKEN_CASES],
)
def test_the_backend_and_the_cli_resolve_the_same_token(
    tmp_path, monkeypatch, kwargs, env, generated, token, token_file
):
    run = tmp_path / "run"
    run.mkdir()
    paths = {"kwarg-file": str(tmp_path / "kwarg-token"), "env-file": str(tmp_path / "env-token")}
    paths["generated"] = client.token_path(str(run / "s.sock"))
    assert paths["generated"] == str(run / "token")
    for name, path in paths.items():
        if name != "generated" or generated:
            Path(path).write_text(FILES[name] + "\n")
    placeholders = {**paths, "SOCKET": str(run / "s.sock")}
    _clean_environment(monkeypatch, **{name: placeholders.get(value, value) for name, value in env.items()})
    kwargs = {
        name: placeholders.get(value, value) if isinstance(value, str) else value for name, value in kwargs.items()
    }
    expected_file = paths[token_file] if token_file else None

    backend = SidecarSecretsBackend(**kwargs)
    assert (backend._endpoint.token, backend._endpoint.token_file) == (token, expected_file)

    if set(kwargs) <= {"unix_socket"}:  # what the CLI can be told, on its command line
        flags = ["--unix-socket", kwargs["unix_socket"]] if kwargs else []
        endpoint = cli._get_endpoint(cli.build_parser().parse_args(["get", "variables", "v", *flags]))
        assert endpoint is not None
        assert (endpoint.token, endpoint.token_file) == (token, expected_file)
        assert endpoint.address == backend._endpoint.address


# (id, explicit url / unix_socket, the environment, the backend's address, the CLI's). A socket wins
# over a URL, even an explicit one: the backend's rule, now the CLI's too. SIDECAR_HOST / SIDECAR_PORT
# are the daemon's listen settings, read by the CLI beside it and never by the backend.
SOCKET = "/tmp/sc-endpoint/s.sock"
ADDRESS_CASES: list[tuple[str, dict[str, str], dict[str, str], Any, Any]] = [
    ("default", {}, {}, ("127.0.0.1", 2779), ("127.0.0.1", 2779)),
    ("SIDECAR_URL", {}, {"SIDECAR_URL": "http://localhost:1234"}, ("localhost", 1234), ("localhost", 1234)),
    (
        "url over SIDECAR_URL",
        {"url": "http://127.0.0.2:1"},
        {"SIDECAR_URL": "http://localhost:1234"},
        ("127.0.0.2", 1),
        ("127.0.0.2", 1),
    ),
    ("a URL without a port", {"url": "http://sidecar"}, {}, ("sidecar", 80), ("sidecar", 80)),
    ("SIDECAR_UNIX_SOCKET", {}, {"SIDECAR_UNIX_SOCKET": SOCKET}, SOCKET, SOCKET),
    (
        "SIDECAR_UNIX_SOCKET over SIDECAR_URL",
        {},
        {"SIDECAR_UNIX_SOCKET": SOCKET, "SIDECAR_URL": "http://h:1"},
        SOCKET,
        SOCKET,
    ),
    ("SIDECAR_UNIX_SOCKET over url", {"url": "http://h:1"}, {"SIDECAR_UNIX_SOCKET": SOCKET}, SOCKET, SOCKET),
    ("unix_socket over SIDECAR_URL", {"unix_socket": SOCKET}, {"SIDECAR_URL": "http://h:1"}, SOCKET, SOCKET),
    ("unix_socket over url", {"unix_socket": SOCKET, "url": "http://h:1"}, {}, SOCKET, SOCKET),
    (
        "SIDECAR_HOST / SIDECAR_PORT",
        {},
        {"SIDECAR_HOST": "127.0.0.3", "SIDECAR_PORT": "3"},
        ("127.0.0.1", 2779),
        ("127.0.0.3", 3),
    ),
    ("SIDECAR_PORT alone", {}, {"SIDECAR_PORT": "3"}, ("127.0.0.1", 2779), ("127.0.0.1", 3)),
    ("SIDECAR_URL over SIDECAR_PORT", {}, {"SIDECAR_URL": "http://h:1", "SIDECAR_PORT": "3"}, ("h", 1), ("h", 1)),
]


@pytest.mark.parametrize(
    ("explicit", "env", "backend_address", "cli_address"),
    [case[1:] for case in ADDRESS_CASES],
    ids=[c[0] for c in ADDRESS_CASES],
)
def test_the_backend_and_the_cli_find_the_daemon_by_one_rule(monkeypatch, explicit, env, backend_address, cli_address):
    _clean_environment(monkeypatch, SIDECAR_TOKEN=TOKEN, **env)
    backend = SidecarSecretsBackend(**explicit)
    flags = [part for name, value in explicit.items() for part in (f"--{name.replace('_', '-')}", value)]
    endpoint = cli._get_endpoint(cli.build_parser().parse_args(["get", "variables", "v", *flags]))

    assert backend._endpoint.address == backend_address
    assert endpoint is not None and endpoint.address == cli_address
    assert endpoint.where == (f"unix socket {SOCKET}" if cli_address == SOCKET else endpoint.url)
    assert client.locate(**explicit, daemon_settings=True).address == cli_address  # what `probe` asks


@pytest.mark.parametrize(
    "url", ["127.0.0.1:2779", "https://127.0.0.1:2779", "http://", "http://h:port", "http://[::1", "http://h:99999"]
)
def test_a_url_that_is_not_plain_http_is_named_by_the_backend_and_the_cli(monkeypatch, capsys, url):
    _clean_environment(monkeypatch, SIDECAR_TOKEN=TOKEN)
    with pytest.raises(SidecarError, match=re.escape("backend_kwargs 'url' must look like http://127.0.0.1:2779")):
        SidecarSecretsBackend(url=url)

    assert cli.main(["get", "variables", "v", "--url", url]) == 2
    assert repr(url) in capsys.readouterr().err


def _unreadable_token_file(tmp_path: Path, what: str) -> tuple[str, str]:
    """The path of a token file that cannot be read, and the reason an error must give."""
    if what == "missing":
        return str(tmp_path / "no-such-token"), "No such file"
    if what == "a directory":
        return str(tmp_path), "Is a directory"
    if what == "not UTF-8":
        (tmp_path / "token").write_bytes(b"\xff\xfe" + TOKEN.encode())
        return str(tmp_path / "token"), "not UTF-8 text"
    raise AssertionError(what)


@pytest.mark.parametrize("what", ["missing", "a directory", "not UTF-8"])
def test_the_backend_and_get_name_a_token_file_they_cannot_read(monkeypatch, capsys, tmp_path, what):
    path, reason = _unreadable_token_file(tmp_path, what)
    _clean_environment(monkeypatch, SIDECAR_TOKEN=TOKEN)
    with pytest.raises(SidecarError, match=re.escape(f"cannot read the sidecar token file {path!r}")) as raised:
        SidecarSecretsBackend(token_file=path)
    assert "backend_kwargs 'token_file'" in str(raised.value) and reason in str(raised.value)
    for held in exception_chain(raised.value):  # a decoding error holds the file's bytes
        assert TOKEN.encode() not in repr(held).encode() + bytes(getattr(held, "object", b""))

    monkeypatch.setenv("SIDECAR_TOKEN_FILE", path)
    assert cli.main(["get", "variables", "v"]) == 2
    err = capsys.readouterr().err
    assert "cannot read the sidecar token file" in err and repr(path) in err and TOKEN not in err
    assert reason in err


def test_a_token_file_path_with_a_nul_is_named_by_the_backend(monkeypatch, tmp_path):
    """Only the backend's kwargs can hold one: the environment cannot."""
    path = str(tmp_path / "to\0ken")
    _clean_environment(monkeypatch)
    with pytest.raises(SidecarError, match=re.escape(f"cannot read the sidecar token file {path!r}")) as raised:
        SidecarSecretsBackend(token_file=path)
    assert "embedded null byte" in str(raised.value)


def test_probe_needs_no_token_and_get_reads_the_daemons_port(aws, monkeypatch, capsys, tmp_path):
    """In the daemon's container: SIDECAR_PORT says where it listens, and a probe never reads a token."""
    aws.put("airflow/variables/v", "beside the daemon")
    with OpenDaemonThread(make_settings(aws, warmup="false")) as running:
        _, port = running.address
        _clean_environment(monkeypatch, SIDECAR_PORT=str(port), SIDECAR_TOKEN_FILE=str(tmp_path / "unreadable"))
        assert cli.main(["probe"]) == 0

        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        monkeypatch.setenv("SIDECAR_TOKEN_FILE", str(token_file))
        assert cli.main(["get", "variables", "v"]) == 0
        assert capsys.readouterr().out == "beside the daemon\n"
