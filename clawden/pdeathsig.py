"""Children that stop when their parent dies, however it dies (Linux's PR_SET_PDEATHSIG; nothing elsewhere).

`clawden up` starts NATS and every service; killed with SIGKILL it gets no chance to stop them, and they would
run on, re-parented to init, holding NATS's port so that the next `clawden up` refuses to start.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
SUPPORTED = sys.platform == "linux"
# Looked up here, in the parent: a child between fork and exec should call, not load (dlopen takes locks).
_prctl = ctypes.CDLL(None, use_errno=True).prctl if SUPPORTED else None


def arm(parent: int) -> None:
    """In a child just forked from `parent`: be sent SIGTERM when the parent dies. The signal comes when the
    parent *thread* that forked ends, so fork from the thread that lives as long as the process (the main one).

    SIGTERM must do something here already: a handler inherited from the parent would take the signal and lose it.
    """
    if _prctl is None:
        return
    if _prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    if os.getppid() != parent:  # it died before the prctl: no signal will come, so send it now
        os.kill(os.getpid(), signal.SIGTERM)


def preexec(parent: int) -> Callable[[], None] | None:
    """`arm` as a `subprocess.Popen(preexec_fn=...)`, for a program the child then runs; None where there is
    nothing to arm. Between fork and exec the parent's Python handlers are still there: SIGTERM is set back to
    its default first, so that a parent dying in that window kills the child rather than a handler's flag."""
    if not SUPPORTED:
        return None

    def child() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        arm(parent)

    return child
