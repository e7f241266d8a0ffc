"""The admin app's errors: OpenAI-shaped whatever the path and method, and nothing about
which admin paths exist is told to a caller without the admin key (issue #14, finding 5)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.gw import ADMIN_KEY, CLIENT_KEY, GatewayServer, auth_yaml

EXISTING = [("GET", "/admin/backends"), ("GET", "/admin/usage"), ("GET", "/admin/keys"), ("POST", "/admin/reload")]
WRONG_METHOD = [("DELETE", "/admin/backends"), ("PUT", "/admin/usage"), ("PATCH", "/admin/keys"), ("GET", "/admin/reload")]
UNKNOWN = [("GET", "/admin/nope"), ("POST", "/admin/nope"), ("GET", "/admin"), ("DELETE", "/admin/"),
           ("GET", "/admin/keys/x/y/z"), ("GET", "/administrator"), ("OPTIONS", "/admin/usage")]  # fmt: skip
NO_ADMIN = {
    "none": {},
    "garbage": {"authorization": "Bearer sk-nobody"},
    "not-bearer": {"authorization": f"Basic {ADMIN_KEY}"},
    "client": {"authorization": f"Bearer {CLIENT_KEY}"},
}


@pytest.fixture(scope="module")
def gw() -> Iterator[GatewayServer]:
    with GatewayServer(auth_yaml() + "store: memory://\npools: {}\n", spawn_engines=False) as g:
        yield g


def _shaped(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"}, body
    err: dict[str, Any] = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str)
    return err


@pytest.mark.parametrize("who", list(NO_ADMIN))
@pytest.mark.parametrize(("method", "path"), EXISTING + WRONG_METHOD + UNKNOWN)
def test_without_the_admin_key_every_path_and_method_answers_the_same(gw: GatewayServer, who: str, method: str, path: str) -> None:
    r = httpx.request(method, gw.url + path, headers=NO_ADMIN[who], timeout=10)
    err = _shaped(r)
    if who == "client":
        assert (r.status_code, err["code"], err["type"]) == (403, "forbidden", "permission_error"), r.text
    else:
        assert (r.status_code, err["type"]) == (401, "authentication_error"), r.text
    # What a caller without the admin key learns must not depend on the path or method.
    reference = httpx.get(gw.url + "/admin/backends", headers=NO_ADMIN[who], timeout=10)
    assert (r.status_code, r.content) == (reference.status_code, reference.content)
    assert "allow" not in r.headers


@pytest.mark.parametrize(("method", "path"), UNKNOWN)
def test_with_the_admin_key_unknown_paths_are_openai_shaped_404(gw: GatewayServer, method: str, path: str) -> None:
    r = httpx.request(method, gw.url + path, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
    if (method, path) == ("OPTIONS", "/admin/usage"):
        assert r.status_code == 405
    else:
        assert r.status_code == 404, r.text
        assert _shaped(r)["code"] == "not_found"


@pytest.mark.parametrize(("method", "path"), WRONG_METHOD)
def test_with_the_admin_key_wrong_methods_are_openai_shaped_405(gw: GatewayServer, method: str, path: str) -> None:
    r = httpx.request(method, gw.url + path, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
    assert r.status_code == 405, r.text
    assert _shaped(r)["code"] == "method_not_allowed"
    assert r.headers["allow"]


def test_with_the_admin_key_bad_input_is_openai_shaped(gw: GatewayServer) -> None:
    h = {"authorization": f"Bearer {ADMIN_KEY}"}
    r = httpx.post(gw.url + "/admin/keys", content=b"{not json", headers={**h, "content-type": "application/json"})
    assert r.status_code == 400 and _shaped(r)["type"] == "invalid_request_error", r.text
    r = httpx.get(gw.url + "/admin/usage", params={"group_by": "nonsense"}, headers=h)
    assert r.status_code == 400 and _shaped(r), r.text
    assert httpx.get(gw.url + "/admin/backends", headers=h).status_code == 200
