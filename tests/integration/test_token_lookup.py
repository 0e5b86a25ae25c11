"""API tokens checked for many concurrent requests at once: one database trip, each caller's own answer."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from knowledge.models import ApiToken
from knowledge.services.tokens import ApiTokenService
from tests.factories import make_user

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def issue(username: str, **fields):
    return ApiTokenService().create_token(user=make_user(username=username), name="client", **fields)


@sync_to_async
def last_used(token: ApiToken):
    return ApiToken.objects.get(pk=token.pk).last_used_at


async def authenticate_capturing_queries(secrets: list[str]) -> tuple[list, list[str]]:
    """Every secret authenticated concurrently, and the SQL that the database thread ran meanwhile."""

    @sync_to_async
    def start_capture() -> CaptureQueriesContext:
        capture = CaptureQueriesContext(connection)
        capture.__enter__()
        return capture

    capture = await start_capture()
    answers = await asyncio.gather(
        *(ApiTokenService().authenticate(secret) for secret in secrets), return_exceptions=True
    )

    @sync_to_async
    def stop_capture() -> list[str]:
        # On the database thread: `connection` is another object on the event loop's.
        capture.__exit__(None, None, None)
        return [query["sql"] for query in capture.captured_queries]

    return answers, await stop_capture()


async def test_concurrent_requests_share_one_lookup_and_each_gets_its_own_token_and_user() -> None:
    alice, bob = await sync_to_async(issue)("alice"), await sync_to_async(issue)("bob")
    forged = alice.secret[:-4] + ("AAAA" if not alice.secret.endswith("AAAA") else "BBBB")
    secrets = [alice.secret] * 10 + [bob.secret] * 10 + [forged, "kbs_000000000000_nothing", "not-a-token"]

    answers, queries = await authenticate_capturing_queries(secrets)

    assert [answer.user.username for answer in answers[:20]] == ["alice"] * 10 + ["bob"] * 10
    assert answers[20:] == [None, None, None]
    selects = [sql for sql in queries if sql.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 1, queries
    # Each request gets objects of its own: what one request does to its user is not another's.
    assert len({id(answer) for answer in answers[:20]}) == 20
    assert len({id(answer.user) for answer in answers[:20]}) == 20
    assert await last_used(alice.token) is not None and await last_used(bob.token) is not None


async def test_a_revoked_token_is_refused_on_the_next_request() -> None:
    alice = await sync_to_async(issue)("alice")
    assert (await ApiTokenService().authenticate(alice.secret)).user.username == "alice"

    await sync_to_async(ApiTokenService().revoke)(tokens=[alice.token])

    assert await ApiTokenService().authenticate(alice.secret) is None


async def test_a_token_of_a_deactivated_user_is_refused() -> None:
    alice = await sync_to_async(issue)("alice")
    user = alice.token.user
    user.is_active = False
    await user.asave(update_fields=["is_active"])

    assert await ApiTokenService().authenticate(alice.secret) is None


async def test_last_used_is_written_once_a_minute_at_most_and_never_for_an_expired_token() -> None:
    alice = await sync_to_async(issue)("alice", expires_at=timezone.now() + timedelta(hours=1))
    await ApiTokenService().authenticate(alice.secret)
    first = await last_used(alice.token)

    _, queries = await authenticate_capturing_queries([alice.secret])

    assert not [sql for sql in queries if sql.lstrip().upper().startswith("UPDATE")]
    assert await last_used(alice.token) == first
    stale = timezone.now() - timedelta(hours=2)
    await ApiToken.objects.filter(pk=alice.token.pk).aupdate(last_used_at=stale, expires_at=stale)
    answers, _ = await authenticate_capturing_queries([alice.secret])
    assert type(answers[0]).__name__ == "TokenExpired"
    assert await last_used(alice.token) == stale
