"""Who belongs to a knowledge base, in which role."""

from __future__ import annotations

from django.contrib.auth import get_user_model

from knowledge.errors import InvalidInput, MemberNotFound
from knowledge.models import KnowledgeBase, Membership, Role


class MembershipService:
    def set_member(self, *, kb: KnowledgeBase, username: str, role: str) -> tuple[Membership, bool]:
        """Make the user a member in this role, or change their role; True when newly added."""
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise InvalidInput(f"There is no active user {username!r}.", detail={"username": username})
        if role not in Role.values:
            raise InvalidInput(f"The role must be one of {', '.join(Role.values)}, not {role!r}.")
        membership, created = Membership.objects.update_or_create(
            knowledge_base=kb, user=user, defaults={"role": role}
        )
        return membership, created

    def remove_member(self, *, kb: KnowledgeBase, user_id: int) -> None:
        membership = Membership.objects.filter(knowledge_base=kb, user_id=user_id).first()
        if membership is None:
            raise MemberNotFound(f"User {user_id} is not a member of {kb.name!r}.")
        other_owners = Membership.objects.filter(knowledge_base=kb, role=Role.OWNER).exclude(pk=membership.pk)
        # The KB's creator (its `owner`) keeps owner rights whatever the memberships say.
        still_owned = (kb.owner_id is not None and kb.owner_id != user_id) or other_owners.exists()
        if membership.role == Role.OWNER and not still_owned:
            raise InvalidInput(f"{membership.user.get_username()} is the last owner of {kb.name!r}: add another first.")
        membership.delete()
