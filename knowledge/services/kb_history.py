"""Owners' changes to a knowledge base written to the admin's history (LogEntry), the site's record of changes."""

from __future__ import annotations

import json

from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.contenttypes.models import ContentType
from django.utils.text import capfirst

from knowledge.models import KnowledgeBase, Membership


def _record(
    *, actor: AbstractBaseUser, kb: KnowledgeBase, action: int, message: list[dict] | str
) -> LogEntry:
    # The message takes the admin's own structure, so its History page reads these like its inline edits.
    return LogEntry.objects.create(
        user_id=actor.pk,
        content_type=ContentType.objects.get_for_model(KnowledgeBase),
        object_id=str(kb.pk),
        object_repr=str(kb)[:200],
        action_flag=action,
        change_message=message if isinstance(message, str) else json.dumps(message),
    )


def record_member_added(*, actor: AbstractBaseUser, membership: Membership) -> LogEntry:
    return _record(
        actor=actor,
        kb=membership.knowledge_base,
        action=CHANGE,
        message=[{"added": {"name": "membership", "object": str(membership)}}],
    )


def record_member_changed(*, actor: AbstractBaseUser, membership: Membership, previous_role: str) -> LogEntry:
    return _record(
        actor=actor,
        kb=membership.knowledge_base,
        action=CHANGE,
        message=[
            {
                "changed": {
                    "name": "membership",
                    "object": f"{membership} (was {previous_role})",
                    "fields": ["role"],
                }
            }
        ],
    )


def record_member_removed(*, actor: AbstractBaseUser, membership: Membership) -> LogEntry:
    return _record(
        actor=actor,
        kb=membership.knowledge_base,
        action=CHANGE,
        message=[{"deleted": {"name": "membership", "object": str(membership)}}],
    )


def record_kb_created(*, actor: AbstractBaseUser, kb: KnowledgeBase) -> LogEntry:
    return _record(actor=actor, kb=kb, action=ADDITION, message=[{"added": {}}])


def record_kb_changed(*, actor: AbstractBaseUser, kb: KnowledgeBase, fields: list[str]) -> LogEntry:
    # Field labels, as the admin names the fields it changed.
    labels = [capfirst(KnowledgeBase._meta.get_field(field).verbose_name) for field in fields]
    return _record(actor=actor, kb=kb, action=CHANGE, message=[{"changed": {"fields": labels}}])


def record_kb_deleted(*, actor: AbstractBaseUser, kb: KnowledgeBase) -> LogEntry:
    return _record(actor=actor, kb=kb, action=DELETION, message="Deleted from the members' pages.")
