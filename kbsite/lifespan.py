"""ASGI lifespan for Django, which has none: run the apps' start-up and shut-down hooks with the server."""

from __future__ import annotations

import gc
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from django.utils.module_loading import import_string

logger = logging.getLogger("kbsite")

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]

# Each names an async callable taking no arguments.
STARTUP_HOOKS = ["knowledge.ingestion.worker.start_in_process", "kbsite.lifespan.freeze_startup_heap"]
SHUTDOWN_HOOKS = ["knowledge.ingestion.worker.stop_in_process", "search.lifecycle.close_connections"]


async def freeze_startup_heap() -> None:
    """Move what is alive after start-up (Django, the apps, the model's vocabulary) out of the collector's sight.

    It lives as long as the process; without this, each full collection rescans it all, a pause of
    about 0.1 s measured under load.
    """
    gc.collect()
    gc.freeze()


async def _run(hooks: list[str]) -> None:
    for path in hooks:
        await import_string(path)()


def with_lifespan(app: ASGIApp) -> ASGIApp:
    phases = {"lifespan.startup": ("startup", STARTUP_HOOKS), "lifespan.shutdown": ("shutdown", SHUTDOWN_HOOKS)}

    async def application(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            phase, hooks = phases[(await receive())["type"]]
            try:
                await _run(hooks)
            except Exception as exc:
                logger.exception("The server's %s failed", phase)
                await send({"type": f"lifespan.{phase}.failed", "message": str(exc)})
                return
            await send({"type": f"lifespan.{phase}.complete"})
            if phase == "shutdown":
                return

    return application
