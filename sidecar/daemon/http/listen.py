"""Where the daemon listens: a loopback TCP port, or a Unix socket born 0660 that it removes at stop.

A socket file left by a dead daemon is replaced; anything else at that path is refused. Where it
cannot listen is a ConfigError naming the settings to change and the address.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat

from aiohttp import web

from sidecar.daemon.config_error import ConfigError
from sidecar.daemon.settings import Settings

MAX_SOCKET_PATH = 107  # bytes: sockaddr_un's sun_path on Linux, less its final NUL


class Listener:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._socket_inode: int | None = None  # the Unix socket this daemon created, to remove at stop
        self.url = ""

    async def start(self, runner: web.ServerRunner) -> None:
        settings = self._settings
        if settings.unix_socket:
            await self._start_unix(runner, settings.unix_socket)
            return
        try:
            await web.TCPSite(runner, settings.host, settings.port, reuse_address=True).start()
        except OSError as exc:
            raise ConfigError(
                f"--host / --port (SIDECAR_HOST / SIDECAR_PORT): cannot listen on {settings.host} port "
                f"{settings.port}: {exc.strerror or exc}"
            ) from None
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"

    async def _start_unix(self, runner: web.ServerRunner, path: str) -> None:
        try:
            _remove_stale_socket(path)
            old_umask = os.umask(0o117)  # the socket is born 0660: no window with wider access
            try:
                await web.UnixSite(runner, path).start()
            finally:
                os.umask(old_umask)
        except OSError as exc:  # a missing or unwritable directory, a path too long
            reason = _reason(exc)
            if len(os.fsencode(path)) > MAX_SOCKET_PATH:
                reason += f" (a socket's path holds at most {MAX_SOCKET_PATH} bytes)"
            raise ConfigError(f"--unix-socket / SIDECAR_UNIX_SOCKET: cannot listen on {path!r}: {reason}") from None
        self._socket_inode = os.stat(path).st_ino  # ours from now on: removed at stop, whatever fails next
        group = self._settings.unix_socket_group
        if group:
            try:
                shutil.chown(path, group=group)
            except OSError as exc:  # not root, and not in that group
                raise ConfigError(
                    f"--unix-socket-group / SIDECAR_UNIX_SOCKET_GROUP: cannot give {path!r} to group {group!r}: "
                    f"{_reason(exc)}"
                ) from None
        os.chmod(path, 0o660)
        self.url = f"unix:{path}"

    def remove_socket(self) -> None:
        """Only our own socket: never a file we refused to replace, nor another daemon's socket."""
        path = self._settings.unix_socket
        if path and self._socket_inode is not None:
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(path).st_ino == self._socket_inode:
                    os.unlink(path)


def _reason(exc: OSError) -> str:
    """The system's reason alone: the path is named once, by the message."""
    return exc.strerror or str(exc)


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a dead daemon; refuse to touch anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"--unix-socket / SIDECAR_UNIX_SOCKET: {path!r} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: stale
        return
    finally:
        probe.close()
    raise ConfigError(f"--unix-socket / SIDECAR_UNIX_SOCKET: another process listens on {path!r}")
