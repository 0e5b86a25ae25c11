"""How django-axes sees a sign-in: the address it counts failures against, and the page a locked-out login gets."""

from __future__ import annotations

import ipaddress
import math

from axes.helpers import get_client_username, get_failure_limit
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from knowledge.selectors import login_lockout_ends

#: What failures count against when the client's own address is not known: every request forwarded
#: through no proxy named in KBSITE_TRUSTED_PROXIES shares it, whatever X-Forwarded-For claims.
UNKNOWN_FORWARDED_CLIENT = "0.0.0.0"


def client_address(request: HttpRequest) -> str | None:
    """AXES_CLIENT_IP_CALLABLE: the sign-in's address, from X-Forwarded-For only as far as named proxies vouch.

    Without the header, REMOTE_ADDR is the peer of the connection. With it, REMOTE_ADDR may be what the
    sender wrote (uvicorn trusts the header from 127.0.0.1), so the header is read from the right, where
    each named proxy appended the address it saw, to the first address that is no named proxy.
    """
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR")
    if not forwarded:
        return request.META.get("REMOTE_ADDR")
    proxies = set(settings.LOGIN_TRUSTED_PROXIES)
    if not proxies:
        return UNKNOWN_FORWARDED_CLIENT
    for entry in reversed(forwarded.split(",")):
        try:
            address = str(ipaddress.ip_address(entry.strip()))
        except ValueError:
            return UNKNOWN_FORWARDED_CLIENT
        if address not in proxies:
            return address
    return UNKNOWN_FORWARDED_CLIENT


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
