"""The project's one NinjaAPI at /api/v1/: the apps' routers, who may call them, and one JSON error shape."""

from __future__ import annotations

import json
import logging

from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, Throttled, ValidationError
from ninja.operation import Operation

from knowledge import errors as knowledge_errors
from knowledge.api import health as health_router
from knowledge.api import router as knowledge_router
from knowledge.auth import SessionAuth, TokenAuth
from knowledge.ingestion.extraction import ExtractionError
from knowledge.services.document_metadata import MAX_TAGS
from search import errors as search_errors
from search.api import router as search_router
from search.plurals import counted

logger = logging.getLogger("kbsite")


class KbsiteAPI(NinjaAPI):
    """Operation ids are the view functions' names (`create_knowledge_base`, `search`), unique across the
    apps, so a generated client's methods read like the API; renaming a view renames its method."""

    def get_openapi_operation_id(self, operation: Operation) -> str:
        return operation.view_func.__name__


api = KbsiteAPI(
    title="kbsite API",
    version="1",
    description=(
        "Knowledge bases of documents, searchable by meaning. Authenticate with a personal token "
        "(`Authorization: Bearer kbs_…`, made in the admin or with `manage.py create_api_token`) or "
        "the admin's session. Errors answer `{code, message, detail}`; a knowledge base you may not "
        "read answers 404, like one that does not exist."
    ),
    urls_namespace="api-v1",
    auth=[TokenAuth(), SessionAuth()],
)
api.add_router("/", health_router)
api.add_router("/", knowledge_router)
api.add_router("/", search_router)

BEARER_CHALLENGE = 'Bearer realm="kbsite"'

# Each domain error's HTTP status, looked up along its class hierarchy.
STATUS = {
    knowledge_errors.KnowledgeBaseNotFound: 404,
    knowledge_errors.DocumentNotFound: 404,
    knowledge_errors.MemberNotFound: 404,
    knowledge_errors.TokenExpired: 401,
    knowledge_errors.PermissionDenied: 403,
    knowledge_errors.DuplicateSlug: 409,
    knowledge_errors.DuplicateDocument: 409,
    knowledge_errors.PreviewInProgress: 409,
    knowledge_errors.UploadTooLarge: 413,
    knowledge_errors.UnsupportedFormat: 415,
    ExtractionError: 422,
    knowledge_errors.InvalidInput: 422,
    knowledge_errors.KnowledgeError: 400,
    search_errors.KnowledgeBaseNotFound: 404,
    search_errors.UnknownUser: 401,
    search_errors.EmbeddingModelMismatch: 409,
    search_errors.InvalidSearchRequest: 422,
    search_errors.VectorStoreUnavailable: 503,
    search_errors.EmbedderUnavailable: 503,
    search_errors.EmbedderResponseInvalid: 502,
    search_errors.SearchError: 400,
    search_errors.KbsiteError: 400,
}


def error_response(request: HttpRequest, status: int, code: str, message: str, detail=None) -> HttpResponse:
    return api.create_response(request, {"code": code, "message": message, "detail": detail}, status=status)


@api.exception_handler(search_errors.KbsiteError)
def domain_error(request: HttpRequest, exc: search_errors.KbsiteError):
    status = next(STATUS[cls] for cls in type(exc).__mro__ if cls in STATUS)
    response = error_response(request, status, exc.code, exc.message, exc.detail)
    if status == 401:
        response["WWW-Authenticate"] = BEARER_CHALLENGE
    return response


@api.exception_handler(ValidationError)
def invalid_request(request: HttpRequest, exc: ValidationError):
    return error_response(request, 422, "validation_error", validation_message(exc.errors), exc.errors)


# Bounds pydantic checks, said as what is allowed: a caller over a maximum learns the maximum.
BOUNDS = {
    "less_than_equal": ("le", "at most {}"),
    "less_than": ("lt", "less than {}"),
    "greater_than_equal": ("ge", "at least {}"),
    "greater_than": ("gt", "more than {}"),
    "string_too_long": ("max_length", "at most {} characters long"),
    "string_too_short": ("min_length", "at least {} characters long"),
    "too_long": ("max_length", "a list of at most {} items"),
    "too_short": ("min_length", "a list of at least {} items"),
}
SHOWN_ERRORS = 3


def validation_message(errors: list[dict]) -> str:
    """The first few problems, each naming where it is: "limit must be at most 100; kb_id: …"."""
    parts = [_problem(error) for error in errors[:SHOWN_ERRORS]]
    more = len(errors) - SHOWN_ERRORS
    rest = f" ({counted(more, 'more problem')} in `detail`)" if more > 0 else ""
    return f"The request does not match the API's schema: {'; '.join(parts)}{rest}."


def _problem(error: dict) -> str:
    where = _where(error.get("loc") or ())
    bound = BOUNDS.get(error.get("type", ""))
    ctx = error.get("ctx") or {}
    if bound and bound[0] in ctx:
        return f"{where} must be {bound[1].format(ctx[bound[0]])}"
    return f"{where}: {error.get('msg', 'invalid')}"


def _where(loc: tuple | list) -> str:
    """`limit` or `filter.and[1]` in a JSON body (ninja's loc names the view's argument second: left out);
    `the path's kb_id`, `the query's limit` elsewhere."""
    source, names = (loc[0], list(loc[1:])) if loc else ("body", [])
    if source != "body":
        return f"the {source}'s {names[-1]}" if names else f"the {source}"
    dotted = "".join(f"[{name}]" if isinstance(name, int) else f".{name}" for name in names[1:]).lstrip(".")
    return dotted or "the body"


@api.exception_handler(AuthenticationError)
def unauthenticated(request: HttpRequest, exc: AuthenticationError):
    response = error_response(
        request,
        401,
        "unauthenticated",
        "Send a valid API token as 'Authorization: Bearer …' (or log in to the admin for browser use).",
    )
    response["WWW-Authenticate"] = BEARER_CHALLENGE
    return response


@api.exception_handler(Throttled)
def throttled(request: HttpRequest, exc: Throttled):
    wait = f" Try again in {exc.wait:.0f} s." if exc.wait else ""
    # One handler for every limit (searches, uploads): the path says which one was reached.
    return error_response(
        request, 429, "rate_limited", f"Too many requests to {request.path} with this token.{wait}"
    )


@api.exception_handler(RequestDataTooBig)
def too_big(request: HttpRequest, exc: RequestDataTooBig):
    return error_response(
        request, 413, "upload_too_large", "The request body is larger than this site accepts."
    )


@api.exception_handler(TooManyFieldsSent)
@api.exception_handler(TooManyFilesSent)
def too_many_fields(request: HttpRequest, exc: TooManyFieldsSent | TooManyFilesSent):
    # Django stops reading a body past DATA_UPLOAD_MAX_NUMBER_FIELDS (or _FILES): what the sender chose.
    return error_response(
        request,
        400,
        "too_many_fields",
        f"The request has more form fields than this site reads ({exc}). A document takes at most "
        f"{MAX_TAGS} tags: "
        "send one `tags` field per tag.",
    )


@api.exception_handler(MultiPartParserError)
def unparsable_multipart(request: HttpRequest, exc: MultiPartParserError):
    # Django's refusals of a multipart body: no boundary, part headers over 1 KB, and the like.
    return error_response(
        request,
        400,
        "bad_request",
        f"Cannot parse the multipart body ({exc}). Send it as a browser or curl -F would.",
    )


@api.exception_handler(Http404)
def not_found(request: HttpRequest, exc: Http404):
    return error_response(request, 404, "not_found", str(exc) or "Not found.")


def unknown_path(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Any path under /api/v1/ that names no endpoint: the JSON error shape, not Django's HTML page."""
    return JsonResponse(
        {
            "code": "not_found",
            "message": f"No API endpoint at {request.path}. The endpoints are listed at /api/v1/docs.",
            "detail": None,
        },
        status=404,
    )


HTTP_CODES = {
    400: "bad_request",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
}


@api.exception_handler(HttpError)
def http_error(request: HttpRequest, exc: HttpError):
    # Ninja's own refusals: an unparsable body (400), a failed CSRF check (403), and the like.
    if isinstance(exc.__cause__, (json.JSONDecodeError, UnicodeDecodeError)):
        return unparsable_json(request, exc.__cause__)
    return error_response(request, exc.status_code, HTTP_CODES.get(exc.status_code, "http_error"), str(exc))


def unparsable_json(request: HttpRequest, cause: json.JSONDecodeError | UnicodeDecodeError) -> HttpResponse:
    """What is wrong with a JSON body and where: ninja's own answer says only that it cannot be parsed."""
    if isinstance(cause, UnicodeDecodeError):
        message = f"The body is not UTF-8 text (byte {cause.start + 1} is not valid UTF-8). Send JSON in UTF-8."
        detail = {"position": cause.start}
    else:
        message = (
            f"The body is not valid JSON: {cause.msg} at line {cause.lineno}, column {cause.colno} "
            f"(character {cause.pos + 1}). Check the quotes, commas and brackets there."
        )
        detail = {"line": cause.lineno, "column": cause.colno, "position": cause.pos}
    return error_response(request, 400, "bad_request", message, detail)


@api.exception_handler(Exception)
def unexpected(request: HttpRequest, exc: Exception):
    logger.exception("Unexpected error in %s %s", request.method, request.path)
    return error_response(
        request, 500, "internal_error", "Something went wrong on our side; it has been logged."
    )
