"""The Starlette application of ``vatt serve``: one page, a JSON API, thumbnails and the indexed media files.

Routes (every error is JSON ``{"error": "one line"}``: a 4xx status, or 500 for a bug, whose traceback the server
logs):

- ``GET /`` the page (``static/index.html`` with ``static/app.js``, ``style.css`` and ``icon.svg``; no other origin is
  contacted, which its Content-Security-Policy enforces)
- ``GET /api/info`` the index, its model and spaces, the limits
- ``GET /api/search?q=TEXT&k=10`` a caption -> S_vt; ``POST /api/search?k=10`` (multipart field ``file``) a video or
  audio file -> S_va; both answer ``{"query", "space", "results": [...]}``
- ``GET /thumb/{row}`` a window's JPEG thumbnail
- ``GET /media/{source_id}`` an indexed file, with HTTP Range requests (206) so the page's player can seek to the
  matched segment. Only ids of files recorded in the index are served: no route takes a path from the client.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vattcli.errors import VattError
from vattcli.serve.service import SearchService
from vattcli.serve.uploads import receive_upload

STATIC = Path(__file__).parent / "static"
ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
          "icon.svg": "image/svg+xml"}
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; media-src 'self'; "
               "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")  # as Host headers name them (IPv6 in brackets)


def error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message.splitlines()[0] if message else "error"}, status_code=status)


class _SafeHeaders:
    """Pure ASGI middleware: ``nosniff`` and ``no-referrer`` on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-content-type-options", b"nosniff"),
                                      (b"referrer-policy", b"no-referrer")]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Handlers:
    """The endpoints, bound to one ``SearchService``."""

    def __init__(self, service: SearchService, upload_dir: Path | None) -> None:
        self.service, self.upload_dir = service, upload_dir
        self.assets = {name: (STATIC / name).read_bytes() for name in ASSETS}
        self.page = (STATIC / "index.html").read_bytes()

    async def index_page(self, request: Request) -> Response:
        return Response(self.page, media_type="text/html; charset=utf-8",
                        headers={"content-security-policy": PAGE_POLICY, "cache-control": "no-cache"})

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return error(f"no asset {name!r}", 404)
        return Response(self.assets[name], media_type=ASSETS[name], headers={"cache-control": "no-cache"})

    async def info(self, request: Request) -> Response:
        return JSONResponse(self.service.info())

    async def search_text(self, request: Request) -> Response:
        k = self.service.top_k(request.query_params.get("k"))
        result = await run_in_threadpool(self.service.search_text, request.query_params.get("q"), k)
        return JSONResponse(result)

    async def search_file(self, request: Request) -> Response:
        k = self.service.top_k(request.query_params.get("k"))
        async with receive_upload(request, limit=self.service.limits.max_upload, folder=self.upload_dir) as upload:
            result = await run_in_threadpool(self.service.search_file, upload.path, k, upload.name)
        return JSONResponse(result)

    async def thumbnail(self, request: Request) -> Response:
        row = request.path_params["row"]
        jpeg = await run_in_threadpool(self.service.thumbnail, row)
        if jpeg is None:
            return error(f"no thumbnail for window {row}", 404)
        return Response(jpeg, media_type="image/jpeg", headers={"cache-control": "private, max-age=3600"})

    async def media(self, request: Request) -> Response:
        source_id = request.path_params["source_id"]
        found = await run_in_threadpool(self.service.media, source_id)
        if found is None:
            return error(f"no media file {source_id} in this index (unknown, skipped, moved or changed)", 404)
        return FileResponse(found.path, media_type=found.content_type, content_disposition_type="inline")


async def _request_error(request: Request, exc: Exception) -> Response:
    return error(str(exc), getattr(exc, "status", 400))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error(str(exc.detail), exc.status_code)


async def _bug(request: Request, exc: Exception) -> Response:
    """An exception no endpoint expected: a one-line 500 (Starlette re-raises it after, so uvicorn logs the
    traceback)."""
    return error(f"internal error ({type(exc).__name__}); this is a bug, please report it", 500)


def create_app(service: SearchService, *, upload_dir: Path | None = None,
               allowed_hosts: Sequence[str] | None = None) -> Starlette:
    """The application over ``service``. ``upload_dir``: where query files are streamed to (default: the system's
    temp folder). ``allowed_hosts``: Host header names accepted (a loopback server passes ``LOOPBACK_HOSTS``, so a
    web page elsewhere cannot reach it through DNS rebinding); None accepts any."""
    h = Handlers(service, upload_dir)
    routes = [
        Route("/", h.index_page, methods=["GET"]),
        Route("/static/{name}", h.asset, methods=["GET"]),
        Route("/api/info", h.info, methods=["GET"]),
        Route("/api/search", h.search_text, methods=["GET"]),
        Route("/api/search", h.search_file, methods=["POST"]),
        Route("/thumb/{row:int}", h.thumbnail, methods=["GET"]),
        Route("/media/{source_id:int}", h.media, methods=["GET"]),
    ]
    middleware = [Middleware(_SafeHeaders)]
    if allowed_hosts is not None:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)))
    handlers = {VattError: _request_error, HTTPException: _http_error, Exception: _bug}
    return Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)
