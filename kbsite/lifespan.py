"""ASGI lifespan for Django, which has none: run the apps' start-up and shut-down hooks with the server."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from django.utils.module_loading import import_string

logger = logging.getLogger("kbsite")

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]

# Each names an async callable taking no arguments.
STARTUP_HOOKS = ["knowledge.worker.start_in_process"]
SHUTDOWN_HOOKS = ["knowledge.worker.stop_in_process", "search.lifecycle.close_connections"]


async def _run(hooks: list[str]) -> None:
    for path in hooks:
        await import_string(path)()


def with_lifespan(app: ASGIApp) -> ASGIApp:
    async def application(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await _run(STARTUP_HOOKS)
                except Exception as exc:
                    logger.exception("Start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await _run(SHUTDOWN_HOOKS)
                except Exception as exc:
                    logger.exception("Shut-down failed")
                    await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return

    return application
