"""Questions that many concurrent requests ask the database, answered together in one trip to its thread."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from asgiref.sync import sync_to_async

Question = TypeVar("Question", bound=Hashable)
Answer = TypeVar("Answer")


class Coalescer(Generic[Question, Answer]):
    """Questions asked in one turn of the event loop go to the database thread together; the same question is asked once.

    Every API request asks a few such questions (whose token is this, which of these KBs may the
    user read), and under load each trip to the database thread waits behind the others' trips. Here
    the questions of one turn make one trip, `answer_all` answering them in one sync call, and
    requests asking the same one (a client's burst) share its answer. Nothing is remembered after the
    trip: a question asked later is asked again, so a change in the database is seen at once.

    `answer_all` returns an answer or an exception for each question; an exception it raises is
    every waiter's answer.
    """

    def __init__(self, answer_all: Callable[[list[Question]], dict[Question, Answer | Exception]]) -> None:
        self._answer_all = sync_to_async(answer_all)
        self._waiting: dict[asyncio.AbstractEventLoop, dict[Question, asyncio.Future]] = {}

    async def ask(self, question: Question) -> Answer:
        loop = asyncio.get_running_loop()
        waiting = self._waiting.setdefault(loop, {})
        answer = waiting.get(question)
        if answer is None:
            answer = waiting[question] = loop.create_future()
            if len(waiting) == 1:
                loop.call_soon(lambda: loop.create_task(self._answer_waiting(loop)))
        # Shielded: a caller that gives up must not cancel the answer for the others.
        return await asyncio.shield(answer)

    async def _answer_waiting(self, loop: asyncio.AbstractEventLoop) -> None:
        questions = self._waiting.pop(loop, {})
        try:
            answers = await self._answer_all(list(questions))
        except BaseException as exc:  # the database failed: every waiter hears of it
            answers = dict.fromkeys(questions, exc)
        for question, answer in questions.items():
            if answer.done():
                continue
            outcome = answers[question]
            if isinstance(outcome, BaseException):
                answer.set_exception(outcome)
                answer.exception()  # retrieved: a waiter that gave up must not leave a warning behind
            else:
                answer.set_result(outcome)
