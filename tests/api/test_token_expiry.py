"""API tokens that expire: set by command or in the admin, then refused with the date and what to do."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from django.utils import timezone
from ninja.testing import TestAsyncClient

from kbsite.api import api
from knowledge.errors import InvalidInput
from knowledge.models import ApiToken
from knowledge.services.tokens import ApiTokenService
from tests.factories import make_user

pytestmark = pytest.mark.integration

client = TestAsyncClient(api)
TOKEN_ADD = reverse("admin:knowledge_apitoken_add")


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def create_api_token(*args: str) -> tuple[str, str]:
    """(the printed token, what was said about it) of `manage.py create_api_token`."""
    out, err = io.StringIO(), io.StringIO()
    call_command("create_api_token", *args, stdout=out, stderr=err)
    return out.getvalue().strip(), err.getvalue()


def expire(token: ApiToken, at: datetime) -> None:
    """Move a token's expiry into the past, as time passing would."""
    ApiToken.objects.filter(pk=token.pk).update(expires_at=at)


@pytest.mark.django_db(transaction=True)
async def test_an_expired_token_answers_401_saying_when_it_expired_and_how_to_get_another(test_user) -> None:
    issued = await sync_to_async(ApiTokenService().create_token)(
        user=test_user, name="ci job", expires_at=timezone.now() + timedelta(days=1)
    )
    await sync_to_async(expire)(issued.token, datetime(2026, 3, 1, 9, 30, tzinfo=UTC))

    response = await client.get("/kbs", headers=bearer(issued.secret))

    assert response.status_code == 401
    body = response.json()
    assert body["code"] == "token_expired"
    assert "expired on 2026-03-01 09:30 UTC" in body["message"]
    assert "manage.py create_api_token" in body["message"] and "admin" in body["message"]
    assert body["detail"] == {"expired_at": "2026-03-01T09:30:00+00:00"}
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.django_db(transaction=True)
async def test_a_token_before_its_expiry_works(test_user) -> None:
    issued = await sync_to_async(ApiTokenService().create_token)(
        user=test_user, name="ci job", expires_at=timezone.now() + timedelta(minutes=5)
    )

    response = await client.get("/kbs", headers=bearer(issued.secret))

    assert response.status_code == 200


@pytest.mark.django_db(transaction=True)
async def test_a_wrong_secret_with_an_expired_tokens_prefix_learns_nothing_about_it(test_user) -> None:
    issued = await sync_to_async(ApiTokenService().create_token)(
        user=test_user, name="ci job", expires_at=timezone.now() + timedelta(days=1)
    )
    await sync_to_async(expire)(issued.token, timezone.now() - timedelta(days=1))
    forged = issued.secret[:-4] + ("aaaa" if not issued.secret.endswith("aaaa") else "bbbb")

    response = await client.get("/kbs", headers=bearer(forged))

    assert response.status_code == 401 and response.json()["code"] == "unauthenticated"


def test_a_token_cannot_be_made_already_expired(test_user) -> None:
    with pytest.raises(InvalidInput, match="has passed"):
        ApiTokenService().create_token(
            user=test_user, name="late", expires_at=timezone.now() - timedelta(seconds=1)
        )

    assert not ApiToken.objects.exists()


class TestCreateApiTokenCommand:
    def test_expires_in_days_sets_the_expiry_that_far_from_now(self, test_user) -> None:
        before = timezone.now()

        secret, said = create_api_token("alice", "--expires-in", "90d")

        token = ApiToken.objects.get()
        assert secret.startswith("kbs_")
        assert before + timedelta(days=90) <= token.expires_at <= timezone.now() + timedelta(days=90)
        assert f"expires {token.expires_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC" in said

    def test_expires_at_a_date_means_its_midnight_utc(self, test_user) -> None:
        create_api_token("alice", "--expires-at", "2099-03-31")

        assert ApiToken.objects.get().expires_at == datetime(2099, 3, 31, tzinfo=UTC)

    def test_expires_at_a_time_with_its_zone_keeps_the_zone(self, test_user) -> None:
        create_api_token("alice", "--expires-at", "2099-03-31T18:00+02:00")

        assert ApiToken.objects.get().expires_at == datetime(2099, 3, 31, 16, 0, tzinfo=UTC)

    def test_without_a_flag_the_token_never_expires(self, test_user) -> None:
        _, said = create_api_token("alice")

        assert ApiToken.objects.get().expires_at is None and "does not expire" in said

    @pytest.mark.parametrize(
        ("args", "says"),
        [
            (["--expires-in", "90"], "is not a duration"),
            (["--expires-in", "0d"], "is not a duration"),
            (["--expires-at", "next tuesday"], "is not a date"),
            (["--expires-at", "2099-02-30"], "is not a date"),
            (["--expires-at", "2001-01-01"], "has passed"),
            (["--expires-in", "1d", "--expires-at", "2099-01-01"], "not allowed with argument"),
        ],
    )
    def test_a_bad_expiry_is_a_command_error_and_makes_no_token(self, test_user, args, says) -> None:
        with pytest.raises(CommandError, match=says):
            create_api_token("alice", *args)

        assert not ApiToken.objects.exists()


class TestTokenAdmin:
    @pytest.fixture
    def admin_client(self, db, client):
        client.force_login(make_user(username="root", superuser=True))
        return client

    def form(self, user, *, day: str, hour: str = "12:00:00") -> dict[str, str]:
        # The admin splits a date-time field into a date box and a time box.
        return {"user": str(user.pk), "name": "nightly export", "expires_at_0": day, "expires_at_1": hour}

    def test_the_add_form_offers_an_expiry_and_the_token_keeps_it(self, admin_client, test_user) -> None:
        page = admin_client.get(TOKEN_ADD)
        response = admin_client.post(TOKEN_ADD, self.form(test_user, day="2099-06-30"))

        assert "expires_at" in page.context["adminform"].form.fields
        assert response.status_code == 302
        token = ApiToken.objects.get(user=test_user)
        assert token.expires_at == datetime(2099, 6, 30, 12, 0, tzinfo=UTC)
        listing = admin_client.get(reverse("admin:knowledge_apitoken_changelist")).content.decode()
        assert "June 30, 2099" in listing

    def test_an_expiry_in_the_past_is_refused_on_the_form(self, admin_client, test_user) -> None:
        response = admin_client.post(TOKEN_ADD, self.form(test_user, day="2001-01-01"))

        assert response.status_code == 200
        assert "has passed" in str(response.context["adminform"].form.errors["expires_at"])
        assert not ApiToken.objects.exists()

    def test_the_expiry_of_an_existing_token_can_be_changed(self, admin_client, test_user) -> None:
        token = ApiTokenService().create_token(user=test_user, name="nightly export").token

        response = admin_client.post(
            reverse("admin:knowledge_apitoken_change", args=[token.pk]),
            {"name": "nightly export", "expires_at_0": "2099-01-02", "expires_at_1": "03:04:05"},
        )

        assert response.status_code == 302
        token.refresh_from_db()
        assert token.expires_at == datetime(2099, 1, 2, 3, 4, 5, tzinfo=UTC)

    def test_an_expired_token_shows_as_inactive(self, admin_client, test_user) -> None:
        token = ApiTokenService().create_token(
            user=test_user, name="old", expires_at=timezone.now() + timedelta(days=1)
        ).token
        expire(token, timezone.now() - timedelta(days=1))
        token.refresh_from_db()

        assert token.is_active is False
