"""The extraction child's pipes, served by the event loop (stdlib asyncio and uvloop, which the server runs)."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
import uvloop

from knowledge.ingestion.sandbox import _communicate, _exited, _spawn

# Echoes stdin to stdout, says how much it read on stderr, and exits with 3.
ECHO = (
    "import sys; data = sys.stdin.buffer.read(); sys.stdout.buffer.write(data); "
    "sys.stderr.write(str(len(data))); sys.exit(3)"
)
# Reads nothing and exits at once: whatever is still being written meets a closed pipe.
REFUSE = "import sys; sys.stderr.write('not reading'); sys.exit(5)"
# Sleeps until killed.
HANG = "import time; time.sleep(600)"

LOOPS = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.fixture(params=sorted(LOOPS))
def run(request):
    return LOOPS[request.param]


def test_megabytes_go_both_ways_at_once_without_a_deadlock(run) -> None:
    # Far more than a pipe holds (64 KB) in each direction: a writer that waited for the reader would hang.
    data = os.urandom(5 * 1024 * 1024)

    async def main():
        child = _spawn([sys.executable, "-c", ECHO])
        return await asyncio.wait_for(_communicate(child, data), timeout=60), child.returncode

    (stdout, stderr), code = run(main())

    assert stdout == data
    assert stderr == str(len(data)).encode()
    assert code == 3


def test_a_child_that_stops_reading_ends_the_writing_not_the_parent(run) -> None:
    async def main():
        child = _spawn([sys.executable, "-c", REFUSE])
        return await asyncio.wait_for(_communicate(child, os.urandom(8 * 1024 * 1024)), timeout=60), child.returncode

    (stdout, stderr), code = run(main())

    assert (stdout, stderr, code) == (b"", b"not reading", 5)


def test_an_empty_input_closes_stdin_at_once(run) -> None:
    async def main():
        child = _spawn([sys.executable, "-c", ECHO])
        return await asyncio.wait_for(_communicate(child, b""), timeout=60), child.returncode

    assert run(main()) == ((b"", b"0"), 3)


def test_a_killed_child_is_awaited_and_reaped(run) -> None:
    async def main():
        child = _spawn([sys.executable, "-c", HANG])
        talking = asyncio.ensure_future(_communicate(child, b"x"))
        await asyncio.sleep(0)  # the pipes are being served
        child.kill()
        await asyncio.wait_for(talking, timeout=60)
        return child, await _exited(child)

    child, code = run(main())

    assert code == child.returncode == -9
    with pytest.raises(ChildProcessError):
        os.waitpid(child.pid, os.WNOHANG)  # nothing left to reap: no zombie
