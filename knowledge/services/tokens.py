"""Personal API tokens: made (the secret is shown once), checked, revoked."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from knowledge.errors import InvalidInput
from knowledge.models import ApiToken

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


class ApiTokenService:
    def create_token(self, *, user: AbstractBaseUser, name: str) -> IssuedToken:
        name = (name or "").strip()
        if not name:
            raise InvalidInput("Give the token a name that says what uses it.")
        if not user.is_active:
            raise InvalidInput(f"{user.get_username()} is not an active user.")
        prefix = secrets.token_hex(PREFIX_LENGTH // 2)
        secret = f"{TOKEN_START}{prefix}_{secrets.token_urlsafe(32)}"
        token = ApiToken.objects.create(user=user, name=name[:100], prefix=prefix, key_hash=_digest(secret))
        return IssuedToken(token=token, secret=secret)

    async def authenticate(self, secret: str) -> ApiToken | None:
        """The live token `secret` is, with its user; None for anything else."""
        if not secret.startswith(TOKEN_START):
            return None
        prefix = secret[len(TOKEN_START) :].split("_", 1)[0]
        token = await (
            ApiToken.objects.select_related("user")
            .filter(prefix=prefix, revoked_at__isnull=True, user__is_active=True)
            .afirst()
        )
        if token is None or not hmac.compare_digest(token.key_hash, _digest(secret)):
            return None
        now = timezone.now()
        if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
            token.last_used_at = now
            await ApiToken.objects.filter(pk=token.pk).aupdate(last_used_at=now)
        return token

    def revoke(self, *, tokens) -> int:
        return ApiToken.objects.filter(pk__in=[t.pk for t in tokens], revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
