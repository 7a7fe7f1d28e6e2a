"""/v1/search and /v1/thumbnail over a real vlmkit.search index of the built-in scenes."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from vlmkit.serve import create_app


@pytest.fixture(scope="module")
def client(clip_model, scene_index):
    with TestClient(create_app(clip_model, scene_index)) as client:
        yield client


def test_healthz_describes_the_index(client, scene_index):
    index = client.get("/v1/healthz").json()["index"]
    assert index == {"count": scene_index.count, "kind": scene_index.kind, "dim": 16} and index["count"] == 24


def test_text_search_gives_the_index_nearest_items(client, clip_model, scene_index):
    response = client.post("/v1/search", json={"text": "a red circle", "k": 5})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    expected = scene_index.search(clip_model.encode_text(["a red circle"]).numpy(), k=5)[0]
    assert [result["id"] for result in results] == [hit.id for hit in expected]
    assert [result["score"] for result in results] == pytest.approx([hit.score for hit in expected], abs=1e-5)
    first = results[0]
    assert set(first) == {"id", "score", "caption", "key", "width", "height", "thumbnail"}  # no server path
    assert first["thumbnail"] == f"/v1/thumbnail/{first['id']}" and first["width"] == 32


def test_embedding_search_equals_text_search_and_is_normalised(client, clip_model):
    vector = clip_model.encode_text(["two green triangles"])[0].numpy() * 3.0
    by_embedding = client.post("/v1/search", json={"embedding": vector.tolist(), "k": 4}).json()["results"]
    by_text = client.post("/v1/search", json={"text": "two green triangles", "k": 4}).json()["results"]
    assert [r["id"] for r in by_embedding] == [r["id"] for r in by_text]
    assert [r["score"] for r in by_embedding] == pytest.approx([r["score"] for r in by_text], abs=1e-5)


def test_image_search_finds_the_image_itself_first(client, scenes, scene_index):
    path = sorted((scenes / "images").rglob("*.png"))[5]
    response = client.post("/v1/search", files={"image": (path.name, path.read_bytes(), "image/png")},
                           data={"k": "3"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 3 and results[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert scene_index.item(results[0]["id"])["path"].endswith(path.name)


def test_where_filters_and_duplicates(client, scene_index):
    red = client.post("/v1/search", json={"text": "a shape", "k": 24, "where": ["caption~red"]}).json()["results"]
    assert red and all("red" in result["caption"] for result in red)
    wide = client.post("/v1/search", json={"text": "a shape", "where": ["width>=100"]}).json()["results"]
    assert wide == []
    collapsed = client.post("/v1/search", json={"text": "a shape", "k": 24, "collapse_duplicates": True})
    assert collapsed.status_code == 200
    digests = [scene_index.item(result["id"])["sha256"] for result in collapsed.json()["results"]]
    assert len(set(digests)) == len(digests)  # identical scenes count once


@pytest.mark.parametrize("body", [{"text": "a", "embedding": [0.0] * 16}, {}, {"text": "a", "k": 0},
                                  {"text": "a", "k": 101}, {"embedding": [1.0] * 15}, {"embedding": [0.0] * 16},
                                  {"text": "a", "where": "width>=1"}])
def test_bad_queries_are_422(client, body):
    response = client.post("/v1/search", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


def test_a_bad_filter_is_400_with_the_index_message(client):
    response = client.post("/v1/search", json={"text": "a", "where": ["colour=red; DROP TABLE items"]})
    assert response.status_code == 400 and response.json()["detail"]


def test_thumbnails_are_small_jpegs_of_indexed_items_only(client, scene_index):
    response = client.get("/v1/thumbnail/3")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "JPEG" and max(image.size) <= 256
    assert client.get("/v1/thumbnail/3").content == response.content  # from the cache
    assert client.get("/v1/thumbnail/999999").status_code == 404
    assert client.get("/v1/thumbnail/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)


def test_paths_only_when_asked(clip_model, scene_index):
    with TestClient(create_app(clip_model, scene_index, expose_paths=True)) as client:
        result = client.post("/v1/search", json={"text": "a red circle", "k": 1}).json()["results"][0]
    assert result["path"] == scene_index.item(result["id"])["path"]


def test_an_index_of_another_model_or_a_model_that_cannot_embed_is_refused(generative_model, scene_index,
                                                                           tiny_overrides):
    import vlmkit
    from vlmkit.config import load_config

    with pytest.raises(ValueError, match="cannot embed"):
        create_app(generative_model, scene_index)
    wider = load_config("clip-tiny", [*tiny_overrides, "model.embed_dim=24"])["model"]
    other = vlmkit.build_model(wider, tokenizer=generative_model.tokenizer).eval()
    with pytest.raises(ValueError, match="16-d embeddings"):
        create_app(other, scene_index)
    assert np.isfinite(other.encode_text(["a"]).numpy()).all()


def test_the_thumbnail_of_an_image_gone_from_disk_is_404(clip_model, scenes, tmp_path):
    import shutil

    from vlmkit.search import SearchIndex, build_index

    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted((scenes / "images").rglob("*.png"))[:2]:
        shutil.copy(path, folder / path.name)
    build_index(clip_model, [folder], tmp_path / "small.index", progress=False)
    index = SearchIndex.open(tmp_path / "small.index")
    gone = next(item_id for item_id in range(10) if index.item(item_id))
    Path(index.item(gone)["path"]).unlink()
    with TestClient(create_app(clip_model, index)) as client:
        response = client.get(f"/v1/thumbnail/{gone}")
    assert response.status_code == 404 and "no longer readable" in response.json()["detail"]


def test_concurrent_text_searches_share_one_batch_and_a_bad_filter_fails_only_its_own(clip_model, scene_index):
    import asyncio

    import httpx

    queries = ["a red circle", "two green triangles", "a small yellow star", "a blue square"]
    bodies = [{"text": q, "k": 3 + i} for i, q in enumerate(queries)] + [
        {"text": "a red circle", "k": 24, "where": ["caption~red"]},
        {"text": "a shape", "where": ["colour=red; DROP TABLE items"]}]
    app = create_app(clip_model, scene_index, batch_window_ms=200)  # a wide window: all six land in one batch
    service = app.state.service

    async def run() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                return await asyncio.gather(*(http.post("/v1/search", json=body) for body in bodies))

    responses = asyncio.run(run())
    assert service.text_search_batcher.calls == 1
    for i, query in enumerate(queries):
        expected = scene_index.search(clip_model.encode_text([query]).numpy(), k=3 + i)[0]
        results = responses[i].json()["results"]
        assert [r["id"] for r in results] == [hit.id for hit in expected]
        assert [r["score"] for r in results] == pytest.approx([hit.score for hit in expected], abs=1e-5)
    red = responses[4].json()["results"]
    assert red and all("red" in r["caption"] for r in red)
    assert responses[5].status_code == 400 and responses[5].json()["detail"]
