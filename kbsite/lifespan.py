"""ASGI lifespan for Django, which has none: run the apps' start-up and shut-down hooks with the server."""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from django.utils.module_loading import import_string

logger = logging.getLogger("kbsite")

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]

# Each names an async callable taking no arguments.
STARTUP_HOOKS = [
    "kbsite.lifespan.shorten_gil_turns",
    "knowledge.ingestion.worker.start_in_process",
    "kbsite.lifespan.build_url_maps",
    "kbsite.lifespan.freeze_startup_heap",
]
SHUTDOWN_HOOKS = ["knowledge.ingestion.worker.stop_in_process", "search.lifecycle.close_connections"]


async def shorten_gil_turns() -> None:
    """Let a thread holding the GIL keep it at most `GIL_SWITCH_INTERVAL_MS` before the event loop gets a turn.

    Python's default is 5 ms: each time the loop wants the GIL while a thread runs Python (a document's
    keyword vectors, a sign-in's page, a file's hash), it may wait that long, a search's whole CPU time.
    """
    from django.conf import settings

    sys.setswitchinterval(settings.GIL_SWITCH_INTERVAL_MS / 1000)


async def build_url_maps() -> None:
    """Build the URL resolvers' maps for reversing names now, not in the first request that needs one.

    Django builds them on the first `reverse()` (an upload's `Location`, a page's links), on the event
    loop: measured under searches, that held every request in flight for about 0.3 s. A name in a
    namespace with a prefix (`api-v1:`, `admin:`) is reversed through a resolver Django makes and keeps
    for that namespace, with maps of its own, so one name of each namespace is reversed here.
    """
    from django.urls import NoReverseMatch, get_resolver, reverse

    pending = [("", get_resolver())]
    while pending:
        prefix, resolver = pending.pop()
        name = next((key for key in resolver.reverse_dict if isinstance(key, str)), None)
        if prefix and name is not None:
            try:
                reverse(f"{prefix}{name}")
            except NoReverseMatch:
                pass  # it takes arguments, unknown here: the maps are built before that is found
        pending.extend((f"{prefix}{namespace}:", sub) for namespace, (_, sub) in resolver.namespace_dict.items())


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
