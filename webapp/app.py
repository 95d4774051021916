"""The FastAPI app: the page, the JSON API, and the guards every request passes.

    GET  /                              the drawing page (static/index.html)
    GET  /healthz                       {"status": "ok"}
    GET  /api/model                     classes, image size, kind, index, limits
    POST /api/classify                  strokes or an image -> top classes with probabilities
    POST /api/search                    strokes or an image -> nearest gallery items
    POST /api/recognize                 both, from one pass of the model (what the page asks)
    GET  /api/items/{item}/thumbnail.png  a gallery item's thumbnail (item: an integer)

Every error is JSON {"error": "..."} with a 4xx status: a body over the byte limit is refused
before it is read whole (413), and no part of a request names a file: thumbnails are looked up
by their integer position in the index.
"""

from __future__ import annotations

import pathlib

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from webapp.inputs import InputError, parse_body
from webapp.service import SketchService

STATIC = pathlib.Path(__file__).resolve().parent / "static"


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: 413 for a request body over `max_bytes`, by its Content-Length when it
    gives one, else by counting the streamed chunks, so an oversized body is never held whole."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._refuse(send, f"request body of {length.decode(errors='replace')} bytes; "
                                            f"this server takes at most {self.max_bytes:,}.")
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send, f"request body over {self.max_bytes:,} bytes.")

    @staticmethod
    async def _refuse(send, message: str) -> None:
        body = orjson.dumps({"error": message})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(service: SketchService) -> FastAPI:
    """The app over a loaded SketchService."""
    app = FastAPI(title="Sketch recognition", summary="Draw, and the exported model answers.",
                  docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")

    @app.exception_handler(InputError)
    async def input_error(request: Request, err: InputError):
        return error(err.status, str(err))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        return error(err.status_code, str(err.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(422, f"{where}: {first.get('msg', 'invalid request')}")

    async def model_input(request: Request):
        """The body as a ModelInput, parsed (and an image's header read) in the thread pool, as the
        model's work then is: nothing slow runs on the event loop."""
        body = await request.body()
        return await run_in_threadpool(parse_body, request.headers.get("content-type"), body, service.limits)

    @app.post("/api/classify", summary="Top classes of a drawing (strokes JSON) or an image")
    async def classify(request: Request):
        return await run_in_threadpool(service.classify, await model_input(request))

    @app.post("/api/search", summary="Nearest gallery items of a drawing (strokes JSON) or an image")
    async def search(request: Request):
        return await run_in_threadpool(service.search, await model_input(request))

    @app.post("/api/recognize", summary="Top classes and nearest gallery items of a drawing, from one model pass")
    async def recognize(request: Request):
        return await run_in_threadpool(service.recognize, await model_input(request))

    @app.get("/api/model", summary="The model and index being served")
    def describe():
        return service.describe()

    @app.get("/api/items/{item}/thumbnail.png", summary="A gallery item's thumbnail")
    def thumbnail(item: int):
        png = service.thumbnail_png(item)
        if png is None:
            return error(404, f"no thumbnail for item {item}: the index has {len(service.index or ())} items"
                              + ("" if service.has_thumbnails else " and no thumbnails") + ".")
        return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/healthz", summary="Liveness")
    def healthz():
        return {"status": "ok"}

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(BodyLimit, max_bytes=service.limits.max_body_bytes)
    return app
