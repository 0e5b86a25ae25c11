"""Extracts an untrusted file's text in a child process with a budget of memory and time it cannot exceed.

The parent (`extract_text_in_sandbox`, awaited on the event loop) starts
`python -m knowledge.ingestion.sandbox REQUEST`, writes the file's bytes to the child's stdin and
reads one JSON reply from its stdout. The child lowers its priority, caps its address space
(RLIMIT_AS) and its CPU time (RLIMIT_CPU) before it reads a byte, and the parent kills it once the
wall-clock budget runs out or the caller is cancelled (the document was deleted or archived).
The bytes go on stdin rather than in a temporary file: nothing is left on disk when a child is
killed, and nothing another process could read or swap under it.

Starting a child costs about 0.4 s (Python and the parsers loading), more than reading a small
file. A job that reads many files of one owner (`manage.py ingest` or `sync_folder` of a folder)
opens `warm_extraction()`: within it, files are read by a few *warm* children (`--serve`), each
reading one file after another, and every guarantee above still holds per file:

- memory: RLIMIT_AS is set once, before the first file, and never raised; it bounds the child
  whatever it has read before. A child whose resident memory stays above half the budget after a
  file retires, so that one file's leftovers never eat into the next one's budget.
- CPU: before each file the child sets its soft RLIMIT_CPU to the CPU time it has used plus the
  per-file budget; the kernel ends it (SIGXCPU) at that mark. The hard limit, set once, covers the
  `_FILES_PER_CHILD` files a child may read, after which the parent retires it.
- wall clock and withdrawal: the parent waits for each reply at most the budget, and kills the
  child when that runs out or its caller is cancelled, exactly as for a one-off child.
- a file that fails, for whatever reason, retires its child (killed, replaced by a fresh one when
  needed), so a file that hit a limit or confused a parser leaves nothing behind for the next file.
- nothing of a failed file is indexed: the reply is the only way out of the child, and a failed
  file's reply carries only the reason.

The warm children are scoped to one job and killed at its end: files of different owners are
never read by one process, as they are by the ingestion worker, which keeps one child per file.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import json
import logging
import math
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.utils.module_loading import import_string

from knowledge.ingestion.extraction import (
    ExtractedText,
    ExtractionError,
    extract_text,
    format_for,
    load_readers,
)

logger = logging.getLogger(__name__)

_PROJECT_ROOT = Path(__file__).resolve().parents[2]
# What extract_text reads from settings.INGESTION, handed on to the child, which has no Django project.
# How much of a file a write to the child's stdin, or a read of its output, moves at once.
_PIPE_CHUNK = 1 << 16
# Where a process cannot be awaited through a pidfd (not Linux), how often its exit is looked for.
_EXIT_POLL_SECONDS = 0.01
_EXTRACTION_SETTINGS = ("MAX_EXTRACTED_CHARS", "MAX_PDF_PAGES", "MAX_UNZIPPED_BYTES")
# The child runs behind the web server and the other documents' work on a small machine.
_CHILD_NICENESS = 10
# How much of the child's standard error is kept for the log when it dies without a reply.
_STDERR_TAIL = 2000
# How many files a warm child reads before it is replaced; its hard CPU limit is sized for them.
_FILES_PER_CHILD = 500
# Warm children reading files at once in a job: the machine's cores, which the embedder shares.
DEFAULT_WARM_CHILDREN = 2
# How long a warm child may take to start and import the parsers, and what it says once it has.
_START_SECONDS = 60.0
_READY = b"ready\n"


@dataclass(frozen=True)
class ExtractionBudget:
    """What reading one document may cost, whatever the file holds."""

    seconds: float = 120.0
    memory_mb: float = 1024.0

    @classmethod
    def from_settings(cls) -> ExtractionBudget:
        ingestion = getattr(settings, "INGESTION", {})
        return cls(
            seconds=float(ingestion.get("EXTRACTION_SECONDS", cls.seconds)),
            memory_mb=float(ingestion.get("EXTRACTION_MEMORY_MB", cls.memory_mb)),
        )

    def too_slow(self, filename: str) -> ExtractionError:
        return ExtractionError(
            f"{filename} took longer than {self.seconds:g} seconds to read, the most one document may take "
            "(KBSITE_EXTRACTION_SECONDS): split it into smaller files, or save it again without what makes "
            "it slow (such as pages that repeat a huge drawing)."
        )

    def too_big(self, filename: str) -> ExtractionError:
        return ExtractionError(
            f"{filename} needs more than {self.memory_mb:g} MB of memory to read, the most one document may use "
            "(KBSITE_EXTRACTION_MEMORY_MB): split it into smaller files."
        )


async def extract_text_in_sandbox(
    *, data: bytes, filename: str, budget: ExtractionBudget | None = None
) -> ExtractedText:
    """extract_text in a child process within the budget; over budget, or unreadable, raises ExtractionError.

    Within `warm_extraction()`, a warm child reads the file; elsewhere, a child started for it.
    """
    budget = budget or ExtractionBudget.from_settings()
    pool = _warm_pool.get()
    if pool is not None and pool.budget == budget:
        return await pool.extract(data=data, filename=filename)
    return _extracted(await _cold_child_reply(data=data, filename=filename, budget=budget, task=None))


async def run_on_extracted_text_in_sandbox(
    *, data: bytes, filename: str, task: str, arguments: dict, budget: ExtractionBudget | None = None
) -> dict:
    """`task(extracted, **arguments)` (a dotted name; ExtractedText in, JSON out) in a child of its own.

    Only what the task answers comes back, not the text: work that grows with the text (chunking a
    preview) stays in the child, within the extraction's budget of memory and time.
    """
    budget = budget or ExtractionBudget.from_settings()
    reply = await _cold_child_reply(data=data, filename=filename, budget=budget, task=[task, arguments])
    return reply["result"]


async def _cold_child_reply(*, data: bytes, filename: str, budget: ExtractionBudget, task: list | None) -> dict:
    """A child started for this one file: its checked reply (ExtractionError for a failure or a limit)."""
    started = time.monotonic()
    child = _spawn([sys.executable, "-m", __name__, json.dumps({**_request(filename, budget), "task": task})])
    try:
        stdout, stderr = await asyncio.wait_for(_communicate(child, data), timeout=budget.seconds)
    except TimeoutError:
        raise budget.too_slow(filename) from None
    finally:
        # Cancelled (the document went away) or out of time: the child's work stops here, not later.
        if child.returncode is None:
            peak_rss_kb = _peak_rss_kb(child.pid)
            child.kill()
            await asyncio.shield(_exited(child))
            _log_usage(filename, started, peak_rss_kb, "stopped")
        _close_pipes(child)
    reply = _reply(child.returncode, stdout, stderr, filename, budget)
    return _checked(reply, filename, started, budget)


def _spawn(command: list[str]) -> subprocess.Popen:
    """Start a child with pipes on stdin, stdout and stderr that the event loop serves (`_communicate`).

    Not the event loop's own subprocesses: uvloop's fork the whole server, copying the page tables
    of its hundreds of MB, which held the event loop, and every search waiting on it, for about 40 ms
    at each upload. `subprocess.Popen` starts the child with vfork: a millisecond or two.
    """
    child = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=_PROJECT_ROOT
    )
    for pipe in (child.stdin, child.stdout, child.stderr):
        os.set_blocking(pipe.fileno(), False)
    return child


async def _communicate(child: subprocess.Popen, data: bytes) -> tuple[bytes, bytes]:
    """Popen.communicate on the event loop: `data` to stdin, stdout and stderr read to their ends, the exit awaited.

    A child that closes its stdin early (it failed, or has read all it wants) ends the writing, as
    in communicate().
    """
    loop = asyncio.get_running_loop()
    stdin = child.stdin.fileno()
    outputs = {child.stdout.fileno(): bytearray(), child.stderr.fileno(): bytearray()}
    reading = set(outputs)
    unsent = memoryview(data)
    ended = loop.create_future()  # stdin written and closed, stdout and stderr at their ends

    def end_if_done() -> None:
        if not reading and child.stdin.closed and not ended.done():
            ended.set_result(None)

    def write() -> None:
        nonlocal unsent
        try:
            unsent = unsent[os.write(stdin, unsent[:_PIPE_CHUNK]) :]
        except BlockingIOError:
            return
        except (BrokenPipeError, ConnectionResetError):
            unsent = unsent[:0]
        if not unsent:
            loop.remove_writer(stdin)
            child.stdin.close()
            end_if_done()

    def read(fd: int) -> None:
        try:
            chunk = os.read(fd, _PIPE_CHUNK)
        except BlockingIOError:
            return
        if chunk:
            outputs[fd] += chunk
        else:
            loop.remove_reader(fd)
            reading.discard(fd)
            end_if_done()

    for fd in reading:
        loop.add_reader(fd, read, fd)
    if unsent:
        loop.add_writer(stdin, write)
    else:
        child.stdin.close()
    try:
        await ended
        await _exited(child)
    finally:
        for fd in reading:
            loop.remove_reader(fd)
        if not child.stdin.closed:
            loop.remove_writer(stdin)
    return bytes(outputs[child.stdout.fileno()]), bytes(outputs[child.stderr.fileno()])


async def _exited(child: subprocess.Popen) -> int:
    """The child's exit code, awaited on the event loop: a pidfd becomes readable when the child exits."""
    if child.poll() is not None:
        return child.returncode
    loop = asyncio.get_running_loop()
    if not hasattr(os, "pidfd_open"):  # not Linux: look again now and then
        while child.poll() is None:
            await asyncio.sleep(_EXIT_POLL_SECONDS)
        return child.returncode
    pidfd = os.pidfd_open(child.pid)
    exited = loop.create_future()
    loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
    try:
        await exited
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    return child.wait()


def _close_pipes(child: subprocess.Popen) -> None:
    for pipe in (child.stdin, child.stdout, child.stderr):
        if pipe is not None and not pipe.closed:
            pipe.close()


def _request(filename: str, budget: ExtractionBudget) -> dict:
    ingestion = getattr(settings, "INGESTION", {})
    return {
        "filename": filename,
        "seconds": budget.seconds,
        "memory_bytes": int(budget.memory_mb * 1024 * 1024),
        "ingestion": {name: ingestion[name] for name in _EXTRACTION_SETTINGS if name in ingestion},
    }


def _checked(reply: dict, filename: str, started: float, budget: ExtractionBudget) -> dict:
    """A child's reply that carries a text or a task's result, or the ExtractionError it stands for."""
    outcome = "read" if "text" in reply or "result" in reply else "failed"
    _log_usage(filename, started, reply.get("peak_rss_kb"), outcome)
    for message in reply.get("log", []):
        logger.info("%s", message)
    if reply.get("limit") == "memory":
        raise budget.too_big(filename)
    if "error" in reply:
        raise ExtractionError(reply["error"])
    return reply


def _extracted(reply: dict) -> ExtractedText:
    return ExtractedText(
        text=reply["text"], title=reply["title"], format=reply["format"], page_starts=reply["page_starts"]
    )


_warm_pool: contextvars.ContextVar[WarmExtractionPool | None] = contextvars.ContextVar("warm_pool", default=None)


@asynccontextmanager
async def warm_extraction(*, children: int = DEFAULT_WARM_CHILDREN) -> AsyncIterator[WarmExtractionPool]:
    """Within this block (and the tasks started in it), files are read by warm children, killed at its end.

    For one job reading many files of one owner; see the module's docstring for why it is as safe.
    """
    pool = WarmExtractionPool(children=children, budget=ExtractionBudget.from_settings())
    token = _warm_pool.set(pool)
    try:
        yield pool
    finally:
        _warm_pool.reset(token)
        await pool.aclose()


@dataclass
class _WarmChild:
    process: asyncio.subprocess.Process
    stderr_tail: bytearray = field(default_factory=bytearray)
    files: int = 0
    drain: asyncio.Task | None = None

    async def keep_stderr_tail(self) -> None:
        # Drained all along: a child blocked on a full stderr pipe would look like a slow file.
        assert self.process.stderr is not None
        while part := await self.process.stderr.read(4096):
            self.stderr_tail += part
            del self.stderr_tail[:-_STDERR_TAIL]


class WarmExtractionPool:
    """Children started once that each read files one at a time, each file within the budget."""

    def __init__(self, *, children: int, budget: ExtractionBudget) -> None:
        self.budget = budget
        self._slots = asyncio.Semaphore(max(children, 1))
        self._idle: list[_WarmChild] = []
        self._started = 0

    @property
    def children_started(self) -> int:
        return self._started

    async def extract(self, *, data: bytes, filename: str) -> ExtractedText:
        async with self._slots:
            child = self._idle.pop() if self._idle else await self._start_child()
            started = time.monotonic()
            reply: dict | None = None
            try:
                reply = await asyncio.wait_for(self._ask(child, filename, data), timeout=self.budget.seconds)
            except TimeoutError:
                raise self.budget.too_slow(filename) from None
            finally:
                child.files += 1
                reusable = (
                    reply is not None
                    and "text" in reply
                    and not reply.get("retire")
                    and child.files < _FILES_PER_CHILD
                )
                if reusable:
                    self._idle.append(child)
                else:
                    # A failed file, an exhausted child or a cancelled caller: this child reads no more.
                    peak_rss_kb = _peak_rss_kb(child.process.pid) if reply is None else None
                    await asyncio.shield(self._stop(child))
                    if reply is None:
                        _log_usage(filename, started, peak_rss_kb, "stopped")
        return _extracted(_checked(reply, filename, started, self.budget))

    async def _ask(self, child: _WarmChild, filename: str, data: bytes) -> dict:
        process = child.process
        assert process.stdin is not None and process.stdout is not None
        request = {**_request(filename, self.budget), "size": len(data)}
        try:
            process.stdin.write(json.dumps(request).encode() + b"\n")
            process.stdin.write(data)
            await process.stdin.drain()
            size = int(await process.stdout.readline())
            if size > _most_reply_bytes(request["ingestion"]):
                raise ValueError(f"a reply of {size} bytes")
            payload = await process.stdout.readexactly(size)
        except (OSError, ValueError, asyncio.IncompleteReadError):
            # The child died under the file (a CPU limit, an abort) or answered nonsense.
            try:
                await asyncio.wait_for(process.wait(), timeout=1.0)
            except TimeoutError:
                process.kill()
                await process.wait()
            if child.drain is not None:
                await child.drain
            return _reply(process.returncode or 1, b"", bytes(child.stderr_tail), filename, self.budget)
        return json.loads(payload)

    async def _start_child(self) -> _WarmChild:
        start = {"seconds": self.budget.seconds, "memory_bytes": int(self.budget.memory_mb * 1024 * 1024)}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            __name__,
            "--serve",
            json.dumps(start),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=_PROJECT_ROOT,
        )
        self._started += 1
        child = _WarmChild(process=process)
        child.drain = asyncio.ensure_future(child.keep_stderr_tail())
        try:
            # A file's budget starts once the child is ready: on a busy machine, starting Python
            # alone can take seconds, which no file should be failed for.
            ready = await asyncio.wait_for(process.stdout.readline(), timeout=_START_SECONDS)
        except BaseException:
            await asyncio.shield(self._stop(child))
            raise
        if ready != _READY:
            await self._stop(child)
            # Not the file's fault: the pipeline tries the document again later.
            raise RuntimeError(
                f"The file reader could not start: {bytes(child.stderr_tail).decode('utf-8', 'replace')[-300:]}"
                " Check that KBSITE_EXTRACTION_MEMORY_MB leaves room for Python and the parsers."
            )
        return child

    @staticmethod
    async def _stop(child: _WarmChild) -> None:
        if child.process.returncode is None:
            child.process.kill()
        await child.process.wait()
        if child.drain is not None:
            child.drain.cancel()
            await asyncio.gather(child.drain, return_exceptions=True)

    async def aclose(self) -> None:
        """Kill the idle children; those reading a file are stopped by their caller's cancellation."""
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._stop(child) for child in idle))


def _most_reply_bytes(ingestion: dict) -> int:
    # The longest text allowed, each character escaped in JSON, with room for the rest of the reply.
    return 6 * int(ingestion.get("MAX_EXTRACTED_CHARS", 5_000_000)) + 2**20


def _reply(returncode: int, stdout: bytes, stderr: bytes, filename: str, budget: ExtractionBudget) -> dict:
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        raise budget.too_slow(filename)
    try:
        reply = json.loads(stdout)
    except ValueError:
        reply = None
    if returncode != 0 or not isinstance(reply, dict):
        logger.warning(
            "The extraction of %s stopped with code %s and no reply: %s",
            filename,
            returncode,
            stderr[-_STDERR_TAIL:].decode("utf-8", "replace"),
        )
        # Libraries that cannot allocate sometimes abort instead of raising MemoryError.
        raise budget.too_big(filename)
    return reply


def _peak_rss_kb(pid: int) -> int | None:
    """A process's peak resident memory so far, in KiB (Linux), or None where /proc does not say."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _log_usage(filename: str, started: float, peak_rss_kb: int | None, outcome: str) -> None:
    # The one record of what each document cost; operators tune the budget from it.
    logger.info(
        "Extraction of %s %s after %.2f s, peak memory %s",
        filename,
        outcome,
        time.monotonic() - started,
        f"{peak_rss_kb / 1024:.0f} MB" if peak_rss_kb is not None else "unknown",
        extra={"extraction_peak_rss_kb": peak_rss_kb, "extraction_seconds": time.monotonic() - started},
    )


class _Collected(logging.Handler):
    """The child's log lines, sent back in its reply for the parent's log."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _limit_resources(seconds: float, memory_bytes: int) -> None:
    os.nice(_CHILD_NICENESS)
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    # SIGXCPU ends the child at the soft limit; SIGKILL at the hard one, should it be caught.
    cpu = max(int(seconds + 0.999), 1)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 2))


def _cpu_seconds_used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _read_one(data: bytes, filename: str, collected: _Collected, task: list | None = None) -> dict:
    """What the child replies for one file: its text (or what `task` makes of it), or why it has none."""
    collected.messages = []
    reply: dict[str, object]
    try:
        extracted = extract_text(data=data, filename=filename)
        if task:
            name, arguments = task
            reply = {"result": import_string(name)(extracted, **arguments)}
        else:
            reply = {
                "text": extracted.text,
                "title": extracted.title,
                "format": extracted.format,
                "page_starts": extracted.page_starts,
            }
    except ExtractionError as error:
        reply = {"error": error.message}
    except MemoryError:
        reply = {"limit": "memory"}
    reply["log"] = collected.messages
    # Not getrusage's ru_maxrss: Linux carries the parent's peak over fork and exec into it.
    reply["peak_rss_kb"] = _peak_rss_kb(os.getpid())
    return reply


def _collecting_logs() -> _Collected:
    collected = _Collected()
    logging.getLogger("knowledge").addHandler(collected)
    logging.getLogger("knowledge").setLevel(logging.INFO)
    return collected


def main() -> None:
    request = json.loads(sys.argv[1])
    load_readers([format_for(request["filename"])])
    _limit_resources(request["seconds"], request["memory_bytes"])
    settings.configure(INGESTION=request["ingestion"])
    collected = _collecting_logs()
    reply = _read_one(sys.stdin.buffer.read(), request["filename"], collected, request.get("task"))
    sys.stdout.write(json.dumps(reply))


def serve(start: dict) -> None:
    """A warm child: read files from stdin one after another, each within its own CPU budget.

    Each request is a JSON line (with the file's size) followed by the file's bytes; each reply
    is its length in bytes on a line, then the JSON.
    """
    load_readers()  # every format's, while nothing is limited yet: each file is then read warm
    os.nice(_CHILD_NICENESS)
    memory_bytes = int(start["memory_bytes"])
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    cpu_per_file = max(math.ceil(start["seconds"]), 1)
    # Hard: enough for every file the parent lets this child read, each at its soft limit.
    hard_cpu = math.ceil(_cpu_seconds_used()) + (_FILES_PER_CHILD + 1) * cpu_per_file + 2
    resource.setrlimit(resource.RLIMIT_CPU, (hard_cpu, hard_cpu))
    settings.configure(INGESTION={})
    collected = _collecting_logs()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdout.write(_READY)
    stdout.flush()
    while header := stdin.readline():
        request = json.loads(header)
        data = stdin.read(request["size"])
        settings.INGESTION = request["ingestion"]
        soft_cpu = min(math.ceil(_cpu_seconds_used()) + cpu_per_file, hard_cpu)
        resource.setrlimit(resource.RLIMIT_CPU, (soft_cpu, hard_cpu))
        _reset_peak_rss()
        reply = _read_one(data, request["filename"], collected)
        del data
        reply["retire"] = not _fits_next_file(memory_bytes)
        payload = json.dumps(reply).encode()
        stdout.write(b"%d\n" % len(payload) + payload)
        stdout.flush()


def _fits_next_file(memory_bytes: int) -> bool:
    """Whether the child's resident memory, once freed, leaves the next file at least half the budget."""
    resident_kb = _resident_kb()
    if resident_kb is not None and resident_kb * 1024 > memory_bytes // 2:
        # Parsers' trees hold reference cycles: only a collection gives their memory back.
        gc.collect()
        resident_kb = _resident_kb()
    return resident_kb is not None and resident_kb * 1024 <= memory_bytes // 2


def _reset_peak_rss() -> None:
    # Each file's peak is its own: writing 5 to clear_refs resets VmHWM (Linux 4.0+).
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass


def _resident_kb() -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        serve(json.loads(sys.argv[2]))
    else:
        main()
