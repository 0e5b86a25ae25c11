"""Whether the database and Qdrant answer, for load balancers and operators."""

from __future__ import annotations

import asyncio

from asgiref.sync import sync_to_async
from django.db import connection

from search.errors import SearchError
from search.qdrant import qdrant_service

TIMEOUT_SECONDS = 3.0


@sync_to_async
def _ping_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


class HealthService:
    async def check(self) -> dict[str, str]:
        """'ok' or what went wrong, for the database and for Qdrant, asked at once."""
        database, qdrant = await asyncio.gather(
            self._answer(_ping_database(), "the database"),
            self._answer(qdrant_service.check_available(), "Qdrant"),
        )
        return {"database": database, "qdrant": qdrant}

    @staticmethod
    async def _answer(check, what: str) -> str:
        try:
            await asyncio.wait_for(check, TIMEOUT_SECONDS)
        except TimeoutError:
            return f"{what} did not answer within {TIMEOUT_SECONDS:.0f}s"
        except SearchError as exc:
            return exc.message
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return "ok"
