"""Schemathesis over /api/v1/openapi.json against a real uvicorn server: no 5xx, every answer as the schema says.

The site is seeded through manage.py before the server starts (the embedded Qdrant store admits one
process), every generated request carries an API token, and path parameters are sometimes swapped
for the seeded knowledge base, documents and user so that the fuzzing gets past the 404s.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.factories import CORPUS_DIR
from tests.support.live_server import live_server, manage, site_environment

pytestmark = pytest.mark.api_fuzz

ADMIN = "admin"
SEED = 20_261_128
# Fuzzing cases per operation; the examples and coverage phases add their own, fixed ones.
MAX_EXAMPLES = 25
SEED_FILES = ("honeybees.md", "volcanoes.md", "tides.md")
SCRATCH_FILES = ("sourdough.md",)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# SQLite and PostgreSQL keep LIMIT and OFFSET in signed 64-bit integers.
PAGINATED = {("GET", "/api/v1/kbs"), ("GET", "/api/v1/kbs/{kb_id}/documents")}
BODY_OPERATIONS = [
    ("POST", "/api/v1/kbs"),
    ("PATCH", "/api/v1/kbs/{kb_id}"),
    ("POST", "/api/v1/kbs/{kb_id}/members"),
    ("POST", "/api/v1/kbs/{kb_id}/documents"),
    ("POST", "/api/v1/kbs/{kb_id}/documents/text"),
    ("POST", "/api/v1/search"),
]


# What the fuzzing got back, printed at the end of the module (run with -s): how far it got past the 404s.
STATUSES: Counter[str] = Counter()


@dataclass(frozen=True)
class Site:
    url: str
    token: str
    log: Path
    kb_id: str
    document_ids: tuple[str, ...]
    admin_id: int
    scratch_kb_id: str
    scratch_document_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def _ready_documents(api: httpx.Client, kb_id: str) -> list[str]:
    page = api.get(f"/kbs/{kb_id}/documents", params={"status": "ready"}).raise_for_status().json()
    return sorted(document["id"] for document in page["items"])


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    """A migrated site with an admin, a token, a KB `seed` of three ready documents and a KB `scratch` of one."""
    root = tmp_path_factory.mktemp("api-fuzz")
    with site_environment(
        root / "var", KBSITE_ADMIN_PASSWORD="api-fuzz-password", KBSITE_UPLOAD_RATE_LIMIT="off"
    ) as env:
        yield from _seeded_site(root, env)


def _seeded_site(root, env) -> Iterator[Site]:
    manage("migrate", "--no-input", env=env)
    manage("bootstrap", "--no-demo", "--username", ADMIN, env=env)
    token = manage("create_api_token", ADMIN, "--name", "schemathesis", env=env).strip()
    for slug, names in (("seed", SEED_FILES), ("scratch", SCRATCH_FILES)):
        files = [str(CORPUS_DIR / name) for name in names]
        manage("ingest", *files, "--kb", slug, "--create", "--owner", ADMIN, env=env)

    with live_server(env, root / "server.log") as server:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=f"{server.url}/api/v1", headers=headers, timeout=30) as api:
            kbs = {kb["slug"]: kb["id"] for kb in api.get("/kbs").raise_for_status().json()["items"]}
            documents = _ready_documents(api, kbs["seed"])
            scratch_documents = _ready_documents(api, kbs["scratch"])
            members = api.get(f"/kbs/{kbs['seed']}/members").raise_for_status().json()
        assert len(documents) == len(SEED_FILES) and len(scratch_documents) == len(SCRATCH_FILES)
        yield Site(
            url=server.url,
            token=token,
            log=server.log,
            kb_id=kbs["seed"],
            document_ids=tuple(documents),
            admin_id=next(member["user_id"] for member in members if member["username"] == ADMIN),
            scratch_kb_id=kbs["scratch"],
            scratch_document_id=scratch_documents[0],
        )


def _served_schema(site: Site) -> dict:
    return httpx.get(f"{site.url}/api/v1/openapi.json", timeout=30).raise_for_status().json()


def _real_path_parameters(site: Site, method: str, path: str, generated: Any) -> list[dict[str, Any]]:
    """Path parameters naming seeded objects, for this operation; destructive ones get objects to spare."""
    if not isinstance(generated, dict) or "kb_id" not in generated:
        return []
    if method == "DELETE" and path == "/api/v1/kbs/{kb_id}":
        return [{**generated, "kb_id": site.scratch_kb_id}]
    if "document_id" in generated:
        if method == "DELETE":
            return [{**generated, "kb_id": site.scratch_kb_id, "document_id": site.scratch_document_id}]
        return [{**generated, "kb_id": site.kb_id, "document_id": document} for document in site.document_ids]
    if "user_id" in generated:
        return [{**generated, "kb_id": site.kb_id, "user_id": site.admin_id}]
    return [{**generated, "kb_id": site.kb_id}]


def _deletes_a_seeded_object(site: Site, case) -> bool:
    if case.method.upper() != "DELETE" or not isinstance(case.path_parameters, dict):
        return False
    named = {str(value) for value in case.path_parameters.values()}
    return bool(named & {site.kb_id, *site.document_ids}) and "user_id" not in case.path_parameters


@pytest.fixture(scope="module")
def api_schema(site: Site):
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "base-url": site.url,
            "headers": site.headers,
            "generation": {"mode": "all", "deterministic": True, "max-examples": MAX_EXAMPLES},
        }
    )
    raw = _served_schema(site)
    schema = schemathesis.openapi.from_dict(raw, config=config)

    @schema.hook
    def flatmap_path_parameters(context, path_parameters):
        operation = context.operation
        real = _real_path_parameters(site, operation.method.upper(), operation.path, path_parameters)
        return st.sampled_from([path_parameters, *real])

    @schema.hook
    def flatmap_body(context, body):
        # Searches of the seeded KB, sometimes limited to its documents, reach the embedder and Qdrant.
        if context.operation.path != "/api/v1/search" or not isinstance(body, dict):
            return st.just(body)
        seeded = {**body, "kb_ids": [site.kb_id]}
        return st.sampled_from([body, seeded, {**seeded, "document_ids": list(site.document_ids[:1])}])

    @schema.hook
    def filter_case(context, case):
        # Schemathesis reuses ids it has seen in answers: keep the seeded KB and documents for the rest.
        return not _deletes_a_seeded_object(site, case)

    return schema


@pytest.fixture
def fuzz_report() -> Iterator[None]:
    STATUSES.clear()
    yield
    print(f"\nschemathesis: {STATUSES.total()} requests, by operation and status:")
    for line in sorted(STATUSES):
        print(f"  {STATUSES[line]:5d}  {line}")


@pytest.fixture
def fuzzed_schema(request, api_schema):
    """The schema for schemathesis' lazy parametrisation, which reads the test's `Node._nodeid`.

    pytest 9.2 keeps the node id elsewhere; schemathesis 4.32 only reads the attribute and sets it
    for its reports, so giving it the id back is enough.
    """
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid
    return api_schema


fuzzed = schemathesis.pytest.from_fixture("fuzzed_schema")


def _log_offset(site: Site) -> int:
    return site.log.stat().st_size


def _call_and_validate(case, site: Site, **kwargs: Any):
    """case.call_and_validate with the token and the checks we hold the API to; a failure says what the server logged."""
    start = _log_offset(site)
    try:
        return case.call_and_validate(headers=site.headers, checks=CHECKS, **kwargs)
    except BaseException as exc:
        with site.log.open(encoding="utf-8", errors="replace") as log:
            log.seek(start)
            logged = log.read().strip()
        if logged:
            exc.add_note(f"The server logged:\n{logged}")
        raise


# Explicit cases on the seeded objects: the answers fuzzing reaches only by luck.


def _case(api_schema, method: str, path: str, **parts: Any):
    return api_schema[path][method].Case(**parts)


@pytest.fixture
def expect(api_schema, site: Site):
    """expect(method, path, status, **case parts): one explicit case, validated, answering `status`."""

    def call(method: str, path: str, status: int, **parts: Any):
        response = _call_and_validate(_case(api_schema, method, path, **parts), site)
        assert response.status_code == status, (
            f"{method} {path} {parts}: {response.status_code} {response.text}"
        )
        return response

    return call


KB = "/api/v1/kbs/{kb_id}"
DOCUMENTS = KB + "/documents"
DOCUMENT = DOCUMENTS + "/{document_id}"
MEMBERS = KB + "/members"


def test_the_seeded_knowledge_base_and_its_documents_answer_as_the_schema_says(expect, site):
    kb, document = {"kb_id": site.kb_id}, {"kb_id": site.kb_id, "document_id": site.document_ids[0]}
    expect("GET", "/api/v1/health", 200)
    expect("GET", "/api/v1/kbs", 200, query={"limit": 1, "offset": 1})
    expect("GET", KB, 200, path_parameters=kb)
    expect("GET", KB + "/stats", 200, path_parameters=kb)
    expect("GET", MEMBERS, 200, path_parameters=kb)
    expect("GET", DOCUMENTS, 200, path_parameters=kb, query={"status": "ready"})
    expect("GET", DOCUMENTS, 200, path_parameters=kb, query={"archived": True})
    expect("GET", DOCUMENT, 200, path_parameters=document)
    expect("GET", DOCUMENT + "/chunks", 200, path_parameters=document)
    expect("GET", "/api/v1/search/history", 200, query={"limit": 5})


def test_chunk_pages_follow_their_cursor_to_the_end(expect, site):
    document = {"kb_id": site.kb_id, "document_id": site.document_ids[0]}
    indexes, cursor = [], None
    for _ in range(100):
        query = {"limit": 2} if cursor is None else {"limit": 2, "cursor": cursor}
        page = expect("GET", DOCUMENT + "/chunks", 200, path_parameters=document, query=query).json()
        indexes += [chunk["chunk_index"] for chunk in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert indexes == list(range(len(indexes))) and len(indexes) > 2


@pytest.mark.parametrize("cursor", ["not-a-cursor", "a", "Yzp4"])  # not base64 text; bad base64; "c:x"
def test_a_cursor_this_api_did_not_give_out_is_refused_with_422(expect, site, cursor):
    document = {"kb_id": site.kb_id, "document_id": site.document_ids[0]}
    expect("GET", DOCUMENT + "/chunks", 422, path_parameters=document, query={"cursor": cursor})


def test_searches_of_the_seeded_knowledge_base_answer_as_the_schema_says(expect, site):
    body = {"query": "how do bees tell each other where flowers are", "kb_ids": [site.kb_id], "limit": 3}
    results = expect("POST", "/api/v1/search", 200, body=body).json()["results"]
    assert len(results) == 3 and {result["kb_id"] for result in results} == {site.kb_id}

    only = {**body, "document_ids": [site.document_ids[0]], "include_archived": True}
    results = expect("POST", "/api/v1/search", 200, body=only).json()["results"]
    assert {result["document_id"] for result in results} <= {site.document_ids[0]}

    strict = {**body, "score_threshold": 0.99, "mode": "semantic"}
    results = expect("POST", "/api/v1/search", 200, body=strict).json()["results"]
    assert all(result["score"] >= 0.99 for result in results)

    keyword = {**body, "mode": "keyword"}
    answer = expect("POST", "/api/v1/search", 200, body=keyword).json()
    assert answer["mode"] == "keyword" and all(result["highlights"] for result in answer["results"])


def test_changes_to_the_seeded_objects_answer_as_the_schema_says(expect, site):
    kb = {"kb_id": site.kb_id}
    document = {"kb_id": site.kb_id, "document_id": site.document_ids[-1]}
    expect("PATCH", KB, 200, path_parameters=kb, body={"description": "Seeded."})
    expect("PATCH", KB, 422, path_parameters=kb, body={"chunk_size": 10, "chunk_overlap": 20})
    expect("POST", MEMBERS, 200, path_parameters=kb, body={"username": ADMIN, "role": "owner"})
    expect("POST", MEMBERS, 422, path_parameters=kb, body={"username": "nobody"})
    # The KB's last owner cannot be removed.
    expect("DELETE", MEMBERS + "/{user_id}", 422, path_parameters={**kb, "user_id": site.admin_id})
    expect("POST", DOCUMENT + "/archive", 200, path_parameters=document)
    expect("POST", DOCUMENT + "/unarchive", 200, path_parameters=document)
    expect("POST", DOCUMENT + "/reindex", 202, path_parameters=document)


def test_a_knowledge_base_made_and_removed_through_the_api_answers_as_the_schema_says(expect):
    body = {"name": "Explicit case", "slug": "explicit-case"}
    kb = {"kb_id": expect("POST", "/api/v1/kbs", 201, body=body).json()["id"]}
    expect("POST", "/api/v1/kbs", 409, body=body)
    text = {"title": "Tide tables", "text": "High water comes about fifty minutes later each day."}
    uploaded = expect("POST", DOCUMENTS + "/text", 202, path_parameters=kb, body=text)
    expect("POST", DOCUMENTS + "/text", 409, path_parameters=kb, body=text)
    document = {**kb, "document_id": uploaded.json()["id"]}
    expect("GET", DOCUMENT, 200, path_parameters=document)
    expect("DELETE", DOCUMENT, 204, path_parameters=document)
    expect("GET", DOCUMENT, 404, path_parameters=document)
    expect("DELETE", KB, 204, path_parameters=kb)
    expect("GET", KB, 404, path_parameters=kb)


def test_a_file_upload_answers_as_the_schema_says(api_schema, site):
    case = _case(
        api_schema,
        "POST",
        DOCUMENTS,
        path_parameters={"kb_id": site.kb_id},
        media_type="multipart/form-data",
        body={"title": "Jazz"},
    )
    files = {"file": ("jazz.md", (CORPUS_DIR / "jazz.md").read_bytes(), "text/markdown")}
    response = _call_and_validate(case, site, files=files)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == [response.json()["url"]]


def test_a_chunk_preview_answers_as_the_schema_says(api_schema, site):
    case = _case(
        api_schema,
        "POST",
        KB + "/chunk-preview",
        path_parameters={"kb_id": site.kb_id},
        media_type="multipart/form-data",
        body={"chunk_size": 32, "chunk_overlap": 4},
    )
    # Given files, the request carries no other body: the form fields go as parts without a file name.
    files = {
        "file": ("jazz.md", (CORPUS_DIR / "jazz.md").read_bytes(), "text/markdown"),
        "chunk_size": (None, "32"),
        "chunk_overlap": (None, "4"),
    }
    response = _call_and_validate(case, site, files=files)
    assert response.status_code == 200, response.text
    assert response.json()["chunk_count"] > 1 and response.json()["chunk_size"] == 32


# Defects the fuzzing once found, kept as regression tests.


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_every_reference_in_the_schema_resolves(site):
    raw = _served_schema(site)
    components = raw.get("components", {}).get("schemas", {})
    prefix = "#/components/schemas/"
    dangling = sorted(
        {ref for ref in _refs(raw) if ref.startswith(prefix) and ref[len(prefix) :] not in components}
    )
    assert dangling == []


@pytest.mark.parametrize("path", sorted(path for _, path in PAGINATED))
@pytest.mark.parametrize("bound", ["offset", "limit"])
def test_a_page_past_64_bit_integers_is_refused_with_422(api_schema, site, path, bound):
    parameters = {"kb_id": site.kb_id} if "{kb_id}" in path else {}
    case = _case(api_schema, "GET", path, path_parameters=parameters, query={bound: 2**64})
    response = case.call(headers=site.headers)
    assert response.status_code == 422, response.text


@pytest.mark.parametrize(("method", "path"), BODY_OPERATIONS)
def test_a_body_that_is_not_json_gets_a_documented_status(site, method, path):
    url = site.url + path.format(kb_id=site.kb_id)
    headers = {**site.headers, "Content-Type": "application/json"}
    response = httpx.request(method, url, content=b"\x00", headers=headers, timeout=30)
    documented = _served_schema(site)["paths"][path][method.lower()]["responses"]
    assert str(response.status_code) in documented, json.dumps(response.json())


@pytest.mark.parametrize("body", [b"5", b'"text"', b"[null, null]", b"true"])
def test_a_patch_that_is_not_an_object_is_refused_with_422(site, body):
    url = f"{site.url}/api/v1/kbs/{site.kb_id}"
    headers = {**site.headers, "Content-Type": "application/json"}
    response = httpx.patch(url, content=body, headers=headers, timeout=30)
    assert response.status_code == 422, response.text


# The fuzzing last: it leaves the site in whatever state its cases put it.


@fuzzed.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_its_schema_says(case, site, fuzz_report):
    response = _call_and_validate(case, site)
    operation = f"{case.operation.method.upper()} {case.operation.path}"
    STATUSES[f"{operation} {response.status_code}"] += 1
