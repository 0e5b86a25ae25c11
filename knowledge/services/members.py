"""Who belongs to a knowledge base, in which role."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from knowledge.errors import InvalidInput, MemberNotFound
from knowledge.models import KnowledgeBase, Membership, Role
from knowledge.services import kb_history
from knowledge.services.text_fields import refuse_unstorable_characters

MAX_IDENTIFIER_CHARS = 254


class MembershipService:
    def set_member(self, *, kb: KnowledgeBase, username: str, role: str) -> tuple[Membership, bool]:
        """Make the user a member in this role, or change their role; True when newly added."""
        refuse_unstorable_characters(username=username, role=role)
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise InvalidInput(f"There is no active user {username!r}.", detail={"username": username})
        if role not in Role.values:
            raise InvalidInput(f"The role must be one of {', '.join(Role.values)}, not {role!r}.")
        existing = Membership.objects.filter(knowledge_base=kb, user=user).first()
        if existing is not None and role != Role.OWNER:
            self._keep_an_owner(kb, existing)
        membership, created = Membership.objects.update_or_create(
            knowledge_base=kb, user=user, defaults={"role": role}
        )
        return membership, created

    def remove_member(self, *, kb: KnowledgeBase, user_id: int, actor: AbstractBaseUser | None = None) -> None:
        """Take the user's membership away; with an `actor`, the removal goes into the KB's history."""
        with transaction.atomic():
            membership = (
                Membership.objects.filter(knowledge_base=kb, user_id=user_id).select_related("user").first()
            )
            if membership is None:
                raise MemberNotFound(f"User {user_id} is not a member of {kb.name!r}.")
            self._keep_an_owner(kb, membership)
            membership.delete()
            if actor is not None:
                membership.knowledge_base = kb
                kb_history.record_member_removed(actor=actor, membership=membership)

    def find_user(self, *, identifier: str) -> AbstractBaseUser:
        """The active user with this user name, else the one with this e-mail address (in any case)."""
        refuse_unstorable_characters(user=identifier)
        identifier = (identifier or "").strip()
        if not identifier or len(identifier) > MAX_IDENTIFIER_CHARS:
            raise InvalidInput(f"Give a user name or an e-mail address of at most {MAX_IDENTIFIER_CHARS} characters.")
        users = get_user_model().objects.filter(is_active=True)
        user = users.filter(username=identifier).first()
        if user is None and "@" in identifier:
            by_mail = list(users.filter(email__iexact=identifier)[:2])
            if len(by_mail) > 1:
                raise InvalidInput(f"Several users have the address {identifier}: give the user name instead.")
            user = by_mail[0] if by_mail else None
        if user is None:
            raise InvalidInput(
                f"There is no active user {identifier!r}: check the spelling, or ask an administrator to "
                "create their account first.",
                detail={"user": identifier},
            )
        return user

    def add_member(
        self, *, kb: KnowledgeBase, identifier: str, role: str, actor: AbstractBaseUser
    ) -> tuple[Membership, str | None]:
        """Make the user named by user name or e-mail a member in `role` (or give a member that role),
        recorded in the KB's history; returns the membership and the role they had before, if any."""
        with transaction.atomic():
            user = self.find_user(identifier=identifier)
            previous = Membership.objects.filter(knowledge_base=kb, user=user).values_list("role", flat=True).first()
            membership, _ = self.set_member(kb=kb, username=user.get_username(), role=role)
            self._record(actor, kb, membership, previous)
        return membership, previous

    def change_role(self, *, kb: KnowledgeBase, user_id: int, role: str, actor: AbstractBaseUser) -> Membership:
        """Give a member another role, recorded in the KB's history; the last owner keeps theirs."""
        with transaction.atomic():
            membership = (
                Membership.objects.select_for_update()
                .filter(knowledge_base=kb, user_id=user_id)
                .select_related("user")
                .first()
            )
            if membership is None:
                raise MemberNotFound(f"User {user_id} is not a member of {kb.name!r}.")
            previous = membership.role
            membership, _ = self.set_member(kb=kb, username=membership.user.get_username(), role=role)
            self._record(actor, kb, membership, previous)
        return membership

    @staticmethod
    def _record(actor: AbstractBaseUser, kb: KnowledgeBase, membership: Membership, previous: str | None) -> None:
        membership.knowledge_base = kb
        if previous is None:
            kb_history.record_member_added(actor=actor, membership=membership)
        elif previous != membership.role:
            kb_history.record_member_changed(actor=actor, membership=membership, previous_role=previous)

    # The async form of each method, for async callers (see README, "How it is built").
    aset_member = sync_to_async(set_member)
    aremove_member = sync_to_async(remove_member)
    aadd_member = sync_to_async(add_member)
    achange_role = sync_to_async(change_role)

    @staticmethod
    def _keep_an_owner(kb: KnowledgeBase, leaving: Membership) -> None:
        """Refuse to take away the last owner's role: someone must be left to manage the KB."""
        if leaving.role != Role.OWNER:
            return
        other_owners = Membership.objects.filter(knowledge_base=kb, role=Role.OWNER).exclude(pk=leaving.pk)
        # The KB's creator (its `owner`) keeps owner rights whatever the memberships say.
        if (kb.owner_id is not None and kb.owner_id != leaving.user_id) or other_owners.exists():
            return
        raise InvalidInput(f"{leaving.user.get_username()} is the last owner of {kb.name!r}: add another owner first.")
