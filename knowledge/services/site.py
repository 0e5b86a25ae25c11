"""First-start setup of a site: an administrator to log in with and a demo knowledge base to search."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model

from kbsite.secret_key import write_secret_key_once
from knowledge.errors import InvalidInput
from knowledge.models import KnowledgeBase
from knowledge.services.documents import DocumentService
from knowledge.services.knowledge_bases import KnowledgeBaseService

DEMO_SLUG = "kbsite-docs"
# The files of the demo KB and the titles its searches show (the README's own heading is only "kbsite").
DEMO_SOURCES = {"README.md": "kbsite README"}


@dataclass(frozen=True)
class AdminAccount:
    username: str
    #: Only set when this call created the account with a generated password.
    password: str | None
    created: bool


class SiteSetupService:
    @staticmethod
    def password_file() -> Path:
        """Holds the generated password and nothing else, so that what is read from it is the password."""
        return Path(settings.VAR_DIR) / "admin-password.txt"

    def ensure_secret_key(self) -> bool:
        """Give the install a key of its own in var/ unless it has one; True when this call wrote it."""
        if settings.SECRET_KEY != settings.DEFAULT_SECRET_KEY:
            return False
        return write_secret_key_once(Path(settings.SECRET_KEY_FILE))

    def ensure_admin(self, *, username: str, password: str | None = None) -> AdminAccount:
        """Create a superuser if the site has none; a generated password is kept in a file only its owner reads."""
        users = get_user_model().objects
        existing = users.filter(is_superuser=True).order_by("pk").first()
        if existing is not None:
            self._drop_name_from_password_file(existing.get_username())
            return AdminAccount(username=existing.get_username(), password=None, created=False)
        if users.filter(username=username).exists():
            raise InvalidInput(
                f"There is no superuser, and the name {username!r} belongs to an ordinary user: choose another "
                "name with --username, or make that user a superuser (manage.py shell, or the admin)."
            )
        generated = password is None
        password = password or secrets.token_urlsafe(12)
        users.create_superuser(username=username, email="", password=password)
        if generated:
            self._save_password(password)
        return AdminAccount(username=username, password=password if generated else None, created=True)

    def _save_password(self, password: str) -> None:
        path = self.password_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        # Created readable by its owner only from the first byte, not chmod-ed afterwards.
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as file:
            file.write(f"{password}\n")

    def _drop_name_from_password_file(self, username: str) -> None:
        """Earlier versions wrote the user name above the password, which readers took for part of it."""
        path = self.password_file()
        if not path.is_file():
            return
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) == 2 and lines[0] == username:
            self._save_password(lines[1])

    def load_demo(self, *, owner) -> KnowledgeBase | None:
        """Queue the project's own documentation as a demo KB, unless a KB of that slug exists."""
        if KnowledgeBase.objects.filter(slug=DEMO_SLUG).exists():
            return None
        kb = KnowledgeBaseService().create_knowledge_base(
            name="kbsite documentation",
            slug=DEMO_SLUG,
            owner=owner,
            description="kbsite's own README, loaded on first start so there is something to search.",
        )
        for name, title in DEMO_SOURCES.items():
            path = Path(settings.BASE_DIR) / name
            if path.is_file():
                DocumentService().add_upload(kb=kb, filename=path.name, data=path.read_bytes(), title=title)
        return kb
