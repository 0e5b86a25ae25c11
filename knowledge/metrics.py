"""The protected /metrics endpoint, the request-latency middleware, and the queue figures read at a scrape."""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Iterator

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.db.models import Count, Min
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from knowledge.models import Document, DocumentStatus
from search import metrics


class QueueCollector(Collector):
    """Documents by status and the age of the oldest pending one, counted in the database when scraped.

    Read from the database rather than recorded by processes, so every web process answers the same
    and a dead worker leaves no stale figure behind.
    """

    def collect(self) -> Iterator[GaugeMetricFamily]:
        by_status = GaugeMetricFamily("kbsite_documents", "Documents by status.", labels=["status"])
        counted = dict(Document.objects.values_list("status").annotate(n=Count("pk")).order_by())
        for status in DocumentStatus.values:
            by_status.add_metric([status], counted.get(status, 0))
        yield by_status
        # a pending document's updated_at is when it (re-)entered the queue
        oldest = Document.objects.filter(status=DocumentStatus.PENDING).aggregate(at=Min("updated_at"))["at"]
        age = (timezone.now() - oldest).total_seconds() if oldest is not None else 0.0
        yield GaugeMetricFamily(
            "kbsite_oldest_pending_document_age_seconds",
            "How long the oldest pending document has waited for a worker (0 when none waits).",
            value=age,
        )


def _may_scrape(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    offered = request.headers.get("Authorization", "")
    if token and hmac.compare_digest(offered.encode(), f"Bearer {token}".encode()):
        return True
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_active and user.is_staff)


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus's text format, for staff signed in or a scraper sending `Bearer $KBSITE_METRICS_TOKEN`."""
    if not _may_scrape(request):
        return HttpResponse(
            "Metrics are for staff: sign in to the admin, or send Authorization: Bearer "
            "with the value of KBSITE_METRICS_TOKEN.\n",
            status=403,
            content_type="text/plain; charset=utf-8",
        )
    body, content_type = metrics.exposition(QueueCollector())
    return HttpResponse(body, content_type=content_type)


def request_metrics_middleware(get_response: Callable) -> Callable:
    """Time every request Django answers, labelled by its URL pattern (never the raw path: bounded labels)."""

    def observe(request: HttpRequest, response: HttpResponse, started: float) -> None:
        match = request.resolver_match
        metrics.observe_request(
            method=request.method,
            route=match.route if match is not None else "unmatched",
            status=response.status_code,
            seconds=time.perf_counter() - started,
        )

    if iscoroutinefunction(get_response):

        async def middleware(request: HttpRequest) -> HttpResponse:
            started = time.perf_counter()
            response = await get_response(request)
            observe(request, response, started)
            return response

        return markcoroutinefunction(middleware)

    def sync_middleware(request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = get_response(request)
        observe(request, response, started)
        return response

    return sync_middleware


request_metrics_middleware.sync_capable = True
request_metrics_middleware.async_capable = True
