"""The FastAPI app: the ``/v1`` API over one model (and optionally a search index) plus its web page.

    from vlmkit.serve import create_app
    app = create_app(vlmkit.load("runs/clip"), SearchIndex.open("photos.index"), api_key="secret")
    # uvicorn.run(app) -- or `vlmkit serve --model runs/clip --index photos.index`

The OpenAPI description is at ``/openapi.json``. FastAPI's interactive ``/docs`` page is off: it loads its
scripts from a CDN, which an offline or locked-down machine cannot reach.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from vlmkit.capabilities import CapabilityError
from vlmkit.data.decode import DEFAULT_MAX_PIXELS, BadSample
from vlmkit.serve.routes import build_router
from vlmkit.serve.security import BodySizeLimit, add_cors, api_key_checker
from vlmkit.serve.service import Service

STATIC = Path(__file__).resolve().parent / "static"
# The page runs only its own script and style and talks only to this server; result thumbnails are blob: URLs.
PAGE_POLICY = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
               "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
log = logging.getLogger("vlmkit.serve")


def create_app(model: Any, index: Any = None, *, api_key: str | None = None, max_upload_mb: float = 10.0,
               max_pixels: int = DEFAULT_MAX_PIXELS, cors_origins: Sequence[str] | None = None,
               batch_window_ms: float = 5.0, max_batch: int = 64, model_name: str | None = None,
               expose_paths: bool = False, precision: str = "fp32") -> FastAPI:
    """The service for ``model`` (anything with vlmkit capabilities) and an optional ``vlmkit.search.SearchIndex``.

    Args:
        api_key: when set, every ``/v1`` route needs ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``.
        max_upload_mb: the largest request body (413 beyond it).
        max_pixels: the largest decoded image (width x height; 413 beyond it).
        cors_origins: origins allowed to call the API from a browser (default: none, no CORS headers).
        batch_window_ms: how long concurrent text requests are gathered into one ``encode_text`` call (0: off).
        max_batch: the most texts in one gathered call.
        model_name: the name ``/v1/healthz`` reports (default: the model's own or its class name).
        expose_paths: include each search result's file path (off: paths of the server's disk stay private).
        precision: ``fp32``, or ``bf16`` to embed queries under bf16 autocast (faster on CPUs with bf16 units).
    """
    if max_upload_mb <= 0:
        raise ValueError(f"the upload limit must be > 0 MB, not {max_upload_mb}")
    service = Service(model, index, model_name=model_name, max_pixels=max_pixels, batch_window_ms=batch_window_ms,
                      max_batch=max_batch, expose_paths=expose_paths, precision=precision)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await service.close()

    app = FastAPI(title="vlmkit", summary="Embed, classify, search, caption and ask with a vision-language model.",
                  version=_version(), docs_url=None, redoc_url=None, openapi_url="/openapi.json",
                  lifespan=lifespan)
    app.state.service = service
    app.include_router(build_router(service, api_key_checker(api_key)))
    _add_page(app, api_key_required=api_key is not None)
    _add_error_handlers(app)
    app.add_middleware(BodySizeLimit, limit_bytes=int(max_upload_mb * 2**20))
    add_cors(app, cors_origins)  # outermost, so that a refusal (401, 413) still carries the CORS headers
    return app


def _version() -> str:
    from vlmkit import __version__

    return __version__


def _add_page(app: FastAPI, *, api_key_required: bool) -> None:
    """``/`` (the web page), ``/static/*`` (its files) and ``/healthz`` (liveness, without the API key)."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_POLICY,
                                                            "X-Content-Type-Options": "nosniff",
                                                            "Cache-Control": "no-cache"})

    @app.get("/healthz", summary="liveness probe (no API key needed)")
    async def liveness() -> dict[str, Any]:
        return {"status": "ok", "api_key_required": api_key_required}


def _add_error_handlers(app: FastAPI) -> None:
    """Errors a caller can cause become a JSON ``detail`` with the right status; anything else a logged 500."""

    @app.exception_handler(CapabilityError)
    async def capability_error(_: Request, error: CapabilityError) -> JSONResponse:
        return JSONResponse(status_code=501, content={"detail": str(error)})

    @app.exception_handler(BadSample)
    async def bad_sample(_: Request, error: BadSample) -> JSONResponse:
        status = 413 if error.reason == "too_large" else 400
        return JSONResponse(status_code=status, content={"detail": f"cannot use this image: {error}"})

    @app.exception_handler(ValueError)
    async def value_error(_: Request, error: ValueError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(error)})

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        log.exception("error in %s %s", request.method, request.url.path)
        return JSONResponse(status_code=500, content={"detail": f"internal error ({type(error).__name__}); the "
                                                                "server log has the details"})
