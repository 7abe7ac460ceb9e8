"""sidecar/client.py against a raw server that answers exactly the bytes each test gives it:
framing it must accept, framing it must refuse with a clear error, and closed connections."""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Iterator

import pytest

from sidecar import client
from sidecar.backend import SidecarError, SidecarSecretsBackend
from tests.support import exception_chain

REQUEST = b"GET /v1/variables/v HTTP/1.1\r\nHost: localhost\r\n\r\n"


class RawServer:
    """Accepts connections; answers each request with the next scripted bytes (None: close)."""

    def __init__(self, answers: list[bytes | None]) -> None:
        self.answers = list(answers)
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = self._listener.getsockname()[:2]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while self.answers:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                while self.answers:
                    if not conn.recv(65536):
                        break
                    answer = self.answers.pop(0)
                    if answer is None:
                        break  # close without answering
                    conn.sendall(answer)

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def serve() -> Iterator[type[RawServer]]:
    servers: list[RawServer] = []

    def start(answers: list[bytes | None]) -> RawServer:
        server = RawServer(answers)
        servers.append(server)
        return server

    yield start  # type: ignore[misc]
    for server in servers:
        server.close()


def get(address: tuple[str, int], request: bytes, timeout: float) -> tuple[int, bytes, str | None]:
    """Status, body and Retry-After of one exchange (its X-Cache is only the CLI's)."""
    return client.exchange(address, request, timeout)[:3]


def ok(body: bytes, *headers: bytes) -> bytes:
    extra = b"".join(header + b"\r\n" for header in headers)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def test_a_kept_alive_connection_serves_many_answers(serve):
    server = serve([ok(b"one"), ok(b"two", b"Retry-After: 3"), ok(b"x" * 200_000)])
    assert get(server.address, REQUEST, 5) == (200, b"one", None)
    assert get(server.address, REQUEST, 5) == (200, b"two", "3")
    assert get(server.address, REQUEST, 5) == (200, b"x" * 200_000, None)  # over many reads
    assert server.connections == 1


def test_connection_close_is_honoured_and_a_closed_idle_connection_replaced_once(serve):
    server = serve([ok(b"a", b"Connection: close"), ok(b"b"), None, ok(b"c")])
    assert get(server.address, REQUEST, 5)[1] == b"a"
    assert get(server.address, REQUEST, 5)[1] == b"b"  # a new connection
    assert get(server.address, REQUEST, 5)[1] == b"c"  # the server closed it: one retry
    assert server.connections == 3


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", "chunked"),
        (b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\nabc", "without Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "malformed Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n", "over"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nabc", "more bytes than its Content-Length"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 9000, "head over 8192 bytes"),
    ],
)
def test_anything_but_our_framing_is_a_clear_error(serve, answer, error):
    server = serve([answer, ok(b"fine")])
    with pytest.raises(client.ProtocolError, match=error):
        get(server.address, REQUEST, 5)
    assert get(server.address, REQUEST, 5)[1] == b"fine"  # on a new connection
    assert server.connections == 2


def test_a_connection_closed_mid_answer_is_an_os_error():
    listener = socket.create_server(("127.0.0.1", 0))

    def answer_part_then_close() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")

    threading.Thread(target=answer_part_then_close, daemon=True).start()
    with listener, pytest.raises(ConnectionResetError, match="closed the connection"):
        get(listener.getsockname()[:2], REQUEST, 5)


def test_a_silent_daemon_times_out(serve):
    listener = socket.create_server(("127.0.0.1", 0))  # accepts (backlog) but never answers
    raised: queue.Queue[BaseException | None] = queue.Queue()

    def ask() -> None:
        try:
            get(listener.getsockname()[:2], REQUEST, 0.2)
            raised.put(None)
        except BaseException as exc:
            raised.put(exc)

    with listener:
        threading.Thread(target=ask, daemon=True).start()  # a client without its timeout waits forever
        outcome = raised.get(timeout=10)
    assert isinstance(outcome, TimeoutError)
    assert str(outcome) == "the sidecar did not answer within 0.2s"


@pytest.mark.parametrize(
    "body", [b"not json: s3cr3t-value", b'{"value": "s3cr3t-value"', b'{"no": "value"}', b"\xffs3cr3t-value"]
)
def test_the_backend_names_a_200_that_is_not_the_daemons_json_and_holds_none_of_it(serve, body):
    server = serve([ok(body)])
    backend = SidecarSecretsBackend(url="http://{}:{}".format(*server.address), token="t", local_ttl=0)
    with pytest.raises(SidecarError, match="sent a malformed answer") as raised:
        backend.get_variable("v")

    for held in exception_chain(raised.value):
        assert b"s3cr3t" not in repr(held).encode() + bytes(getattr(held, "object", b""))
        assert "s3cr3t" not in str(getattr(held, "doc", ""))

