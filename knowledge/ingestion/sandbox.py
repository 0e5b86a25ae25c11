"""Extracts an untrusted file's text in a child process with a budget of memory and time it cannot exceed.

The parent (`extract_text_in_sandbox`, awaited on the event loop) starts
`python -m knowledge.ingestion.sandbox REQUEST`, writes the file's bytes to the child's stdin and
reads one JSON reply from its stdout. The child lowers its priority, caps its address space
(RLIMIT_AS) and its CPU time (RLIMIT_CPU) before it reads a byte, and the parent kills it once the
wall-clock budget runs out or the caller is cancelled (the document was deleted or archived).
The bytes go on stdin rather than in a temporary file: nothing is left on disk when a child is
killed, and nothing another process could read or swap under it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.utils.module_loading import import_string

from knowledge.ingestion.extraction import ExtractedText, ExtractionError, extract_text

logger = logging.getLogger(__name__)

_PROJECT_ROOT = Path(__file__).resolve().parents[2]
# What extract_text reads from settings.INGESTION, handed on to the child, which has no Django project.
_EXTRACTION_SETTINGS = ("MAX_EXTRACTED_CHARS", "MAX_PDF_PAGES", "MAX_UNZIPPED_BYTES")
# The child runs behind the web server and the other documents' work on a small machine.
_CHILD_NICENESS = 10
# How much of the child's standard error is kept for the log when it dies without a reply.
_STDERR_TAIL = 2000


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
    """extract_text in a child process within the budget; over budget, or unreadable, raises ExtractionError."""
    reply = await _child_reply(data=data, filename=filename, budget=budget, task=None)
    return ExtractedText(
        text=reply["text"], title=reply["title"], format=reply["format"], page_starts=reply["page_starts"]
    )


async def run_on_extracted_text_in_sandbox(
    *, data: bytes, filename: str, task: str, arguments: dict, budget: ExtractionBudget | None = None
) -> dict:
    """`task(extracted, **arguments)` (a dotted name; ExtractedText in, JSON out) in the extraction's child.

    Only what the task answers comes back, not the text: work that grows with the text (chunking a
    preview) stays in the child, within the extraction's budget of memory and time.
    """
    reply = await _child_reply(data=data, filename=filename, budget=budget, task=[task, arguments])
    return reply["result"]


async def _child_reply(
    *, data: bytes, filename: str, budget: ExtractionBudget | None, task: list | None
) -> dict:
    budget = budget or ExtractionBudget.from_settings()
    ingestion = getattr(settings, "INGESTION", {})
    request = {
        "filename": filename,
        "seconds": budget.seconds,
        "memory_bytes": int(budget.memory_mb * 1024 * 1024),
        "ingestion": {name: ingestion[name] for name in _EXTRACTION_SETTINGS if name in ingestion},
        "task": task,
    }
    started = time.monotonic()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        __name__,
        json.dumps(request),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=_PROJECT_ROOT,
    )
    try:
        stdout, stderr = await asyncio.wait_for(child.communicate(data), timeout=budget.seconds)
    except TimeoutError:
        raise budget.too_slow(filename) from None
    finally:
        # Cancelled (the document went away) or out of time: the child's work stops here, not later.
        if child.returncode is None:
            peak_rss_kb = _peak_rss_kb(child.pid)
            child.kill()
            await asyncio.shield(child.wait())
            _log_usage(filename, started, peak_rss_kb, "stopped")
    reply = _reply(child.returncode, stdout, stderr, filename, budget)
    outcome = "read" if "text" in reply or "result" in reply else "failed"
    _log_usage(filename, started, reply.get("peak_rss_kb"), outcome)
    for message in reply.get("log", []):
        logger.info("%s", message)
    if reply.get("limit") == "memory":
        raise budget.too_big(filename)
    if "error" in reply:
        raise ExtractionError(reply["error"])
    return reply


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


def main() -> None:
    request = json.loads(sys.argv[1])
    _limit_resources(request["seconds"], request["memory_bytes"])
    settings.configure(INGESTION=request["ingestion"])
    collected = _Collected()
    logging.getLogger("knowledge").addHandler(collected)
    logging.getLogger("knowledge").setLevel(logging.INFO)
    reply: dict[str, object]
    try:
        data = sys.stdin.buffer.read()
        extracted = extract_text(data=data, filename=request["filename"])
        if request.get("task"):
            task, arguments = request["task"]
            reply = {"result": import_string(task)(extracted, **arguments)}
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
    sys.stdout.write(json.dumps(reply))


if __name__ == "__main__":
    main()
