"""The members' pages in a real browser: a reader searches and reads, an editor uploads, an outsider sees nothing.

Every page is checked with axe-core (vendored in tests/browser/axe, MPL-2.0) and photographed at a
phone's and a laptop's width; the screenshots' folder is printed (`-s` shows it).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.conftest import Server
from tests.factories import CORPUS_DIR
from tests.support.live_server import live_server, manage, site_environment

pytestmark = pytest.mark.browser

AXE = Path(__file__).resolve().parent / "axe" / "axe.min.js"
WIDTHS = (375, 1280)
BLOCKING_IMPACTS = {"serious", "critical"}
# The in-process worker loads the model on its first document: allow for that, not for a stuck queue.
INDEXING_TIMEOUT_MS = 45_000
PASSWORD = "members-pages-password"
TWO_KB_QUERY = "honeybee colony sourdough starter"
BEE_TITLE = "How a Honeybee Colony Works"

# Users and two KBs made before the server starts: the embedded store admits one process at a time.
SEED = f"""
from django.contrib.auth import get_user_model
from knowledge.models import Membership, Role
from knowledge.services.knowledge_bases import KnowledgeBaseService
users = {{name: get_user_model().objects.create_user(username=name, password={PASSWORD!r})
         for name in ("owner", "reader", "editor", "outsider")}}
kbs = KnowledgeBaseService()
nature = kbs.create_knowledge_base(name="Nature notes", slug="nature", owner=users["owner"])
kitchen = kbs.create_knowledge_base(name="Kitchen notes", slug="kitchen", owner=users["owner"])
for kb in (nature, kitchen):
    Membership.objects.create(knowledge_base=kb, user=users["reader"], role=Role.READER)
Membership.objects.create(knowledge_base=nature, user=users["editor"], role=Role.EDITOR)
"""


@pytest.fixture(scope="module")
def members_site(tmp_path_factory) -> Iterator[Server]:
    """uvicorn serving a site with two indexed KBs, a reader of both, an editor of one and an outsider."""
    root = tmp_path_factory.mktemp("members-site")
    with site_environment(root / "var") as env:
        manage("migrate", "--no-input", env=env)
        manage("shell", "-c", SEED, env=env)
        manage(
            "ingest",
            str(CORPUS_DIR / "honeybees.md"),
            str(CORPUS_DIR / "volcanoes.md"),
            "--kb",
            "nature",
            env=env,
        )
        manage("ingest", str(CORPUS_DIR / "sourdough.md"), "--kb", "kitchen", env=env)
        with live_server(env, root / "server.log") as server:
            yield Server(url=server.url, username="reader", password=PASSWORD)


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("screenshots")
    print(f"\nscreenshots of the members' pages: {folder}")
    return folder


@pytest.fixture(scope="module")
def axe_report() -> Iterator[dict]:
    """Every page's axe violations of any impact, printed at the end for the reviewer."""
    report: dict[str, list[str]] = {}
    yield report
    print("\naxe-core violations by page (none serious or critical, or the test failed):")
    print(json.dumps(report, indent=2))


def check_page(page, name: str, screenshots: Path, axe_report: dict) -> None:
    """Run axe-core on the page, fail on serious or critical violations; photograph it at both widths."""
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        path = screenshots / f"{name}-{width}.png"
        page.screenshot(path=path, full_page=True)
        # The first screenful as well: a phone's full page is too tall to look at whole.
        page.screenshot(path=screenshots / f"{name}-{width}-top.png")
        print(path)
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("axe.run()")
    axe_report[name] = [f"{v['id']} ({v['impact']}): {len(v['nodes'])} nodes" for v in result["violations"]]
    blocking = [v for v in result["violations"] if v["impact"] in BLOCKING_IMPACTS]
    assert not blocking, json.dumps(
        [{"id": v["id"], "impact": v["impact"], "nodes": [n["html"] for n in v["nodes"]]} for v in blocking],
        indent=2,
    )


def sign_in(page, site: Server, username: str) -> None:
    page.goto(f"{site.url}/")
    assert page.url.startswith(f"{site.url}/accounts/login/")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{site.url}/search/")


def test_a_reader_searches_two_kbs_and_reads_the_passage_found(page, members_site, screenshots, axe_report):
    from playwright.sync_api import expect

    page.goto(f"{members_site.url}/accounts/login/")
    check_page(page, "login", screenshots, axe_report)
    sign_in(page, members_site, "reader")

    # The keyboard first meets the skip link, which leads into the page's main content.
    page.keyboard.press("Tab")
    expect(page.locator(".skip-link")).to_be_focused()

    page.get_by_label("Nature notes").check()
    page.get_by_label("Kitchen notes").check()
    expect(page.get_by_label("Search mode")).to_have_value("hybrid")
    page.get_by_label("Search for").fill(TWO_KB_QUERY)
    page.get_by_label("Search for").press("Enter")

    results = page.locator("#search-results li.result")
    expect(results.first).to_be_visible()
    expect(results.filter(has_text="Nature notes").first).to_be_visible()
    expect(results.filter(has_text="Kitchen notes").first).to_be_visible()
    expect(results.locator("mark").first).to_be_visible()
    expect(results.first.locator(".score")).to_have_text(re.compile(r"^\d+\.\d{3}$"))
    check_page(page, "search-results", screenshots, axe_report)

    page.set_viewport_size({"width": 1280, "height": 900})
    results.filter(has_text=BEE_TITLE).first.get_by_role("link", name=BEE_TITLE).click()
    hit = page.locator("#hit")  # the passage found, each of its lines marked
    expect(hit.locator("mark").first).to_be_visible()
    expect(hit).to_be_in_viewport()
    expect(page.locator(".document-meta")).to_contain_text("Nature notes")
    expect(page.locator(".document-meta")).to_contain_text("Ready")
    check_page(page, "document", screenshots, axe_report)

    page.get_by_role("link", name="Back to the results").click()
    expect(page.get_by_label("Search for")).to_have_value(TWO_KB_QUERY)


def test_a_reader_asks_for_one_result_per_document_and_opens_its_further_passages(
    page, members_site, screenshots, axe_report
):
    from playwright.sync_api import expect

    sign_in(page, members_site, "reader")
    page.get_by_label("One result per document").check()
    page.get_by_label("Search for").fill(TWO_KB_QUERY)
    page.get_by_label("Search for").press("Enter")

    results = page.locator("#search-results li.result")
    expect(results.first).to_be_visible()
    titles = [title.strip() for title in results.locator("h3").all_inner_texts()]
    assert len(titles) == len(set(titles)) > 1
    further = results.first.locator("details.further-passages")
    further.locator("> summary").click()  # its own summary, not the Details toggles of the passages inside
    expect(further.locator(".passage").first).to_be_visible()
    expect(page.get_by_label("One result per document")).to_be_checked()
    check_page(page, "search-per-document", screenshots, axe_report)


def test_an_editor_uploads_two_files_and_sees_them_become_ready(
    page, members_site, tmp_path, screenshots, axe_report
):
    from playwright.sync_api import expect

    files = [shutil.copy(CORPUS_DIR / name, tmp_path / name) for name in ("tides.md", "jazz.md")]
    sign_in(page, members_site, "editor")
    page.get_by_role("link", name="My knowledge bases").click()
    expect(page.get_by_label("Knowledge base")).to_have_value(re.compile(".+"))
    page.get_by_label("Files").set_input_files(files)
    page.get_by_role("button", name="Upload").click()
    expect(page.locator(".messages")).to_contain_text("Queued 2 documents in Nature notes")

    rows = page.locator("#documents tbody tr")
    # The status list refreshes itself while documents are pending or processing.
    for name in ("tides", "jazz"):
        row = rows.filter(has=page.locator("th", has_text=re.compile(name, re.I)))
        expect(row.locator("td.status")).to_contain_text("Ready", timeout=INDEXING_TIMEOUT_MS)
    check_page(page, "knowledge-bases", screenshots, axe_report)

    page.get_by_role("button", name=re.compile(f"^Archive {BEE_TITLE}")).click()
    expect(page.locator(".messages")).to_contain_text(f"{BEE_TITLE} is archived")
    page.get_by_role("button", name=re.compile(f"^Unarchive {BEE_TITLE}")).click()
    expect(page.locator(".messages")).to_contain_text(f"{BEE_TITLE} is back in searches")


def test_an_outsider_sees_no_kb_and_no_document(page, members_site, screenshots, axe_report):
    from playwright.sync_api import expect

    sign_in(page, members_site, "reader")
    page.get_by_label("Search for").fill(TWO_KB_QUERY)
    page.get_by_label("Search for").press("Enter")
    page.locator("#search-results h3 a").first.click()
    document_url = page.url
    page.get_by_role("button", name=re.compile("^Sign out")).click()
    page.wait_for_url(re.compile(r"/accounts/login/$"))

    sign_in(page, members_site, "outsider")
    expect(page.locator("main")).to_contain_text("You may read no knowledge base yet")
    page.get_by_label("Search for").fill(TWO_KB_QUERY)
    page.get_by_label("Search for").press("Enter")
    expect(page.locator("main")).to_contain_text("You may read no knowledge base yet")
    expect(page.locator("#search-results h3")).to_have_count(0)
    check_page(page, "outsider-search", screenshots, axe_report)
    page.goto(f"{members_site.url}/kbs/")
    expect(page.locator("main")).not_to_contain_text("Nature notes")
    expect(page.locator("main")).not_to_contain_text("Kitchen notes")

    response = page.goto(document_url)
    assert response.status == 404
    expect(page.locator("body")).not_to_contain_text(BEE_TITLE)
