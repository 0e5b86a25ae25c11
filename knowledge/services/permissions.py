"""Who may do what with a knowledge base: superusers everything, the owner and members by their role."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from uuid import UUID

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.db.models import Q, QuerySet

from knowledge.errors import KnowledgeBaseNotFound, PermissionDenied
from knowledge.models import KnowledgeBase, Membership, Role
from knowledge.services.coalescing import Coalescer
from search.errors import UnknownUser

SEARCH_FIELDS = [
    "id", "name", "slug", "owner_id", "embedding_model", "vector_size", "index_generation", "keyword_settings",
    "metadata_fields",
]
ROLE_RANK = {Role.READER: 1, Role.EDITOR: 2, Role.OWNER: 3}


@functools.cache
def _readable_sql(kb_count: int) -> str:
    quote = connection.ops.quote_name
    kb, member = quote(KnowledgeBase._meta.db_table), quote(Membership._meta.db_table)
    user = quote(get_user_model()._meta.db_table)
    columns = ", ".join(f"kb.{quote(KnowledgeBase._meta.get_field(name).column)}" for name in SEARCH_FIELDS)
    return f"""
        SELECT {columns}
        FROM {user} u
        LEFT JOIN {kb} kb ON kb.id IN ({", ".join(["%s"] * kb_count)}) AND (
            u.is_superuser OR kb.owner_id = u.id OR EXISTS (
                SELECT 1 FROM {member} m WHERE m.knowledge_base_id = kb.id AND m.user_id = u.id))
        WHERE u.id = %s AND u.is_active
    """


def _access_filter(user_id: int, least: Role) -> Q:
    roles = [role for role, rank in ROLE_RANK.items() if rank >= ROLE_RANK[least]]
    return Q(owner_id=user_id) | Q(
        id__in=Membership.objects.filter(user_id=user_id, role__in=roles).values("knowledge_base_id")
    )


class PermissionService:
    """Answers access questions from the database: the rule is owner, member role, or superuser.

    The same rule is written three ways for three callers (a queryset for lists, one SQL statement
    for the search path, a role for one KB); tests/integration/test_permission_rule.py holds them to it.
    """

    def knowledge_bases_for(self, user: AbstractBaseUser, *, least: Role = Role.READER) -> QuerySet[KnowledgeBase]:
        """The KBs `user` holds at least the role `least` on (all of them for a superuser)."""
        if not user.is_active:
            return KnowledgeBase.objects.none()
        if user.is_superuser:
            return KnowledgeBase.objects.all()
        return KnowledgeBase.objects.filter(_access_filter(user.pk, least))

    async def readable_knowledge_bases(self, *, user_id: int, kb_ids: Sequence[UUID]) -> list[KnowledgeBase]:
        """Those of `kb_ids` that exist and the user may read; UnknownUser if there is no such active user."""
        if isinstance(user_id, bool) or not isinstance(user_id, int):
            raise UnknownUser(f"user_id must be a user's numeric id, not {user_id!r}.")
        if not kb_ids:
            return []
        return await self._look_up(("some", user_id, tuple(kb_ids)))

    async def all_readable_knowledge_bases(self, *, user_id: int, most: int) -> list[KnowledgeBase]:
        """Up to `most` of the KBs the user may read, by name; UnknownUser if there is no such active user."""
        if isinstance(user_id, bool) or not isinstance(user_id, int):
            raise UnknownUser(f"user_id must be a user's numeric id, not {user_id!r}.")
        return await self._look_up(("all", user_id, most))

    async def _look_up(self, question: tuple) -> list[KnowledgeBase]:
        """The answer to a search's access question, asked together with the questions of concurrent searches.

        Every search asks one: the questions asked in one turn of the event loop go to the database
        thread in one trip, and searches asking the same one (a user's burst) share its answer.
        """
        return list(await self._coalescer.ask(question))

    @functools.cached_property
    def _coalescer(self) -> Coalescer[tuple, list[KnowledgeBase]]:
        return Coalescer(self._answers)

    def _answers(self, questions: list[tuple]) -> dict[tuple, list[KnowledgeBase] | Exception]:
        answers: dict[tuple, list[KnowledgeBase] | Exception] = {}
        for question in questions:
            kind, user_id, detail = question
            try:
                if kind == "some":
                    answers[question] = self._readable_knowledge_bases(user_id, list(detail))
                else:
                    answers[question] = self._all_readable_knowledge_bases(user_id, detail)
            except UnknownUser as exc:
                answers[question] = exc
        return answers

    def _all_readable_knowledge_bases(self, user_id: int, most: int) -> list[KnowledgeBase]:
        user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
        if user is None:
            raise UnknownUser(f"There is no active user with id {user_id}.")
        return list(self.knowledge_bases_for(user).only(*SEARCH_FIELDS).order_by("name", "id")[:most])

    @staticmethod
    def _readable_knowledge_bases(user_id: int, kb_ids: list[UUID]) -> list[KnowledgeBase]:
        # Every search asks this, so it is one plain SQL statement: the ORM's version with
        # correlated subqueries spent ten times longer compiling than the database spent answering.
        # The LEFT JOIN yields one row with NULL columns for a user who may read none of them.
        pk, keywords = KnowledgeBase._meta.pk, KnowledgeBase._meta.get_field("keyword_settings")
        fields = KnowledgeBase._meta.get_field("metadata_fields")
        with connection.cursor() as cursor:
            cursor.execute(
                _readable_sql(len(kb_ids)), [pk.get_db_prep_value(kb_id, connection) for kb_id in kb_ids] + [user_id]
            )
            rows = cursor.fetchall()
        if not rows:
            raise UnknownUser(f"There is no active user with id {user_id}.")
        return [
            KnowledgeBase.from_db(
                connection.alias,
                SEARCH_FIELDS,
                (
                    pk.to_python(row[0]),
                    *row[1:-2],
                    keywords.from_db_value(row[-2], None, connection),
                    fields.from_db_value(row[-1], None, connection),
                ),
            )
            for row in rows
            if row[0] is not None
        ]

    @staticmethod
    def knowledge_base_lookup(kb_ref: UUID | str) -> Q:
        """A knowledge base named by its id or by its slug: the one place that tells them apart.

        Paths and forms may name a KB either way; anything that is not a UUID is taken for a slug.
        """
        if isinstance(kb_ref, UUID):
            return Q(pk=kb_ref)
        try:
            return Q(pk=UUID(kb_ref))
        except ValueError:
            return Q(slug=kb_ref)

    def get_knowledge_base(self, *, user: AbstractBaseUser, kb_id: UUID | str, least: Role) -> KnowledgeBase:
        """The KB, named by id or slug, if the user holds at least `least` on it; one they may not read does not
        exist for them."""
        kb = KnowledgeBase.objects.select_related("owner").filter(self.knowledge_base_lookup(kb_id)).first()
        role = self.role_for(user=user, kb=kb) if kb is not None else None
        return self._readable(kb, kb_id=kb_id, role=role, least=least)

    async def aget_knowledge_base(self, *, user: AbstractBaseUser, kb_id: UUID | str, least: Role) -> KnowledgeBase:
        """`get_knowledge_base` from async code."""
        kb = await KnowledgeBase.objects.select_related("owner").filter(self.knowledge_base_lookup(kb_id)).afirst()
        role = await self.arole_for(user=user, kb=kb) if kb is not None else None
        return self._readable(kb, kb_id=kb_id, role=role, least=least)

    def _readable(self, kb: KnowledgeBase | None, *, kb_id: UUID | str, role: Role | None, least: Role) -> KnowledgeBase:
        """The KB if `role` reaches `least`; not found when there is no KB or no role."""
        if kb is None or role is None:
            # Named as the caller named it: a KB reached by slug must not give its id away.
            raise KnowledgeBaseNotFound(f"There is no knowledge base {kb_id} you may read.")
        self._at_least(role, kb=kb, least=least)
        return kb

    def role_for(self, *, user: AbstractBaseUser, kb: KnowledgeBase) -> Role | None:
        """The user's effective role on the KB: owner for superusers and the KB's owner, else the membership's."""
        if not user.is_active:
            return None
        if user.is_superuser or kb.owner_id == user.pk:
            return Role.OWNER
        membership = Membership.objects.filter(knowledge_base=kb, user_id=user.pk).only("role").first()
        return Role(membership.role) if membership else None

    async def arole_for(self, *, user: AbstractBaseUser, kb: KnowledgeBase) -> Role | None:
        """`role_for` for async callers, on the async ORM."""
        if not user.is_active:
            return None
        if user.is_superuser or kb.owner_id == user.pk:
            return Role.OWNER
        membership = await Membership.objects.filter(knowledge_base=kb, user_id=user.pk).only("role").afirst()
        return Role(membership.role) if membership else None

    def require(self, *, user: AbstractBaseUser, kb: KnowledgeBase, least: Role) -> Role:
        """The user's role on the KB if it is at least `least`.

        A user who may not even read the KB is told it does not exist, so KB ids do not leak.
        """
        return self._at_least(self.role_for(user=user, kb=kb), kb=kb, least=least)

    async def arequire(self, *, user: AbstractBaseUser, kb: KnowledgeBase, least: Role) -> Role:
        """`require` for async callers."""
        return self._at_least(await self.arole_for(user=user, kb=kb), kb=kb, least=least)

    @staticmethod
    def _at_least(role: Role | None, *, kb: KnowledgeBase, least: Role) -> Role:
        if role is None:
            raise KnowledgeBaseNotFound(f"There is no knowledge base {kb.id} you may read.")
        if ROLE_RANK[role] < ROLE_RANK[least]:
            raise PermissionDenied(
                f"You are {role.label.lower()} of {kb.name!r}; this needs {least.label.lower()} or above. "
                "Ask the KB's owner to change your role."
            )
        return role

    def may_create_knowledge_bases(self, user: AbstractBaseUser) -> bool:
        """Whether the user may create KBs: anyone signed in, unless KBSITE_KB_CREATORS names staff or a group."""
        if not user.is_active:
            return False
        rule = settings.KB_CREATORS
        if user.is_superuser or rule == "everyone":
            return True
        if rule == "staff":
            return user.is_staff
        return user.groups.filter(name=rule.removeprefix("group:").strip()).exists()

    def require_may_create_knowledge_bases(self, user: AbstractBaseUser) -> None:
        if not self.may_create_knowledge_bases(user):
            who = "staff" if settings.KB_CREATORS == "staff" else f"the group {settings.KB_CREATORS[6:].strip()!r}"
            raise PermissionDenied(
                f"On this site only {who} may create knowledge bases: ask an administrator for one, "
                "or to add you."
            )

    amay_create_knowledge_bases = sync_to_async(may_create_knowledge_bases)
    arequire_may_create_knowledge_bases = sync_to_async(require_may_create_knowledge_bases)
