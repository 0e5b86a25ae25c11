"""Repeated failed logins to the admin and the members' sign-in page pause that user from that address."""

from __future__ import annotations

from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from axes.models import AccessAttempt
from django.test import AsyncClient
from django.urls import reverse
from django.utils import timezone

from tests.factories import make_user

pytestmark = [pytest.mark.integration, pytest.mark.django_db]

LIMIT = 3
MEMBERS_LOGIN = reverse("web:login")
ADMIN_LOGIN = reverse("admin:login")


@pytest.fixture(autouse=True)
def lockout_settings(settings):
    settings.AXES_FAILURE_LIMIT = LIMIT
    settings.AXES_COOLOFF_TIME = timedelta(minutes=15)


@pytest.fixture
def dora(db):
    return make_user(username="dora", is_staff=True)


def attempt(client, url: str, username: str, password: str, address: str = "203.0.113.7"):
    return client.post(url, {"username": username, "password": password}, REMOTE_ADDR=address)


def fail(client, url: str, username: str, times: int, address: str = "203.0.113.7"):
    for _ in range(times - 1):
        assert attempt(client, url, username, "wrong", address).status_code == 200
    return attempt(client, url, username, "wrong", address)


def locked(response) -> bool:
    return response.status_code == 429 and b"Too many failed sign-ins" in response.content


@pytest.mark.parametrize("url", [MEMBERS_LOGIN, ADMIN_LOGIN])
def test_the_limit_th_failure_locks_the_user_out_from_that_address_even_with_the_right_password(
    client, dora, url
) -> None:
    last_failure = fail(client, url, "dora", LIMIT)
    right_password = attempt(client, url, "dora", "pw-dora")

    assert locked(last_failure) and locked(right_password)
    assert "_auth_user_id" not in client.session


def test_fewer_failures_than_the_limit_still_let_the_right_password_in(client, dora) -> None:
    fail(client, MEMBERS_LOGIN, "dora", LIMIT - 1)

    response = attempt(client, MEMBERS_LOGIN, "dora", "pw-dora")

    assert response.status_code == 302 and client.session["_auth_user_id"] == str(dora.pk)


def test_another_user_from_the_same_address_is_not_locked_out(client, dora) -> None:
    make_user(username="erin")
    fail(client, MEMBERS_LOGIN, "dora", LIMIT)

    response = attempt(client, MEMBERS_LOGIN, "erin", "pw-erin")

    assert response.status_code == 302


def test_the_same_user_from_another_address_is_not_locked_out(client, dora) -> None:
    fail(client, MEMBERS_LOGIN, "dora", LIMIT, address="203.0.113.7")

    response = attempt(client, MEMBERS_LOGIN, "dora", "pw-dora", address="198.51.100.20")

    assert response.status_code == 302


def test_behind_a_named_proxy_each_client_counts_against_the_address_the_proxy_saw(
    client, dora, settings
) -> None:
    settings.LOGIN_TRUSTED_PROXIES = ["10.0.0.5"]
    # What the sender wrote comes first; the named proxy appended the address it saw.
    for claimed in range(LIMIT):
        client.post(
            MEMBERS_LOGIN,
            {"username": "dora", "password": "wrong"},
            REMOTE_ADDR="10.0.0.5",
            HTTP_X_FORWARDED_FOR=f"198.51.100.{claimed}, 203.0.113.7",
        )

    same_client = client.post(
        MEMBERS_LOGIN,
        {"username": "dora", "password": "pw-dora"},
        REMOTE_ADDR="10.0.0.5",
        HTTP_X_FORWARDED_FOR="192.0.2.99, 203.0.113.7",
    )
    other_client = client.post(
        MEMBERS_LOGIN,
        {"username": "dora", "password": "pw-dora"},
        REMOTE_ADDR="10.0.0.5",
        HTTP_X_FORWARDED_FOR="203.0.113.8",
    )

    assert locked(same_client)
    assert other_client.status_code == 302


def test_without_named_proxies_forwarded_sign_ins_share_one_address_whatever_they_claim(client, dora) -> None:
    for claimed in range(LIMIT):
        client.post(
            MEMBERS_LOGIN,
            {"username": "dora", "password": "wrong"},
            REMOTE_ADDR=f"198.51.100.{claimed}",
            HTTP_X_FORWARDED_FOR=f"198.51.100.{claimed}",
        )

    forwarded = client.post(
        MEMBERS_LOGIN,
        {"username": "dora", "password": "pw-dora"},
        REMOTE_ADDR="192.0.2.99",
        HTTP_X_FORWARDED_FOR="192.0.2.99",
    )
    direct = attempt(client, MEMBERS_LOGIN, "dora", "pw-dora", address="192.0.2.99")

    assert locked(forwarded)
    assert direct.status_code == 302


def test_the_page_says_whose_sign_in_is_paused_and_when_to_try_again(client, dora) -> None:
    before = timezone.now()

    response = fail(client, MEMBERS_LOGIN, "dora", LIMIT)

    ends = AccessAttempt.objects.get(username="dora").attempt_time + timedelta(minutes=15)
    page = response.content.decode()
    assert "Signing in as <strong>dora</strong>" in page and f"after {LIMIT} failed attempts" in page
    assert f"Try again after <time datetime=\"{ends.isoformat()}\">{ends:%Y-%m-%d %H:%M} UTC</time>" in page
    assert "in about 15 minutes" in page
    assert 14 * 60 <= int(response["Retry-After"]) <= 15 * 60
    assert ends >= before + timedelta(minutes=15)


def test_attempts_while_locked_out_do_not_push_the_time_back(client, dora) -> None:
    fail(client, MEMBERS_LOGIN, "dora", LIMIT)
    first = AccessAttempt.objects.get(username="dora").attempt_time

    attempt(client, MEMBERS_LOGIN, "dora", "wrong")

    assert AccessAttempt.objects.get(username="dora").attempt_time == first


def test_the_user_may_sign_in_again_once_the_cool_off_has_passed(client, dora) -> None:
    fail(client, MEMBERS_LOGIN, "dora", LIMIT)
    # The last failure as if it were 15 minutes and a second old: the cool-off has run out.
    AccessAttempt.objects.filter(username="dora").update(
        attempt_time=timezone.now() - timedelta(minutes=15, seconds=1)
    )

    response = attempt(client, MEMBERS_LOGIN, "dora", "pw-dora")

    assert response.status_code == 302 and client.session["_auth_user_id"] == str(dora.pk)


def test_a_successful_sign_in_forgets_the_earlier_failures(client, dora) -> None:
    fail(client, MEMBERS_LOGIN, "dora", LIMIT - 1)
    attempt(client, MEMBERS_LOGIN, "dora", "pw-dora")
    client.logout()

    response = fail(client, MEMBERS_LOGIN, "dora", LIMIT - 1)

    assert response.status_code == 200 and not locked(response)


@pytest.mark.django_db(transaction=True)
async def test_the_lockout_page_is_served_on_the_async_path_too() -> None:
    """Under uvicorn the middleware runs async; django-axes hands the page maker other arguments there."""
    client = AsyncClient()
    await sync_to_async(make_user)(username="dora")

    for _ in range(LIMIT - 1):
        await client.post(MEMBERS_LOGIN, {"username": "dora", "password": "wrong"})
    response = await client.post(MEMBERS_LOGIN, {"username": "dora", "password": "wrong"})

    assert locked(response) and "Signing in as <strong>dora</strong>" in response.content.decode()
    assert int(response["Retry-After"]) > 0

