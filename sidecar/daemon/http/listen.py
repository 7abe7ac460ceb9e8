"""Where the daemon listens: a loopback TCP port, or a Unix socket born 0660 that it removes at stop.

A socket file left by a dead daemon is replaced; anything else at that path is refused.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat

from aiohttp import web

from sidecar.daemon.settings import ConfigError, Settings


class Listener:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._socket_inode: int | None = None  # the Unix socket this daemon created, to remove at stop
        self.url = ""

    async def start(self, runner: web.ServerRunner) -> None:
        settings = self._settings
        if settings.unix_socket:
            path = settings.unix_socket
            _remove_stale_socket(path)
            old_umask = os.umask(0o117)  # the socket is born 0660: no window with wider access
            try:
                await web.UnixSite(runner, path).start()
            finally:
                os.umask(old_umask)
            if settings.unix_socket_group:
                shutil.chown(path, group=settings.unix_socket_group)
            os.chmod(path, 0o660)
            self._socket_inode = os.stat(path).st_ino
            self.url = f"unix:{path}"
        else:
            site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
            await site.start()
            host, port = runner.addresses[0][:2]
            self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"

    def remove_socket(self) -> None:
        """Only our own socket: never a file we refused to replace, nor another daemon's socket."""
        path = self._settings.unix_socket
        if path and self._socket_inode is not None:
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(path).st_ino == self._socket_inode:
                    os.unlink(path)


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
