"""Warm extraction: reused child processes keep the sandbox's limits per file, and a child that fails is replaced."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from knowledge.ingestion.extraction import ExtractionError
from knowledge.ingestion.sandbox import extract_text_in_sandbox, warm_extraction
from tests.hostile import pdf_of_pages_sharing_one_slow_stream

pytestmark = pytest.mark.integration

SECONDS = 3.0
MEMORY_MB = 400.0


@pytest.fixture
def budget(settings):
    settings.INGESTION = {**settings.INGESTION, "EXTRACTION_SECONDS": SECONDS, "EXTRACTION_MEMORY_MB": MEMORY_MB}


@pytest.fixture(scope="module")
def slow_pdf() -> bytes:
    return pdf_of_pages_sharing_one_slow_stream(pages=1999, comment_bytes=10_000_000)


def warm_children() -> list[int]:
    """The warm extraction children this process has running now."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if parent == os.getpid() and b"knowledge.ingestion.sandbox\x00--serve" in command:
            children.append(int(entry.name))
    return children


def limits(pid: int) -> dict[str, tuple[str, str]]:
    """The kernel's soft and hard limits on the process, by name."""
    rows = Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]
    return {row[:26].strip(): tuple(row[26:].split()[:2]) for row in rows}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def until(condition, *, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        await asyncio.sleep(0.02)


async def test_many_files_are_read_by_the_same_children_each_with_its_own_text(budget) -> None:
    async with warm_extraction(children=1) as pool:
        texts = [
            (await extract_text_in_sandbox(data=f"Note {i} about the tide.".encode(), filename=f"n{i}.txt")).text
            for i in range(6)
        ]
        assert pool.children_started == 1
        assert len(warm_children()) == 1

    assert texts == [f"Note {i} about the tide." for i in range(6)]
    assert not warm_children()


async def test_a_warm_child_reads_each_file_under_the_memory_limit_and_a_cpu_limit_of_one_files_budget(budget) -> None:
    async with warm_extraction(children=1):
        await extract_text_in_sandbox(data=b"The first file.", filename="first.txt")
        (pid,) = warm_children()
        await extract_text_in_sandbox(data=b"The second file.", filename="second.txt")
        address_space, cpu = limits(pid)["Max address space"], limits(pid)["Max cpu time"]
        used = cpu_seconds(pid)

    assert address_space == (str(int(MEMORY_MB * 1024 * 1024)),) * 2
    # The soft limit was set before the second file: what the child had used by then, plus one file's budget.
    assert used < int(cpu[0]) <= used + SECONDS + 1
    assert int(cpu[1]) > int(cpu[0])


async def test_a_file_over_the_time_budget_fails_and_its_child_is_killed_and_replaced(budget, slow_pdf) -> None:
    async with warm_extraction(children=1) as pool:
        await extract_text_in_sandbox(data=b"Warm up.", filename="warm.txt")
        (first,) = warm_children()
        started = time.perf_counter()

        with pytest.raises(ExtractionError) as caught:
            await extract_text_in_sandbox(data=slow_pdf, filename="slow.pdf")

        assert time.perf_counter() - started < SECONDS + 3
        assert caught.value.message.startswith(f"slow.pdf took longer than {SECONDS:g} seconds to read")
        assert first not in warm_children()
        after = await extract_text_in_sandbox(data=b"The ferry leaves at nine.", filename="ferry.txt")
        assert after.text == "The ferry leaves at nine."
        assert pool.children_started == 2


async def test_a_file_over_the_memory_budget_fails_saying_so_and_the_next_file_gets_a_fresh_child(settings) -> None:
    settings.INGESTION = {**settings.INGESTION, "EXTRACTION_MEMORY_MB": 100.0}
    text = b"Tides rise and fall twice a day. " * (600 * 1024)

    async with warm_extraction(children=1) as pool:
        with pytest.raises(ExtractionError) as caught:
            await extract_text_in_sandbox(data=text, filename="tides.txt")
        after = await extract_text_in_sandbox(data=b"A short note.", filename="note.txt")

    assert caught.value.message.startswith("tides.txt needs more than 100 MB of memory to read")
    assert after.text == "A short note."
    assert pool.children_started == 2


async def test_a_damaged_file_fails_with_its_reason_and_retires_its_child(budget) -> None:
    async with warm_extraction(children=1) as pool:
        with pytest.raises(ExtractionError) as caught:
            await extract_text_in_sandbox(data=b"never a PDF\n" * 50, filename="broken.pdf")
        await extract_text_in_sandbox(data=b"Fine.", filename="fine.txt")

    assert "broken.pdf is not a valid PDF" in caught.value.message
    assert pool.children_started == 2


async def test_cancelling_a_read_kills_its_child_at_once(budget, slow_pdf) -> None:
    async with warm_extraction(children=1):
        reading = asyncio.ensure_future(extract_text_in_sandbox(data=slow_pdf, filename="slow.pdf"))
        await until(lambda: bool(warm_children()))
        (pid,) = warm_children()
        await asyncio.sleep(0)

        cancelled_at = time.perf_counter()
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading

        assert time.perf_counter() - cancelled_at < 1
        assert pid not in warm_children()


async def test_a_budget_other_than_the_pools_reads_in_a_child_of_its_own(budget) -> None:
    from knowledge.ingestion.sandbox import ExtractionBudget

    async with warm_extraction(children=1) as pool:
        extracted = await extract_text_in_sandbox(
            data=b"Own budget.", filename="own.txt", budget=ExtractionBudget(seconds=30, memory_mb=300)
        )

    assert extracted.text == "Own budget."
    assert pool.children_started == 0
