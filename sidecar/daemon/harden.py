"""Keep the secrets this process holds out of core dumps and debuggers (SIDECAR_HARDEN, on by default).

Called once at start, before the first AWS call: RLIMIT_CORE 0 writes no core file wherever the
node's core_pattern points, and PR_SET_DUMPABLE 0 refuses a `ptrace` attach by the same uid (gdb,
py-spy, gcore) and makes `/proc/<pid>/environ`, `mem` and `maps` root's. An `execve` resets the
flag, so every daemon process sets it for itself: `serve` does, whoever started it (an autostarted
daemon too). No `mlockall`: docs/security.md says why.
"""

from __future__ import annotations

import logging
import resource
import sys

log = logging.getLogger(__name__)

PR_GET_DUMPABLE, PR_SET_DUMPABLE = 3, 4  # <linux/prctl.h>


def harden() -> bool:
    """True when both hold; otherwise one warning that says what does not."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sys.platform != "linux":
        log.warning("SIDECAR_HARDEN: core dumps are off; a debugger of the same user may still attach (Linux only)")
        return False
    import ctypes  # here: the backend's processes never import this module, and the daemon needs it once

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    if prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 or prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.warning("SIDECAR_HARDEN: core dumps are off, but the process could not be made non-dumpable")
        return False
    return True
