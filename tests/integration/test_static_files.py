"""Static files as the ASGI entry point serves them, including paths built to climb out of the static folders."""

from __future__ import annotations

import asyncio

import pytest

from kbsite.asgi import application

pytestmark = [pytest.mark.integration, pytest.mark.django_db]


async def get(path: str) -> tuple[int, bytes]:
    """One GET through the whole ASGI application; the status and the body."""
    sent: list[dict] = []
    incoming: asyncio.Queue[dict] = asyncio.Queue()
    incoming.put_nowait({"type": "http.request", "body": b"", "more_body": False})

    async def receive() -> dict:
        # After the body, Django listens for a disconnect that never comes while it answers.
        return await incoming.get()

    async def send(message: dict) -> None:
        sent.append(message)

    raw_path = path.encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path.replace("%2f", "/").replace("%2F", "/"),
        "raw_path": raw_path,
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    await application(scope, receive, send)
    start = next(message for message in sent if message["type"] == "http.response.start")
    body = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    return start["status"], body


@pytest.mark.parametrize(
    "path", ["/static/..%2f..%2fetc/passwd", "/static/../../etc/passwd", "/static/%2e%2e/x"]
)
async def test_a_static_path_climbing_out_of_the_static_folders_is_not_found(path: str) -> None:
    status, body = await get(path)

    assert status == 404
    assert b"root:" not in body


async def test_a_static_file_is_served() -> None:
    status, body = await get("/static/kbsite/favicon.svg")

    assert status == 200
    assert b"<svg" in body
