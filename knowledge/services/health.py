"""Whether the database and Qdrant answer, for load balancers and operators."""

from __future__ import annotations

import asyncio
import logging

from asgiref.sync import sync_to_async
from django.db import connection

from search.errors import SearchError
from search.qdrant import qdrant_service

TIMEOUT_SECONDS = 3.0
logger = logging.getLogger(__name__)


@sync_to_async
def _ping_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


class HealthService:
    async def check(self) -> dict[str, str]:
        """'ok' or 'unavailable' for the database and for Qdrant, asked at once.

        The reasons go to the log, not to the (unauthenticated) caller: they name internal hosts.
        """
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
            logger.error("Health check: %s did not answer within %.0fs", what, TIMEOUT_SECONDS)
        except SearchError as exc:
            logger.error("Health check: %s", exc.message)
        except Exception:
            logger.exception("Health check: %s failed", what)
        else:
            return "ok"
        return "unavailable"
