"""The page a login locked out by django-axes answers with: whose sign-in is paused, and until when."""

from __future__ import annotations

import math

from axes.helpers import get_client_username, get_failure_limit
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from knowledge.selectors import login_lockout_ends


def locked_out(request: HttpRequest, *args) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: 429 with the time to try again, for the admin's login and the members' alike.

    django-axes passes the credentials in different places on its sync and async paths (and the
    response it replaces on one of them only), so this reads what it needs from the request, where
    axes always leaves it.
    """
    credentials = getattr(request, "axes_credentials", None)
    username = get_client_username(request, credentials) or ""
    ends = login_lockout_ends(username=username, ip_address=getattr(request, "axes_ip_address", None))
    wait = max(0, math.ceil((ends - timezone.now()).total_seconds())) if ends else 0
    response = render(
        request,
        "knowledge/web/locked_out.html",
        {
            "username": username,
            "failure_limit": get_failure_limit(request, credentials),
            "ends": ends,
            "minutes": math.ceil(wait / 60),
        },
        status=429,
    )
    if wait:
        response["Retry-After"] = str(wait)
    return response
