"""What keeps the service safe to expose: the optional API key, the request size limit and CORS.

- **API key**: when set, every ``/v1`` route wants ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``, compared
  in constant time; otherwise 401.
- **Size limit**: a request body larger than the limit is refused with 413 from its ``Content-Length`` before any
  byte is read, and, when the header is absent or lies, as soon as the streamed bytes pass the limit.
- **CORS**: off unless origins are given (then only those origins, only the service's methods and headers).
"""
from __future__ import annotations

import hmac
import json
from typing import Any, Awaitable, Callable, Sequence

from fastapi import HTTPException, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_KEY_HEADERS = ("authorization", "x-api-key")


def api_key_checker(api_key: str | None) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency that lets a request through when ``api_key`` is None or the request carries it.
    Async, so that it runs on the event loop: FastAPI sends a plain function to a worker thread on every request."""
    expected = api_key.encode("utf-8") if api_key else None

    async def check_api_key(request: Request) -> None:
        if expected is None:
            return
        given = request.headers.get("x-api-key")
        if given is None:
            scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
            given = credentials.strip() if scheme.lower() == "bearer" else None
        # compare_digest on bytes: the time taken does not depend on where the strings differ.
        if given is None or not hmac.compare_digest(given.encode("utf-8"), expected):
            raise HTTPException(status_code=401,
                                detail="missing or wrong API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                                headers={"WWW-Authenticate": "Bearer"})

    return check_api_key


class BodyTooLarge(HTTPException):
    """The request body passed the service's size limit (413)."""

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(status_code=413, detail=f"request too large: the limit is {_megabytes(limit_bytes)} "
                                                 "(the server's --max-upload-mb)")


def _megabytes(size: int) -> str:
    return f"{size / 2**20:g} MB"


class BodySizeLimit:
    """ASGI middleware: refuse request bodies larger than ``limit_bytes`` with a JSON 413.

    A declared ``Content-Length`` over the limit is answered before the body is read. Otherwise the body is
    counted as it streams in, and the first chunk past the limit raises :class:`BodyTooLarge` into whatever is
    reading it (the multipart parser, ``request.json()``), which FastAPI turns into the 413 response; if a reader
    swallows it, this middleware still answers 413 when no response has started.
    """

    def __init__(self, app: ASGIApp, limit_bytes: int) -> None:
        self.app, self.limit_bytes = app, limit_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit_bytes:
            await _send_json(send, 413, {"detail": BodyTooLarge(self.limit_bytes).detail})
            return
        received, started = 0, False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit_bytes:
                    raise BodyTooLarge(self.limit_bytes)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge as error:
            if started:
                raise
            await _send_json(send, 413, {"detail": error.detail})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})


def add_cors(app: Any, origins: Sequence[str] | None) -> None:
    """Allow cross-origin calls from ``origins`` only (none by default: then no CORS header is ever sent)."""
    if not origins:
        return
    from starlette.middleware.cors import CORSMiddleware

    for origin in origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ValueError(f"--cors-origin {origin!r}: give an origin like https://example.org (scheme and host)")
    app.add_middleware(CORSMiddleware, allow_origins=list(origins), allow_methods=["GET", "POST"],
                       allow_headers=["Authorization", "X-API-Key", "Content-Type"], max_age=600)
