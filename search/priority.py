"""Threads kept for one kind of work: Linux keeps a nice value and a name per thread.

A lowered thread yields the CPU to the rest of the process; a named one shows what it does to
`top -H`, `ps -L`, `perf` and /proc/PID/task, where every Python 3.11 thread is otherwise "python".
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
import threading

logger = logging.getLogger(__name__)

PR_SET_NAME = 15  # prctl's option, from <linux/prctl.h>
OS_NAME_BYTES = 15  # the kernel keeps 16 bytes, the last a NUL


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def name_this_thread(name: str) -> None:
    """Give the calling thread `name` where the OS shows threads (Linux only; cut to 15 bytes).

    Python's own thread name stays as it was; this is the name outside the process. Nothing is
    raised where the system has no such name or refuses: a name is only a help to whoever looks.
    """
    libc = _libc() if sys.platform.startswith("linux") else None
    if libc is None:
        return
    if libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:OS_NAME_BYTES]), 0, 0, 0) != 0:
        logger.debug("Could not name the thread %s (errno %d)", name, ctypes.get_errno())


def lower_this_threads_priority(steps: int, *, what: str) -> None:
    """Make the calling thread, and the threads it starts from now on, yield the CPU to the rest of the process.

    Linux keeps a nice value per thread and new threads inherit it, so a model session built on such
    a thread runs its worker threads at the lower priority too. Lowering is one-way for a process
    without privileges: call it only on a thread kept for the work that should yield. Elsewhere
    setpriority would lower the whole process, so it is left alone. `what` names the thread in the
    warning logged when the system refuses.
    """
    if steps <= 0 or not sys.platform.startswith("linux"):
        return
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + steps))
    except OSError:
        logger.warning("Could not lower the priority of %s", what, exc_info=True)
