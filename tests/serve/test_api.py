"""Every /v1 route through FastAPI's TestClient with tiny native models: success paths, 501 for a missing
capability or index, 400/413/415/422 for bad input."""
from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from vlmkit.apps.classify import classify
from vlmkit.serve import create_app


@pytest.fixture(scope="module")
def clip_client(clip_model):
    with TestClient(create_app(clip_model, model_name="tiny-clip")) as client:
        yield client


@pytest.fixture(scope="module")
def generative_client(generative_model):
    with TestClient(create_app(generative_model, model_name="tiny-lm")) as client:
        yield client


def decoded(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def upload(data: bytes, name: str = "picture.png") -> dict:
    return {"image": (name, data, "image/png")}


def test_healthz_lists_model_capabilities_and_no_index(clip_client):
    body = clip_client.get("/v1/healthz").json()
    assert body == {"status": "ok", "model": "tiny-clip", "capabilities": ["encode_image", "encode_text", "score",
                                                                           "loss"], "index": None, "precision": "fp32"}
    assert clip_client.get("/healthz").json() == {"status": "ok", "api_key_required": False}


def test_embed_texts_equals_encode_text(clip_client, clip_model):
    response = clip_client.post("/v1/embed", json={"texts": ["a red circle", "two green triangles"]})
    assert response.status_code == 200
    body = response.json()
    assert body["dim"] == 16 and len(body["embeddings"]) == 2
    expected = clip_model.encode_text(["a red circle", "two green triangles"]).numpy()
    np.testing.assert_allclose(np.array(body["embeddings"]), expected, atol=1e-5)


def test_embed_images_equals_encode_image(clip_client, clip_model, scene_png):
    response = clip_client.post("/v1/embed", files=[("image", ("a.png", scene_png, "image/png")),
                                                    ("image", ("b.png", scene_png, "image/png"))])
    assert response.status_code == 200
    vectors = np.array(response.json()["embeddings"])
    expected = clip_model.encode_image([decoded(scene_png)]).numpy()
    assert vectors.shape == (2, 16)
    np.testing.assert_allclose(vectors[1], expected[0], atol=1e-5)


def test_classify_ranks_labels_comma_separated_or_repeated(clip_client, clip_model, scene_png):
    response = clip_client.post("/v1/classify", files=upload(scene_png),
                                data={"labels": ["red circle, blue square", "green triangle"], "top_k": "2"})
    assert response.status_code == 200, response.text
    labels = response.json()["labels"]
    expected = classify(clip_model, [decoded(scene_png)],
                        ["red circle", "blue square", "green triangle"], top_k=2)[0]
    assert [item["label"] for item in labels] == [label for label, _ in expected]
    assert [item["score"] for item in labels] == pytest.approx([score for _, score in expected], abs=1e-6)


def test_caption_and_ask_with_a_generative_model(generative_client, generative_model, scene_png):
    image = decoded(scene_png)
    response = generative_client.post("/v1/caption", files=upload(scene_png), data={"max_new_tokens": "5"})
    assert response.status_code == 200, response.text
    assert response.json() == {"caption": generative_model.generate([image], max_new_tokens=5)[0]}
    response = generative_client.post("/v1/ask", files=upload(scene_png), data={"question": "what color?"})
    assert response.status_code == 200, response.text
    assert response.json() == {"answer": generative_model.answer([image], "what color?")[0]}


@pytest.mark.parametrize("route,data,capability", [
    ("/v1/caption", {}, "generate"), ("/v1/ask", {"question": "what color?"}, "answer")])
def test_a_contrastive_model_cannot_caption_or_answer(clip_client, scene_png, route, data, capability):
    response = clip_client.post(route, files=upload(scene_png), data=data)
    assert response.status_code == 501
    detail = response.json()["detail"]
    assert f"not {capability}" in detail and "encode_image" in detail and "use " in detail


def test_a_captioner_cannot_embed_classify_or_search(generative_client, scene_png):
    for response in (generative_client.post("/v1/embed", json={"texts": ["a cat"]}),
                     generative_client.post("/v1/embed", files=upload(scene_png)),
                     generative_client.post("/v1/classify", files=upload(scene_png), data={"labels": "a,b"})):
        assert response.status_code == 501, response.text
        assert "cannot" in response.json()["detail"] and "contrastive model" in response.json()["detail"]
    assert generative_client.get("/v1/healthz").json()["capabilities"] == ["generate", "answer", "loss"]


def test_search_without_an_index_is_501(clip_client):
    response = clip_client.post("/v1/search", json={"text": "a red circle"})
    assert response.status_code == 501 and "--index" in response.json()["detail"]
    assert clip_client.get("/v1/thumbnail/0").status_code == 501


def test_a_file_that_is_not_an_image_is_400(clip_client):
    for data, message in ((b"GIF89a but not really", "not a readable image"), (b"", "empty")):
        response = clip_client.post("/v1/classify", files=upload(data, "notes.txt"), data={"labels": "a,b"})
        assert response.status_code == 400 and message in response.json()["detail"]
        assert "notes.txt" in response.json()["detail"]


def test_a_truncated_image_is_400(clip_client, scene_png):
    response = clip_client.post("/v1/embed", files=upload(scene_png[: len(scene_png) // 2]))
    assert response.status_code == 400, response.text


def test_an_image_with_too_many_pixels_is_413(clip_model, make_png):
    with TestClient(create_app(clip_model, max_pixels=1000)) as client:
        response = client.post("/v1/embed", files=upload(make_png(50, 30)))
    assert response.status_code == 413 and "1500 pixels > 1000" in response.json()["detail"]


@pytest.mark.parametrize("body,field", [
    ({}, "texts"), ({"texts": []}, "texts"), ({"texts": ["  "]}, "texts"), ({"texts": "a cat"}, "texts"),
    ({"texts": ["x"] * 257}, "texts"), ({"texts": ["a"], "extra": 1}, "extra")])
def test_bad_embed_bodies_are_422_naming_the_field(clip_client, body, field):
    response = clip_client.post("/v1/embed", json=body)
    assert response.status_code == 422
    assert any(field in item["loc"] for item in response.json()["detail"])


def test_missing_form_fields_are_422(clip_client, generative_client, scene_png):
    assert clip_client.post("/v1/classify", data={"labels": "a,b"}).status_code == 422  # no image
    assert clip_client.post("/v1/classify", files=upload(scene_png)).status_code == 422  # no labels
    response = clip_client.post("/v1/classify", files=upload(scene_png), data={"labels": " , "})
    assert response.status_code == 422 and "at least one label" in response.json()["detail"]
    assert generative_client.post("/v1/ask", files=upload(scene_png)).status_code == 422  # no question
    assert clip_client.post("/v1/embed", files={"other": ("a.png", scene_png, "image/png")}).status_code == 422


def test_bodies_that_are_neither_json_nor_multipart(clip_client):
    assert clip_client.post("/v1/embed", content=b"texts=a", headers={"content-type": "text/plain"}).status_code == 415
    response = clip_client.post("/v1/embed", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "not valid JSON" in response.json()["detail"]
    assert clip_client.post("/v1/embed", json=["a cat"]).status_code == 422


def test_openapi_is_served_and_the_cdn_docs_page_is_off(clip_client):
    schema = clip_client.get("/openapi.json").json()
    assert {"/v1/embed", "/v1/classify", "/v1/search", "/v1/caption", "/v1/ask", "/v1/healthz",
            "/v1/thumbnail/{item_id}"} <= set(schema["paths"])
    assert set(schema["paths"]["/v1/search"]["post"]["requestBody"]["content"]) == {"application/json",
                                                                                     "multipart/form-data"}
    assert clip_client.get("/docs").status_code == 404


def test_the_page_and_its_files_use_no_external_resource(clip_client):
    page = clip_client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    for path in ("/static/app.js", "/static/style.css"):
        assert clip_client.get(path).status_code == 200
    for text in (page.text, clip_client.get("/static/app.js").text, clip_client.get("/static/style.css").text):
        assert "http://" not in text and "https://" not in text and "//cdn" not in text


def test_bf16_precision_embeds_under_autocast_close_to_fp32(clip_model):
    texts = ["a red circle", "two blue squares"]
    with TestClient(create_app(clip_model, precision="bf16")) as client:
        embedded = np.array(client.post("/v1/embed", json={"texts": texts}).json()["embeddings"])
    exact = clip_model.encode_text(texts).numpy()
    cosines = (embedded * exact).sum(axis=1) / np.linalg.norm(embedded, axis=1) / np.linalg.norm(exact, axis=1)
    assert cosines.min() > 0.99 and not np.array_equal(embedded, exact)  # bf16 matmuls: close, not identical
    with pytest.raises(ValueError, match="precision"):
        create_app(clip_model, precision="fp16")
