"""Personal API tokens: made (the secret is shown once), checked, revoked."""

from __future__ import annotations

import copy
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from knowledge.errors import InvalidInput, TokenExpired
from knowledge.models import ApiToken
from knowledge.services.coalescing import Coalescer

TOKEN_START = "kbs_"
PREFIX_LENGTH = 12
# Writing last_used_at on every request would make each API call a write; once a minute will do.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def _digest(secret: str) -> str:
    # The secret is 32 random bytes: a plain hash is enough, no slow password hashing needed.
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedToken:
    token: ApiToken
    #: The full token, to give to the user once; only its hash is stored.
    secret: str


def when(moment: datetime) -> str:
    """A token's expiry as people read it, in UTC whatever the server's zone."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


class ApiTokenService:
    def create_token(
        self, *, user: AbstractBaseUser, name: str, expires_at: datetime | None = None
    ) -> IssuedToken:
        """A new token for `user`; with `expires_at`, it answers 401 from then on."""
        name = (name or "").strip()
        if not name:
            raise InvalidInput("Give the token a name that says what uses it.")
        if not user.is_active:
            raise InvalidInput(f"{user.get_username()} is not an active user.")
        self.check_expiry(expires_at)
        prefix = secrets.token_hex(PREFIX_LENGTH // 2)
        secret = f"{TOKEN_START}{prefix}_{secrets.token_urlsafe(32)}"
        token = ApiToken.objects.create(
            user=user, name=name[:100], prefix=prefix, key_hash=_digest(secret), expires_at=expires_at
        )
        return IssuedToken(token=token, secret=secret)

    @staticmethod
    def check_expiry(expires_at: datetime | None) -> None:
        """A new token's expiry must lie ahead: one made already expired is a mistake, not a token."""
        if expires_at is not None and expires_at <= timezone.now():
            raise InvalidInput(
                f"The expiry {when(expires_at)} has passed: give a later one, "
                "or none for a token that never expires."
            )

    async def authenticate(self, secret: str) -> ApiToken | None:
        """The live token `secret` is, with its user; None for anything else.

        A genuine token past its expiry raises TokenExpired, so that its owner learns why it stopped working.
        Concurrent requests' lookups go to the database together (`_live_tokens`), and each caller gets
        its own copy of the token and its user.
        """
        if not secret.startswith(TOKEN_START):
            return None
        prefix = secret[len(TOKEN_START) :].split("_", 1)[0]
        token = await _live_tokens.ask((prefix, _digest(secret)))
        if token is None:
            return None
        token = copy.copy(token)
        token.user = copy.copy(token.user)
        if token.expires_at is not None and token.expires_at <= timezone.now():
            raise TokenExpired(
                f"This API token ({token.name!r}, {token.prefix}…) expired on {when(token.expires_at)}. "
                "Make a new one in the admin (API tokens, Add) or with `manage.py create_api_token USERNAME`, "
                "or ask an administrator to.",
                detail={"expired_at": token.expires_at.isoformat()},
            )
        return token

    def revoke(self, *, tokens) -> int:
        return ApiToken.objects.filter(pk__in=[t.pk for t in tokens], revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )


def _live_token_answers(questions: list[tuple[str, str]]) -> dict[tuple[str, str], ApiToken | None]:
    """For each (prefix, digest of the secret): the unrevoked token of an active user it names, else None.

    Tokens found unexpired and not marked used within LAST_USED_RESOLUTION are marked used now, in one write.
    """
    found = {
        token.prefix: token
        for token in ApiToken.objects.select_related("user").filter(
            prefix__in={prefix for prefix, _ in questions}, revoked_at__isnull=True, user__is_active=True
        )
    }
    answers: dict[tuple[str, str], ApiToken | None] = {}
    for prefix, digest in questions:
        token = found.get(prefix)
        answers[prefix, digest] = token if token is not None and hmac.compare_digest(token.key_hash, digest) else None
    now = timezone.now()
    used = {
        token.pk: token
        for token in answers.values()
        if token is not None
        and (token.expires_at is None or token.expires_at > now)
        and (token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION)
    }
    if used:
        ApiToken.objects.filter(pk__in=used).update(last_used_at=now)
        for token in used.values():
            token.last_used_at = now
    return answers


_live_tokens: Coalescer[tuple[str, str], ApiToken | None] = Coalescer(_live_token_answers)
