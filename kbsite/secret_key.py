"""This install's own secret key in var/: written once, readable by its owner only, read by the settings."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

# Django's own check (security.W009) wants at least 50 characters of at least 5 kinds.
KEY_BYTES = 48


def read_secret_key(path: Path) -> str | None:
    """The key kept in `path`, or None when there is no such file yet."""
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ImproperlyConfigured(
            f"Cannot read the secret key in {path} ({exc.strerror}): give this user read access to it, "
            "or set DJANGO_SECRET_KEY."
        ) from None
    if not key:
        raise ImproperlyConfigured(
            f"{path} is empty: delete it and run `manage.py bootstrap` (part of `make run`) to write "
            "a new key, or set DJANGO_SECRET_KEY."
        )
    return key


def write_secret_key_once(path: Path) -> bool:
    """Write a new random key to `path` unless one is there; True when this call wrote it.

    The key goes to a private temporary file first and is then hard-linked into place, which fails if
    the file exists: a reader never sees half a key, and two processes starting at once keep the
    first one's key instead of one overwriting the other (whose sessions would then break).
    """
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    # Readable by its owner only from the first byte, not chmod-ed afterwards.
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(secrets.token_urlsafe(KEY_BYTES) + "\n")
        file.flush()
        os.fsync(file.fileno())
    try:
        os.link(draft, path)
    except FileExistsError:
        return False
    finally:
        draft.unlink()
    return True
