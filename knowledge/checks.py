"""System checks for the ingestion settings, the login lockout and the secret key."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Warning, register

POSITIVE = {
    "MAX_UPLOAD_BYTES": "KBSITE_MAX_UPLOAD_MB",
    "MAX_EXTRACTED_CHARS": "KBSITE_MAX_EXTRACTED_CHARS",
    "MAX_PDF_PAGES": "KBSITE_MAX_PDF_PAGES",
    "MAX_UNZIPPED_BYTES": "KBSITE_MAX_UNZIPPED_MB",
    "MAX_ATTEMPTS": "KBSITE_INGEST_MAX_ATTEMPTS",
    "LEASE_SECONDS": "KBSITE_INGEST_LEASE_SECONDS",
    "POLL_SECONDS": "KBSITE_INGEST_POLL_SECONDS",
}


@register("knowledge")
def check_ingestion_settings(app_configs=None, **kwargs) -> list:
    conf = settings.INGESTION
    problems = [
        Error(f"{variable}={conf.get(key)!r} must be a number above 0.", id="knowledge.E001")
        for key, variable in POSITIVE.items()
        if not isinstance(conf.get(key), (int, float)) or conf.get(key) <= 0
    ]
    choice = str(conf.get("IN_PROCESS_WORKER", "auto")).lower()
    if choice not in {"auto", "1", "true", "yes", "on", "0", "false", "no", "off"}:
        problems.append(
            Error(f"KBSITE_IN_PROCESS_WORKER={choice!r} must be auto, true or false.", id="knowledge.E002")
        )
    return problems


@register("knowledge")
def check_login_lockout_settings(app_configs=None, **kwargs) -> list:
    """A limit of 0 would lock every user out before their first try; a cool-off of 0 would never hold."""
    problems = []
    if not isinstance(settings.AXES_FAILURE_LIMIT, int) or settings.AXES_FAILURE_LIMIT < 1:
        problems.append(
            Error(
                f"KBSITE_LOGIN_FAILURE_LIMIT={settings.AXES_FAILURE_LIMIT!r} must be a whole number "
                "of at least 1.",
                id="knowledge.E003",
            )
        )
    if settings.AXES_COOLOFF_TIME.total_seconds() <= 0:
        problems.append(Error("KBSITE_LOGIN_COOLOFF_MINUTES must be above 0.", id="knowledge.E004"))
    return problems


@register("knowledge", deploy=True)
def check_secret_key(app_configs=None, **kwargs) -> list:
    """A deployment (DEBUG off) signing with the key everyone can read in the repository."""
    if settings.SECRET_KEY == settings.DEFAULT_SECRET_KEY and not settings.DEBUG:
        return [
            Warning(
                f"DJANGO_SECRET_KEY is unset and there is no key in {settings.SECRET_KEY_FILE}: sessions "
                "and password resets are signed with a key that is public.",
                hint='Set DJANGO_SECRET_KEY, e.g. to the output of `python -c "import secrets; '
                'print(secrets.token_urlsafe(50))"`, or run `manage.py bootstrap` once to write a key '
                "of this install's own.",
                id="knowledge.W001",
            )
        ]
    return []


@register("knowledge")
def check_kb_creators_setting(app_configs=None, **kwargs) -> list:
    """A misspelt rule would otherwise refuse everyone's "New knowledge base" with a puzzling message."""
    rule = settings.KB_CREATORS
    if rule in ("everyone", "staff") or (rule.startswith("group:") and rule.removeprefix("group:").strip()):
        return []
    return [
        Error(
            f"KBSITE_KB_CREATORS={rule!r} must be everyone, staff or group:<name of a group>.",
            id="knowledge.E011",
        )
    ]
