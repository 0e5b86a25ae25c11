"""A process-local nudge from whoever queues a document to the worker running in this process."""

from __future__ import annotations

from collections.abc import Callable

_listeners: list[Callable[[], None]] = []


def listen_for_new_work(callback: Callable[[], None]) -> None:
    _listeners.append(callback)


def stop_listening(callback: Callable[[], None]) -> None:
    if callback in _listeners:
        _listeners.remove(callback)


def notify_new_work() -> None:
    """Tell this process's workers that a document was queued; they would find it at their next poll anyway."""
    for callback in list(_listeners):
        callback()
