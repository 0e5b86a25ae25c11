"""Threads kept for one kind of work, as the OS sees them: their names (their nice values: test_hashers, test_embedding_service)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from search.priority import name_this_thread

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread names in /proc are Linux's")


def os_name_of_this_thread() -> str:
    return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()


def _named_on_a_thread(name: str) -> tuple[str, str, str]:
    """The OS's name of a new thread before and after `name_this_thread(name)`, and its Python name after."""
    seen = []

    def work() -> None:
        before = os_name_of_this_thread()
        name_this_thread(name)
        seen.append((before, os_name_of_this_thread(), threading.current_thread().name))

    thread = threading.Thread(target=work, name="python-side-name")
    thread.start()
    thread.join()
    return seen[0]


def test_a_named_thread_shows_its_name_to_the_os_and_keeps_its_python_name() -> None:
    before, after, python_name = _named_on_a_thread("kb-query-0")

    assert before != "kb-query-0"
    assert after == "kb-query-0"
    assert python_name == "python-side-name"


def test_a_long_name_is_cut_to_the_fifteen_bytes_linux_keeps() -> None:
    _, after, _ = _named_on_a_thread("kb-a-name-far-longer-than-fifteen")

    assert after == "kb-a-name-far-l"


def test_naming_a_thread_leaves_the_callers_name_alone() -> None:
    mine = os_name_of_this_thread()

    _named_on_a_thread("kb-elsewhere")

    assert os_name_of_this_thread() == mine
