"""Running a knowledge base in a real browser: create one, work through its documents, its members, its settings.

Each page is checked with axe-core and photographed at 375 and 1,280 px like the members' pages
(tests/browser/test_search_pages.py); the screenshots' folder is printed (`-s` shows it).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.conftest import Server
from tests.browser.test_search_pages import check_page as check_and_photograph
from tests.factories import CORPUS_DIR
from tests.support.live_server import live_server, manage, site_environment

pytestmark = pytest.mark.browser

# The in-process worker loads the model on its first document: allow for that, not for a stuck queue.
INDEXING_TIMEOUT_MS = 45_000
PASSWORD = "owner-pages-password"
BEE_TITLE = "How a Honeybee Colony Works"
BROKEN_TITLE = "Field notebook"

# Made before the server starts: the embedded store admits one process at a time. "Field notebook"
# stands for a document whose reading failed; retried, the worker indexes its text.
SEED = f"""
from django.contrib.auth import get_user_model
from knowledge.models import Document, DocumentStatus, Membership, Role
from knowledge.services.documents import DocumentService
from knowledge.services.knowledge_bases import KnowledgeBaseService
users = {{name: get_user_model().objects.create_user(username=name, password={PASSWORD!r}, email=name + "@example.org")
         for name in ("owner", "editor", "reader", "newcomer", "colleague")}}
kbs = KnowledgeBaseService()
nature = kbs.create_knowledge_base(name="Nature notes", slug="nature", owner=users["owner"], description="Plants, animals and the weather.")
kbs.create_knowledge_base(name="Kitchen notes", slug="kitchen", owner=users["owner"])
kbs.create_knowledge_base(name="Scratch notes", slug="scratch", owner=users["owner"])
Membership.objects.create(knowledge_base=nature, user=users["editor"], role=Role.EDITOR)
Membership.objects.create(knowledge_base=nature, user=users["reader"], role=Role.READER)
broken = DocumentService().add_text_document(
    kb=nature, title={BROKEN_TITLE!r}, text="Swallows fly low before rain: the insects they eat fly low then.",
    source_name="notebook.txt", tags=["birds"]).document
Document.objects.filter(pk=broken.pk).update(status=DocumentStatus.FAILED, attempts=5,
    error="The file could not be read: it is damaged. Upload it again.")
"""


@pytest.fixture(scope="module")
def owners_site(tmp_path_factory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("owners-site")
    with site_environment(root / "var") as env:
        manage("migrate", "--no-input", env=env)
        manage("shell", "-c", SEED, env=env)
        manage("ingest", str(CORPUS_DIR / "honeybees.md"), "--kb", "nature", "--tag", "insects", env=env)
        with live_server(env, root / "server.log") as server:
            yield Server(url=server.url, username="owner", password=PASSWORD)


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("screenshots")
    print(f"\nscreenshots of the owners' pages: {folder}")
    return folder


@pytest.fixture(scope="module")
def axe_report() -> dict:
    return {}


def check_page(page, name: str, screenshots: Path, axe_report: dict) -> None:
    """The members' pages' check (axe-core, both widths), and stricter: no violation of any impact."""
    check_and_photograph(page, name, screenshots, axe_report)
    assert axe_report[name] == [], axe_report[name]


def sign_in(page, site: Server, username: str) -> None:
    page.goto(f"{site.url}/accounts/login/")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Password").press("Enter")
    page.wait_for_url(f"{site.url}/search/")


def open_kb(page, name: str) -> None:
    page.get_by_role("link", name="My knowledge bases").click()
    page.get_by_role("link", name=name, exact=True).click()
    page.get_by_role("heading", level=1, name=re.compile(name)).wait_for()


def test_a_newcomer_creates_a_knowledge_base_with_the_keyboard(page, owners_site, screenshots, axe_report):
    from playwright.sync_api import expect

    sign_in(page, owners_site, "newcomer")
    page.get_by_role("link", name="My knowledge bases").click()
    expect(page.locator("main")).to_contain_text("or create one")
    page.get_by_role("link", name="New knowledge base").click()
    expect(page.get_by_label("Chunk size (tokens)")).to_have_value("200")
    expect(page.get_by_label("Chunk size (tokens)")).to_have_accessible_description(
        re.compile("The default, 200")
    )

    page.get_by_label("Name").fill("Team handbook")
    page.get_by_label("Chunk overlap (tokens)").fill("300")
    page.get_by_label("Chunk overlap (tokens)").press("Enter")
    expect(page.get_by_role("alert")).to_contain_text("below the chunk size (200)")
    check_page(page, "kb-new", screenshots, axe_report)

    page.get_by_label("Chunk overlap (tokens)").fill("40")
    page.get_by_label("Description").fill("How our team works: on-call, reviews, holidays.")
    page.get_by_role("button", name="Create knowledge base").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Team handbook")
    expect(page.locator("#messages")).to_contain_text("Team handbook is yours")
    expect(page.locator("h1 .role-badge")).to_have_text("you are owner")
    expect(page.locator("main")).to_contain_text("No documents yet")
    check_page(page, "kb-empty", screenshots, axe_report)


def test_an_editor_retries_filters_labels_archives_and_deletes_documents(
    page, owners_site, screenshots, axe_report
):
    from playwright.sync_api import expect

    sign_in(page, owners_site, "editor")
    open_kb(page, "Nature notes")
    documents = page.locator("li.doc")
    expect(documents).to_have_count(2)
    broken = documents.filter(has_text=BROKEN_TITLE)
    expect(broken.locator(".reason")).to_contain_text("it is damaged")
    check_page(page, "kb-documents", screenshots, axe_report)

    page.get_by_label("Status").select_option("failed")
    page.get_by_role("button", name="Filter").click()
    expect(documents).to_have_count(1)
    page.get_by_role("button", name=f"Retry {BROKEN_TITLE}").click()
    expect(page.locator("#messages")).to_contain_text(f"{BROKEN_TITLE} is queued again")
    expect(page.locator("#messages")).to_be_in_viewport()
    # Still filtered by "failed": the retried document leaves the list, then shows Ready unfiltered.
    expect(page.get_by_label("Status")).to_have_value("failed")
    page.get_by_role("link", name="Show all").click()
    expect(documents.filter(has_text=BROKEN_TITLE).locator(".status")).to_contain_text(
        "Ready", timeout=INDEXING_TIMEOUT_MS
    )

    page.get_by_role("link", name="insects").first.click()
    expect(documents).to_have_count(1)
    expect(documents.first).to_contain_text(BEE_TITLE)
    page.get_by_role("link", name=f"Edit labels of {BEE_TITLE}").click()
    expect(page.get_by_label("Tags")).to_have_value("insects")
    page.get_by_label("Tags").fill("insects, farming")
    page.get_by_label("Metadata").fill("year=2021\nreviewed=true")
    check_page(page, "document-labels", screenshots, axe_report)
    page.get_by_role("button", name="Save labels").click()
    expect(page.locator("#messages")).to_contain_text("tags and metadata saved")
    bee = documents.filter(has_text=BEE_TITLE)
    expect(bee.locator(".tags")).to_contain_text("farming")
    expect(bee.locator(".metadata")).to_contain_text("reviewed = True")

    bee.get_by_role("button", name=f"Archive {BEE_TITLE}").click()
    expect(page.locator("#messages")).to_contain_text(f"{BEE_TITLE} is archived")
    expect(bee.locator(".status")).to_contain_text("archived")
    bee.get_by_role("button", name=f"Restore {BEE_TITLE}").click()
    expect(page.locator("#messages")).to_contain_text(f"{BEE_TITLE} is back in searches")

    page.get_by_role("link", name="Show all").click()
    documents.filter(has_text=BROKEN_TITLE).get_by_role("link", name=f"Delete {BROKEN_TITLE}").click()
    expect(page.locator("main")).to_contain_text("cannot be undone")
    expect(page.locator("main")).to_contain_text("indexed passage")
    check_page(page, "document-delete", screenshots, axe_report)
    page.get_by_role("button", name=f"Delete {BROKEN_TITLE}").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#messages")).to_contain_text(f"{BROKEN_TITLE} is deleted")
    expect(documents).to_have_count(1)


def test_an_owner_adds_changes_and_removes_members_but_cannot_leave_as_the_last_owner(
    page, owners_site, screenshots, axe_report
):
    from playwright.sync_api import expect

    sign_in(page, owners_site, "owner")
    open_kb(page, "Kitchen notes")
    page.get_by_role("navigation", name="Kitchen notes").get_by_role("link", name="Members").click()
    page.get_by_label("User name or e-mail").fill("nobody@example.org")
    page.get_by_label("User name or e-mail").press("Enter")
    expect(page.get_by_label("User name or e-mail")).to_have_accessible_description(
        re.compile("no active user")
    )

    page.get_by_label("User name or e-mail").fill("colleague@example.org")
    page.get_by_label("Role", exact=True).select_option("editor")
    page.get_by_role("button", name="Add member").click()
    expect(page.locator("#messages")).to_contain_text("colleague is now editor of Kitchen notes")
    page.get_by_label("Role of colleague").select_option("owner")
    page.get_by_role("button", name="Change role of colleague").click()
    expect(page.locator("#messages")).to_contain_text("colleague is now owner")
    expect(page.get_by_label("Role of colleague")).to_have_value("owner")
    check_page(page, "kb-members", screenshots, axe_report)

    page.get_by_role("button", name="Remove colleague").click()
    expect(page.locator("#messages")).to_contain_text("removed")
    expect(page.locator(".member-list")).not_to_contain_text("colleague")
    page.get_by_role("button", name="Leave").click()
    expect(page.locator("#messages")).to_contain_text(
        "owner is the last owner of 'Kitchen notes': add another owner first."
    )
    expect(page.locator(".member-list")).to_contain_text("owner")


def test_an_owner_rechunks_watching_the_progress_and_deletes_a_kb_by_typing_its_name(
    page, owners_site, screenshots, axe_report
):
    from playwright.sync_api import expect

    sign_in(page, owners_site, "owner")
    open_kb(page, "Nature notes")
    page.get_by_role("link", name="Settings").click()
    page.get_by_label("Chunk size (tokens)").fill("48")
    page.get_by_label("Chunk overlap (tokens)").fill("8")
    page.get_by_role("button", name="Save settings").click()
    expect(page.locator("#messages")).to_contain_text("being chunked again")
    # The progress bar shows while the worker chunks them again, then gives way to "indexed".
    expect(page.locator("#indexing")).to_contain_text(
        "Every document is indexed", timeout=INDEXING_TIMEOUT_MS
    )
    check_page(page, "kb-settings", screenshots, axe_report)

    page.goto(f"{owners_site.url}/kbs/")
    page.get_by_role("link", name="Scratch notes", exact=True).click()
    page.get_by_role("link", name="Settings").click()
    field = page.get_by_label("Type the knowledge base's name to confirm")
    field.fill("scratch notes")
    page.get_by_role("button", name="Delete Scratch notes").click()
    expect(field).to_have_accessible_description(re.compile("exactly"))
    field.fill("Scratch notes")
    field.press("Enter")
    expect(page.locator("#messages")).to_contain_text("Scratch notes is deleted")
    expect(page.locator("#kb-counts")).not_to_contain_text("Scratch notes")


def test_the_upload_page_remembers_the_kb_shows_real_roles_keeps_refusals_in_view_and_refreshes_counts(
    page, owners_site, tmp_path, screenshots, axe_report
):
    from playwright.sync_api import expect

    sign_in(page, owners_site, "owner")
    page.get_by_role("link", name="My knowledge bases").click()
    counts = page.locator("#kb-counts tbody tr")
    expect(counts.filter(has_text="Kitchen notes").locator(".role")).to_have_text("owner")

    tides = shutil.copy(CORPUS_DIR / "tides.md", tmp_path / "tides.md")
    page.get_by_label("Knowledge base").select_option(label="Kitchen notes")
    page.get_by_label("Files").set_input_files(tides)
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#messages")).to_contain_text("Queued 1 document in Kitchen notes")
    # The menu keeps the KB last uploaded to, not the first by name.
    expect(page.get_by_label("Knowledge base")).to_have_value(re.compile(".+"))
    expect(page.get_by_label("Knowledge base").locator("option:checked")).to_have_text("Kitchen notes")
    kitchen = counts.filter(has_text="Kitchen notes")
    # Without a reload: the counts refresh with the list of documents.
    expect(kitchen.locator("td").nth(1)).to_have_text("1", timeout=INDEXING_TIMEOUT_MS)
    expect(kitchen.locator("td").nth(2)).to_have_text("0")

    page.get_by_label("Files").set_input_files(tides)
    page.get_by_role("button", name="Upload").click()
    refusal = page.locator("#messages")
    expect(refusal).to_contain_text("it was not added again")
    expect(refusal).to_be_in_viewport()
    check_page(page, "knowledge-bases-owner", screenshots, axe_report)
