"""Who belongs to a knowledge base, in which role."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model

from knowledge.errors import InvalidInput, MemberNotFound
from knowledge.models import KnowledgeBase, Membership, Role
from knowledge.services.text_fields import refuse_unstorable_characters


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

    def remove_member(self, *, kb: KnowledgeBase, user_id: int) -> None:
        membership = Membership.objects.filter(knowledge_base=kb, user_id=user_id).select_related("user").first()
        if membership is None:
            raise MemberNotFound(f"User {user_id} is not a member of {kb.name!r}.")
        self._keep_an_owner(kb, membership)
        membership.delete()

    # The async form of each method, for async callers (see README, "How it is built").
    aset_member = sync_to_async(set_member)
    aremove_member = sync_to_async(remove_member)

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
