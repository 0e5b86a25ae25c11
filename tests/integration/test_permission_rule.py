"""The read rule is written three ways (a queryset, one SQL statement, a role); all three must agree."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from knowledge.models import KnowledgeBase, Role
from knowledge.services.permissions import PermissionService
from tests.factories import add_member, make_kb, make_user

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def people_and_kbs():
    owner = make_user(username="owner")
    people = {
        "superuser": make_user(username="root", superuser=True),
        "owner field": owner,
        "owner member": make_user(username="co-owner"),
        "editor": make_user(username="editor"),
        "reader": make_user(username="reader"),
        "outsider": make_user(username="outsider"),
        "inactive reader": make_user(username="gone", is_active=False),
    }
    kb = make_kb(owner=owner, name="Guarded")
    add_member(kb, people["owner member"], Role.OWNER)
    add_member(kb, people["editor"], Role.EDITOR)
    add_member(kb, people["reader"], Role.READER)
    add_member(kb, people["inactive reader"], Role.READER)
    ownerless = KnowledgeBase.objects.create(
        name="Ownerless", slug="ownerless", owner=None, embedding_model=kb.embedding_model, vector_size=384
    )
    add_member(ownerless, people["reader"], Role.READER)
    return people, [kb, ownerless]


EXPECTED = {
    "superuser": {"Guarded", "Ownerless"},
    "owner field": {"Guarded"},
    "owner member": {"Guarded"},
    "editor": {"Guarded"},
    "reader": {"Guarded", "Ownerless"},
    "outsider": set(),
    "inactive reader": set(),
}


@pytest.mark.parametrize("who", list(EXPECTED))
async def test_the_three_ways_of_the_read_rule_agree(people_and_kbs, who) -> None:
    people, kbs = people_and_kbs
    user, service = people[who], PermissionService()

    listed = {kb.name async for kb in service.knowledge_bases_for(user)}
    by_role = {kb.name for kb in kbs if await service.arole_for(user=user, kb=kb) is not None}
    if user.is_active:
        searchable = {
            kb.name for kb in await service.readable_knowledge_bases(user_id=user.pk, kb_ids=[kb.pk for kb in kbs])
        }
    else:
        searchable = set()

    assert listed == by_role == searchable == EXPECTED[who]


async def test_an_inactive_user_cannot_search_at_all(people_and_kbs) -> None:
    from search.errors import UnknownUser

    people, kbs = people_and_kbs

    with pytest.raises(UnknownUser):
        await PermissionService().readable_knowledge_bases(user_id=people["inactive reader"].pk, kb_ids=[kbs[0].pk])


async def test_roles_rank_as_documented(people_and_kbs) -> None:
    people, kbs = people_and_kbs
    service = PermissionService()

    roles = {who: await service.arole_for(user=people[who], kb=kbs[0]) for who in EXPECTED}

    assert roles == {
        "superuser": Role.OWNER,
        "owner field": Role.OWNER,
        "owner member": Role.OWNER,
        "editor": Role.EDITOR,
        "reader": Role.READER,
        "outsider": None,
        "inactive reader": None,
    }
    writable = {kb.name async for kb in service.knowledge_bases_for(people["editor"], least=Role.EDITOR)}
    assert writable == {"Guarded"}
    assert not await sync_to_async(service.knowledge_bases_for(people["reader"], least=Role.EDITOR).exists)()


@pytest.mark.parametrize("who", list(EXPECTED))
async def test_getting_a_kb_answers_the_same_from_sync_and_async_code(people_and_kbs, who) -> None:
    from knowledge.errors import KnowledgeBaseNotFound, PermissionDenied

    people, kbs = people_and_kbs
    user, service, kb = people[who], PermissionService(), kbs[0]

    def outcome(get, least):
        try:
            return get(user=user, kb_id=kb.slug, least=least).name
        except (KnowledgeBaseNotFound, PermissionDenied) as exc:
            return type(exc).__name__

    async def aoutcome(least):
        try:
            return (await service.aget_knowledge_base(user=user, kb_id=kb.slug, least=least)).name
        except (KnowledgeBaseNotFound, PermissionDenied) as exc:
            return type(exc).__name__

    for least in (Role.READER, Role.EDITOR):
        sync_answer = await sync_to_async(outcome)(service.get_knowledge_base, least)
        assert sync_answer == await aoutcome(least)
        if "Guarded" not in EXPECTED[who]:
            assert sync_answer == "KnowledgeBaseNotFound"
        elif least == Role.EDITOR and who == "reader":
            assert sync_answer == "PermissionDenied"
        else:
            assert sync_answer == "Guarded"


async def test_concurrent_searches_ask_the_database_once_per_distinct_question(people_and_kbs, monkeypatch) -> None:
    """A burst shares one trip to the database thread; each search still gets its own user's answer."""
    import asyncio

    from search.errors import UnknownUser

    people, kbs = people_and_kbs
    service, asked, trips = PermissionService(), [], []
    real_lookup, real_answers = PermissionService._readable_knowledge_bases, PermissionService._answers

    def counting_lookup(user_id, kb_ids):
        asked.append(user_id)
        return real_lookup(user_id, kb_ids)

    def counting_answers(self, questions):
        trips.append(len(questions))
        return real_answers(self, questions)

    monkeypatch.setattr(PermissionService, "_readable_knowledge_bases", staticmethod(counting_lookup))
    monkeypatch.setattr(PermissionService, "_answers", counting_answers)
    kb_ids = [kb.pk for kb in kbs]
    who = ["reader", "editor", "outsider"] * 20 + ["inactive reader"]

    answers = await asyncio.gather(
        *(service.readable_knowledge_bases(user_id=people[name].pk, kb_ids=kb_ids) for name in who),
        return_exceptions=True,
    )

    assert trips == [4] and sorted(asked) == sorted(people[name].pk for name in set(who))
    for name, answer in zip(who, answers):
        if name == "inactive reader":
            assert isinstance(answer, UnknownUser)
        else:
            assert {kb.name for kb in answer} == EXPECTED[name]
    # Asked again later, the database answers again: nothing is remembered between trips.
    await service.readable_knowledge_bases(user_id=people["reader"].pk, kb_ids=kb_ids)
    assert trips == [4, 1]
