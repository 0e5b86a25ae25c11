"""What a folder sync needs, per document, through the API: the folder, the path within it and the content hash."""

from __future__ import annotations

import hashlib

import pytest
from asgiref.sync import sync_to_async

from knowledge.services.folder_sync import FolderSync, FolderSyncService
from tests.api.test_api import bearer, client, issue_token
from tests.factories import make_document, make_kb

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

FILES = {
    "tides.txt": b"Tides are the rise and fall of the sea, pulled by the Moon and the Sun.",
    "guides/bread.txt": b"Sourdough rises slowly: the starter is fed with flour and water each day.",
}


@pytest.fixture
def kb(test_user):
    return make_kb(owner=test_user, name="Field notes", slug="field-notes")


@pytest.fixture
def stranger_headers(other_user):
    return bearer(issue_token(other_user))


@pytest.fixture
def synced_folder(kb, tmp_path):
    """A folder synced into the KB (queued only: no document needs indexing to be described)."""
    folder = tmp_path / "notes"
    for name, data in FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    FolderSyncService().sync_folder(request=FolderSync(folder=folder, kb=kb, enqueue=True))
    return folder


async def test_each_document_shows_the_folder_path_and_hash_a_sync_compares(
    kb, synced_folder, reader_headers
):
    response = await client.get(f"/kbs/{kb.id}/documents", headers=reader_headers)

    assert response.status_code == 200
    shown = {body["source_name"]: body for body in response.json()["items"]}
    assert sorted(shown) == sorted(FILES)
    for name, data in FILES.items():
        assert shown[name]["content_hash"] == hashlib.sha256(data).hexdigest()
        assert shown[name]["source_folder"] == str(synced_folder.resolve())
        one = await client.get(f"/kbs/{kb.id}/documents/{shown[name]['id']}", headers=reader_headers)
        assert one.status_code == 200
        assert (one.json()["source_name"], one.json()["content_hash"]) == (name, shown[name]["content_hash"])


async def test_a_file_changed_on_disk_is_told_apart_by_its_hash(kb, synced_folder, reader_headers):
    (synced_folder / "tides.txt").write_bytes(b"Spring tides come at new and full moon.")

    response = await client.get(f"/kbs/{kb.id}/documents", headers=reader_headers)

    on_disk = {name: hashlib.sha256((synced_folder / name).read_bytes()).hexdigest() for name in FILES}
    changed = [
        body["source_name"]
        for body in response.json()["items"]
        if body["content_hash"] != on_disk[body["source_name"]]
    ]
    assert changed == ["tides.txt"]


async def test_a_document_not_synced_from_a_folder_has_an_empty_source_folder(kb, reader_headers):
    document = await sync_to_async(make_document)(kb=kb, title="Typed", text="Typed in, from no folder.")

    response = await client.get(f"/kbs/{kb.id}/documents/{document.id}", headers=reader_headers)

    assert response.status_code == 200
    assert response.json()["source_folder"] == ""
    assert response.json()["content_hash"] == hashlib.sha256(b"Typed in, from no folder.").hexdigest()


async def test_a_stranger_sees_no_synced_document(kb, synced_folder, stranger_headers):
    response = await client.get(f"/kbs/{kb.id}/documents", headers=stranger_headers)

    assert response.status_code == 404
