"""An administrator's first session in a real browser: log in, make a KB, upload, wait, search, archive."""

from __future__ import annotations

import re
import shutil

import pytest

from tests.factories import CORPUS_DIR

pytestmark = pytest.mark.browser

BEE_TITLE = "How a Honeybee Colony Works"
VOLCANO_TITLE = "How Volcanoes Form and Erupt"
BEE_QUERY = "how does a forager tell the others where the flowers are"
# The in-process worker loads the model on its first document: allow for that, not for a stuck queue.
INDEXING_TIMEOUT_MS = 45_000


def search_results(page):
    return page.locator("#search-results tbody tr")


def search(page, kb_url: str, query: str, *, include_archived: bool = False) -> None:
    page.goto(kb_url)
    page.fill("#id_q", query)
    page.set_checked("#id_include_archived", include_archived)
    page.click("#kb-search input[type=submit]")


def test_an_uploaded_file_becomes_searchable_and_archiving_hides_it(page, kbsite_server, tmp_path):
    # Imported here: without Playwright the page fixture fails first, saying how to install it.
    from playwright.sync_api import expect

    files = [shutil.copy(CORPUS_DIR / name, tmp_path / name) for name in ("honeybees.md", "volcanoes.md")]

    page.goto(f"{kbsite_server.url}/admin/")
    page.fill("#id_username", kbsite_server.username)
    page.fill("#id_password", kbsite_server.password)
    page.click("input[type=submit]")
    expect(page.locator("#site-name")).to_be_visible()

    page.goto(f"{kbsite_server.url}/admin/knowledge/knowledgebase/add/")
    page.locator("#id_name").press_sequentially("Field notes")
    expect(page.locator("#id_slug")).to_have_value("field-notes")
    page.click("input[name=_save]")
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")

    page.click("#result_list a:text-is('Field notes')")
    kb_url = page.url
    page.click(".object-tools a:text-is('Upload documents')")
    expect(page.locator("#id_knowledge_base option:checked")).to_have_text("Field notes")
    page.set_input_files("#id_files", files)
    page.click("#upload-form input[type=submit]")
    expect(page.locator(".messagelist")).to_contain_text("Queued 2 documents in Field notes")

    # The list reloads itself every 3 s while documents are pending or processing.
    statuses = page.locator("#result_list td.field-status_label")
    expect(statuses).to_have_text(["Ready", "Ready"], timeout=INDEXING_TIMEOUT_MS)
    documents_url = page.url

    search(page, kb_url, BEE_QUERY)
    expect(search_results(page).first.locator("td").nth(2)).to_have_text(BEE_TITLE)
    expect(search_results(page).first.locator("td").nth(1)).to_have_text(re.compile(r"^(0\.\d{3}|1\.000)$"))

    page.goto(documents_url)
    page.locator("#result_list tr", has_text=BEE_TITLE).locator("input.action-select").check()
    page.select_option("select[name=action]", "archive")
    page.click("button[name=index]")
    expect(page.locator(".messagelist")).to_contain_text("Archived 1 document;")

    search(page, kb_url, BEE_QUERY)
    expect(search_results(page).first).to_contain_text(VOLCANO_TITLE)
    expect(search_results(page).filter(has_text=BEE_TITLE)).to_have_count(0)

    search(page, kb_url, BEE_QUERY, include_archived=True)
    expect(search_results(page).first.locator("td").nth(2)).to_have_text(BEE_TITLE)
