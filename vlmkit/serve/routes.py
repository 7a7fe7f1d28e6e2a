"""The ``/v1`` routes: healthz, embed, classify, search, caption, ask and thumbnails.

Each route checks the capability it needs first (501 with what to use instead), then reads and validates its
input (422 for missing or invalid fields, 400 for an upload that is not an image, 413 for one that is too big),
and runs the model on the service's model thread.
"""
from __future__ import annotations

import contextlib
import json
from typing import Annotated, Any, AsyncIterator, Awaitable, Callable

import numpy as np
from fastapi import APIRouter, Depends, File, Form, HTTPException, Path, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.datastructures import UploadFile as StarletteUpload

from vlmkit.serve.service import Service

MAX_TEXTS = 256  # texts in one /v1/embed request
MAX_IMAGES = 16  # images in one /v1/embed request
MAX_TEXT_CHARS = 2000
MAX_K = 100
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TEXT_CHARS)]


class EmbedTexts(BaseModel):
    """JSON body of ``/v1/embed`` (or send multipart ``image`` files instead)."""

    model_config = ConfigDict(extra="forbid")
    texts: list[Text] = Field(min_length=1, max_length=MAX_TEXTS)


class SearchOptions(BaseModel):
    """How many results, which ones (``where``: ``field=value``, ``width>=200``, ``caption~red``), and whether
    near-duplicate images count once."""

    model_config = ConfigDict(extra="forbid")
    k: int = Field(10, ge=1, le=MAX_K)
    where: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] = Field([], max_length=16)
    collapse_duplicates: bool = False


class SearchQuery(SearchOptions):
    """JSON body of ``/v1/search``: a ``text`` or an ``embedding`` (or send a multipart ``image`` instead)."""

    text: Text | None = None
    embedding: list[float] | None = Field(None, max_length=65536)

    @model_validator(mode="after")
    def one_query(self) -> "SearchQuery":
        if (self.text is None) == (self.embedding is None):
            raise ValueError("give exactly one of 'text' or 'embedding'")
        return self


class Embeddings(BaseModel):
    embeddings: list[list[float]]
    dim: int


class ScoredLabel(BaseModel):
    label: str
    score: float


class Labels(BaseModel):
    labels: list[ScoredLabel]


class SearchResult(BaseModel):
    id: int
    score: float
    caption: str | None
    key: str
    width: int | None
    height: int | None
    thumbnail: str
    path: str | None = None


class SearchResults(BaseModel):
    results: list[SearchResult]


def _json(content: dict[str, Any]) -> Response:
    """``content`` as a JSON response, already in its response model's shape: a hot route skips FastAPI's
    validation and re-encoding of its output (the model stays for the OpenAPI docs)."""
    return Response(json.dumps(content, separators=(",", ":"), allow_nan=False), media_type="application/json")


def _body_doc(schema: type[BaseModel], multipart: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI for a route that takes JSON or a multipart upload (FastAPI documents only one on its own)."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": schema.model_json_schema()},
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
            "image": {"type": "string", "format": "binary"}, **multipart}}}}}}


@contextlib.asynccontextmanager
async def _json_or_form(request: Request) -> AsyncIterator[tuple[dict[str, Any] | None, FormData | None]]:
    """(JSON object, None) or (None, the multipart form, closed on exit); 415 for any other body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        async with request.form(max_files=MAX_IMAGES, max_fields=64) as form:
            yield None, form
        return
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise HTTPException(status_code=415, detail="send a JSON body (Content-Type: application/json) or a "
                                                    "multipart/form-data upload with an 'image' file")
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HTTPException(status_code=422, detail="the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise HTTPException(status_code=422, detail="the JSON body must be an object, e.g. {\"texts\": [\"a cat\"]}")
    yield data, None


def _validate(schema: type[BaseModel], data: dict[str, Any]) -> Any:
    """``schema`` filled from ``data``, or the same 422 FastAPI gives for a declared body."""
    try:
        return schema.model_validate(data)
    except ValidationError as error:
        raise RequestValidationError([{**item, "loc": ("body", *item["loc"])} for item in
                                      error.errors(include_url=False, include_context=False)]) from None


def _uploads(form: FormData, name: str = "image") -> list[StarletteUpload]:
    files = [value for value in form.getlist(name) if isinstance(value, StarletteUpload)]
    if not files:
        raise HTTPException(status_code=422, detail=f"the form has no '{name}' file")
    return files


def _unit(vector: list[float], dim: int) -> np.ndarray:
    """A query embedding as float32 [D], L2-normalised (422 for the wrong size, a zero or non-finite vector)."""
    array = np.asarray(vector, dtype=np.float32)
    if array.shape != (dim,):
        raise HTTPException(status_code=422, detail=f"the embedding has {array.size} values; the index holds "
                                                    f"{dim}-d embeddings")
    norm = float(np.linalg.norm(array))
    if not np.isfinite(norm) or norm == 0.0:
        raise HTTPException(status_code=422, detail="the embedding must be finite and not all zeros")
    return array / norm


def _labels(values: list[str]) -> list[str]:
    """Labels from repeated form fields, each of which may hold several comma-separated labels."""
    labels = [part.strip() for value in values for part in value.split(",") if part.strip()]
    if not labels:
        raise HTTPException(status_code=422, detail="give at least one label, e.g. labels=cat,dog")
    if len(labels) > 1000:
        raise HTTPException(status_code=422, detail=f"{len(labels)} labels: give at most 1000")
    return list(dict.fromkeys(labels))  # a repeated label is the same class


def build_router(service: Service, check_api_key: Callable[[Request], Awaitable[None]]) -> APIRouter:
    """The ``/v1`` routes over ``service``, each behind ``check_api_key``."""
    router = APIRouter(prefix="/v1", dependencies=[Depends(check_api_key)])

    @router.get("/healthz", summary="model, capabilities and index")
    async def healthz() -> dict[str, Any]:
        return service.health()

    @router.post("/embed", response_model=Embeddings, summary="embed texts (JSON) or images (multipart)",
                 openapi_extra=_body_doc(EmbedTexts, {}))
    async def embed(request: Request) -> dict[str, Any]:
        async with _json_or_form(request) as (data, form):
            if form is not None:
                service.require("encode_image", "embed images")
                images = [await service.read_image(upload) for upload in _uploads(form)]
                vectors = await service.embed_images(images)
            else:
                texts = _validate(EmbedTexts, data).texts
                service.require("encode_text", "embed texts")
                vectors = await service.embed_texts(texts)
        return {"embeddings": vectors.tolist(), "dim": int(vectors.shape[1])}

    @router.post("/classify", response_model=Labels, summary="zero-shot classify an image among labels")
    async def classify(image: Annotated[UploadFile, File(description="the image")],
                       labels: Annotated[list[str], Form(description="labels: comma-separated or repeated")],
                       top_k: Annotated[int, Form(ge=1, le=1000)] = 5) -> dict[str, Any]:
        from vlmkit.apps.classify import classify as classify_images

        service.require("encode_image", "classify images")
        label_list = _labels(labels)
        picture = await service.read_image(image)
        ranked = (await service.call(classify_images, service.model, [picture], label_list, top_k=top_k))[0]
        return {"labels": [{"label": label, "score": score} for label, score in ranked]}

    @router.post("/search", response_model=SearchResults, response_model_exclude_none=True,
                 summary="search the index by text, embedding (JSON) or image (multipart)",
                 openapi_extra=_body_doc(SearchQuery, {"k": {"type": "integer", "default": 10},
                                                       "where": {"type": "array", "items": {"type": "string"}},
                                                       "collapse_duplicates": {"type": "boolean"}}))
    async def search(request: Request) -> Response:
        index = service.require_index()
        async with _json_or_form(request) as (data, form):
            if form is not None:
                options = {name: form.getlist(name) if name == "where" else form[name]
                           for name in ("k", "where", "collapse_duplicates") if name in form}
                query = _validate(SearchOptions, options)
                service.require("encode_image", "search by image")
                upload = _uploads(form)[0]
                vector = (await service.embed_images([await service.read_image(upload)]))[0]
            else:
                query = _validate(SearchQuery, data)
                if query.text is not None:
                    service.require("encode_text", "search by text")
                    results = await service.search_text(query.text, k=query.k, where=query.where,
                                                        collapse_duplicates=query.collapse_duplicates)
                    return _json({"results": results})
                vector = _unit(query.embedding, int(index.dim))
        results = await service.search(vector, k=query.k, where=query.where,
                                       collapse_duplicates=query.collapse_duplicates)
        return _json({"results": results})

    @router.post("/caption", summary="caption an image")
    async def caption(image: Annotated[UploadFile, File(description="the image")],
                      prompt: Annotated[str | None, Form(max_length=MAX_TEXT_CHARS)] = None,
                      max_new_tokens: Annotated[int, Form(ge=1, le=256)] = 30) -> dict[str, str]:
        from vlmkit.apps.generate import caption as caption_images

        service.require("generate", "caption images")
        picture = await service.read_image(image)
        captions = await service.call(caption_images, service.model, [picture], prompt=prompt or None,
                                      max_new_tokens=max_new_tokens)
        return {"caption": captions[0]}

    @router.post("/ask", summary="answer a question about an image")
    async def ask(image: Annotated[UploadFile, File(description="the image")],
                  question: Annotated[Text, Form(description="the question")]) -> dict[str, str]:
        from vlmkit.apps.generate import ask as ask_images

        service.require("answer", "answer questions about images")
        picture = await service.read_image(image)
        answers = await service.call(ask_images, service.model, [picture], question)
        return {"answer": answers[0]}

    @router.get("/thumbnail/{item_id}", response_class=Response, summary="a JPEG thumbnail of an indexed image",
                responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "not in the index"}})
    async def thumbnail(item_id: Annotated[int, Path(ge=0, description="the id of a search result")]) -> Response:
        jpeg = await run_in_threadpool(service.thumbnail, item_id)
        return Response(content=jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    return router
