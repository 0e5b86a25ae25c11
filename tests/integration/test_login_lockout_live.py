"""The sign-in lockout on a live uvicorn: a client on 127.0.0.1 cannot claim a fresh address per attempt."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.support.live_server import live_server, manage, site_environment

pytestmark = pytest.mark.browser  # a live uvicorn server, like the browser tests

LIMIT = 3


def sign_in(client: httpx.Client, password: str, forwarded_for: str) -> httpx.Response:
    page = client.get("/accounts/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    return client.post(
        "/accounts/login/",
        data={"username": "admin", "password": password, "csrfmiddlewaretoken": token},
        headers={"X-Forwarded-For": forwarded_for, "Referer": f"{client.base_url}/accounts/login/"},
    )


def test_varying_x_forwarded_for_from_loopback_does_not_bypass_the_lockout(tmp_path) -> None:
    with site_environment(
        tmp_path / "site", KBSITE_ADMIN_PASSWORD="right-pw", KBSITE_LOGIN_FAILURE_LIMIT=str(LIMIT)
    ) as env:
        manage("migrate", "--no-input", env=env)
        manage("bootstrap", "--no-demo", env=env)
        with live_server(env, tmp_path / "server.log") as server, httpx.Client(base_url=server.url) as client:
            failures = [sign_in(client, "wrong", f"198.51.100.{n}") for n in range(LIMIT)]
            # uvicorn makes this header the client's address: without the pin, a fresh address.
            right_password = sign_in(client, "right-pw", "192.0.2.99")

    assert [response.status_code for response in failures] == [200] * (LIMIT - 1) + [429]
    assert right_password.status_code == 429
    assert "Too many failed sign-ins" in right_password.text
