"""Questions asked by concurrent requests: one trip to the database thread per turn of the event loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from knowledge.services.coalescing import Coalescer

pytestmark = pytest.mark.unit


class Answerer:
    """answer_all for a Coalescer: squares numbers, refuses negative ones, records each trip and its thread."""

    def __init__(self) -> None:
        self.trips: list[list[int]] = []
        self.threads: set[int] = set()

    def __call__(self, questions: list[int]) -> dict[int, int | Exception]:
        self.trips.append(sorted(questions))
        self.threads.add(threading.get_ident())
        return {n: ValueError(f"{n} is negative") if n < 0 else n * n for n in questions}


async def test_questions_of_one_turn_make_one_trip_off_the_event_loop_and_each_gets_its_answer() -> None:
    answerer = Answerer()
    coalescer = Coalescer(answerer)

    answers = await asyncio.gather(*(coalescer.ask(n) for n in [3, 1, 2]))

    assert answers == [9, 1, 4]
    assert answerer.trips == [[1, 2, 3]]
    assert threading.get_ident() not in answerer.threads


async def test_the_same_question_asked_together_is_asked_once() -> None:
    answerer = Answerer()
    coalescer = Coalescer(answerer)

    answers = await asyncio.gather(*(coalescer.ask(5) for _ in range(20)))

    assert answers == [25] * 20
    assert answerer.trips == [[5]]


async def test_nothing_is_remembered_after_the_trip() -> None:
    answerer = Answerer()
    coalescer = Coalescer(answerer)

    assert await coalescer.ask(4) == 16
    assert await coalescer.ask(4) == 16

    assert answerer.trips == [[4], [4]]


async def test_an_answer_that_is_an_exception_is_raised_to_its_askers_only() -> None:
    coalescer = Coalescer(Answerer())

    answers = await asyncio.gather(coalescer.ask(-1), coalescer.ask(2), return_exceptions=True)

    assert isinstance(answers[0], ValueError) and "-1 is negative" in str(answers[0])
    assert answers[1] == 4


async def test_a_failed_trip_reaches_every_asker() -> None:
    def broken(questions: list[int]) -> dict[int, int]:
        raise ConnectionError("the database went away")

    coalescer = Coalescer(broken)

    answers = await asyncio.gather(coalescer.ask(1), coalescer.ask(2), return_exceptions=True)

    assert [type(answer) for answer in answers] == [ConnectionError, ConnectionError]


async def test_an_asker_that_gives_up_does_not_cancel_the_answer_for_the_others() -> None:
    release = threading.Event()

    def slow(questions: list[int]) -> dict[int, int]:
        release.wait(timeout=10)
        return {n: n + 1 for n in questions}

    coalescer = Coalescer(slow)
    impatient = asyncio.ensure_future(coalescer.ask(7))
    patient = asyncio.ensure_future(coalescer.ask(7))
    await asyncio.sleep(0)  # both asked, the trip under way
    impatient.cancel()
    release.set()

    assert await patient == 8
    assert impatient.cancelled()
