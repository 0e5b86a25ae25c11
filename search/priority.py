"""Threads that yield the CPU to the rest of the process: Linux keeps a nice value per thread."""

from __future__ import annotations

import logging
import os
import sys
import threading

logger = logging.getLogger(__name__)


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
