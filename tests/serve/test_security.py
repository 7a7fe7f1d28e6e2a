"""The API key (401 without it, both header forms with it, the page and liveness open), the request size limit
(413 from Content-Length and from the streamed size), CORS off by default and on only for given origins, and
thumbnails of indexed items only."""
from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from vlmkit.serve import create_app

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def keyed_client(clip_model):
    with TestClient(create_app(clip_model, api_key=KEY)) as client:
        yield client


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"Authorization": f"Basic {KEY}"},
                                     {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer"}])
def test_every_v1_route_wants_the_key(keyed_client, headers, make_png):
    requests = [("get", "/v1/healthz", {}), ("post", "/v1/embed", {"json": {"texts": ["a"]}}),
                ("post", "/v1/classify", {"files": {"image": ("a.png", make_png(), "image/png")},
                                          "data": {"labels": "a,b"}}),
                ("post", "/v1/search", {"json": {"text": "a"}}), ("get", "/v1/thumbnail/0", {})]
    for method, path, options in requests:
        response = getattr(keyed_client, method)(path, headers=headers, **options)
        assert response.status_code == 401, path
        assert "API key" in response.json()["detail"] and response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("headers", [{"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"},
                                     {"authorization": f"bearer {KEY}"}])
def test_the_key_opens_the_api(keyed_client, headers):
    assert keyed_client.get("/v1/healthz", headers=headers).status_code == 200
    assert keyed_client.post("/v1/embed", json={"texts": ["a"]}, headers=headers).status_code == 200


def test_the_page_and_liveness_need_no_key(keyed_client):
    assert keyed_client.get("/").status_code == 200
    assert keyed_client.get("/static/app.js").status_code == 200
    assert keyed_client.get("/healthz").json() == {"status": "ok", "api_key_required": True}


def test_a_body_over_the_limit_is_413_from_its_content_length(clip_model, make_png):
    with TestClient(create_app(clip_model, max_upload_mb=0.01)) as client:  # 10 KB
        response = client.post("/v1/embed", files={"image": ("big.png", b"\0" * 20_000, "image/png")})
        assert response.status_code == 413 and "--max-upload-mb" in response.json()["detail"]
        assert client.post("/v1/embed", files={"image": ("small.png", make_png(), "image/png")}).status_code == 200


def test_a_streamed_body_over_the_limit_is_413_without_a_content_length(clip_model):
    def chunks():
        for _ in range(40):
            yield b"x" * 1024

    with TestClient(create_app(clip_model, max_upload_mb=0.01)) as client:
        response = client.post("/v1/embed", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "too large" in response.json()["detail"]


def test_a_lying_content_length_is_caught_while_streaming():
    from vlmkit.serve.security import BodySizeLimit

    sent = []

    async def app(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"read it all"})

    messages = [{"type": "http.request", "body": b"x" * 600, "more_body": True},
                {"type": "http.request", "body": b"x" * 600, "more_body": False}]

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "headers": [(b"content-length", b"10")]}
    asyncio.run(BodySizeLimit(app, limit_bytes=1000)(scope, receive, send))
    assert sent[0]["status"] == 413


def test_cors_is_off_by_default(clip_client_factory):
    client = clip_client_factory()
    response = client.get("/v1/healthz", headers={"Origin": "https://elsewhere.example"})
    assert "access-control-allow-origin" not in response.headers
    preflight = client.options("/v1/embed", headers={"Origin": "https://elsewhere.example",
                                                      "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_allows_only_the_given_origins(clip_client_factory):
    client = clip_client_factory(cors_origins=["https://app.example"], api_key=KEY)
    preflight = client.options("/v1/embed", headers={"Origin": "https://app.example",
                                                      "Access-Control-Request-Method": "POST",
                                                      "Access-Control-Request-Headers": "x-api-key,content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    refused = client.get("/v1/healthz", headers={"Origin": "https://app.example"})  # no key: 401, still readable
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "https://app.example"
    other = client.get("/v1/healthz", headers={"Origin": "https://evil.example", "X-API-Key": KEY})
    assert "access-control-allow-origin" not in other.headers
    with pytest.raises(ValueError, match="give an origin like"):
        clip_client_factory(cors_origins=["app.example"])


@pytest.fixture()
def clip_client_factory(clip_model):
    clients = []

    def make(**options):
        client = TestClient(create_app(clip_model, **options))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.mark.parametrize("path", ["/v1/thumbnail/..%2F..%2Fetc%2Fpasswd", "/v1/thumbnail/../../etc/passwd",
                                  "/v1/thumbnail/%2Fetc%2Fpasswd", "/v1/thumbnail/-1", "/v1/thumbnail/1.5",
                                  "/static/..%2F..%2F..%2Fetc%2Fpasswd", "/static/../app.py"])
def test_nothing_outside_the_index_and_the_page_is_served(clip_client_factory, path):
    response = clip_client_factory().get(path)
    assert response.status_code in (404, 422), path
    assert "root:" not in response.text and "create_app" not in response.text
