"""The FastAPI app: routes under ``/v1``, probes, and JSON errors with codes."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine
from starlette.exceptions import HTTPException
from starlette.types import Scope

from api.deps import Unauthorized
from api.forms import InvalidBody
from api.limits import RequestSizeLimit
from api.routes import exports, health, images, jobs, lines, metrics, models, review
from htrq.db import make_engine, make_sessions
from htrq.errors import PageError
from htrq.jobs import (
    IdempotencyConflict,
    JobNotFinished,
    NoPageSucceeded,
    NotFound,
    PageNotSucceeded,
)
from htrq.jobs.corrections import InvalidCorrection
from htrq.models import DEFAULT_TENANT
from htrq.queue import CelerySender, make_celery
from htrq.rendering import RenderUnavailable
from htrq.settings import Settings, load_settings
from htrq.storage import StorageUnavailable, open_store
from htrq.tenant_models import ModelExists
from htrq.tenants.limits import Limited, LimitSettings, TenantLimiter

log = logging.getLogger(__name__)

#: Files the API serves itself (Swagger UI's assets).
STATIC = Path(__file__).parent / "static"

#: HTTP status for each refusal code; any other code is a 422.
PAGE_ERROR_STATUS = {
    "too_large": 413,
    "too_many_pages": 413,
    "request_too_large": 413,
    "unsupported_format": 415,
}


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _closing_if_unread(request: Request, response: JSONResponse) -> JSONResponse:
    """``response``, closing the connection after it when the request's body was not read to
    its end: the server would otherwise receive (and throw away) the rest of an upload that
    was refused before it arrived, a 1 GiB body without a key included."""
    has_body = request.headers.get("content-length", "0") != "0" or (
        "transfer-encoding" in request.headers
    )
    if has_body and not request.scope.get("htrq.body_read"):
        response.headers["Connection"] = "close"
    return response


def _openapi_with_error_bodies(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The app's OpenAPI document, its 422 answers as they are: FastAPI declares its own
    validation error body (``{"detail": [...]}``) for every route that takes parameters,
    where this API answers ``{"error": {"code": "invalid_request", ...}}`` like every error."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = app.openapi_schema
        if schema is None:
            schema = generate()
            for operations in schema["paths"].values():
                for operation in operations.values():
                    invalid = operation.get("responses", {}).get("422")
                    if invalid is not None:
                        invalid["content"] = {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ErrorBody"}
                            }
                        }
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
        return schema

    return openapi


#: Parameters whose refusal has a code of its own (the same the service function gives).
FIELD_CODES = {("query", "cursor"): "invalid_cursor"}

#: What the service functions raise that a client can act on, and the answer each gets: a
#: status and an error code, with the exception's text as the message.
REFUSALS: dict[type[Exception], tuple[int, str]] = {
    NotFound: (404, "not_found"),
    PageNotSucceeded: (409, "page_not_succeeded"),
    JobNotFinished: (409, "job_not_finished"),
    NoPageSucceeded: (409, "no_page_succeeded"),
    IdempotencyConflict: (409, "idempotency_conflict"),
    ModelExists: (409, "model_exists"),
    InvalidCorrection: (422, "invalid_request"),
}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    if not settings.database_url or not settings.broker_url:
        raise ValueError("the API needs HTRQ_DATABASE_URL and HTRQ_BROKER_URL")
    # A fixed pool: under load, overflow connections would be opened and closed request by
    # request, each a new PostgreSQL backend (a fork and an authentication).
    engine = make_engine(
        settings.database_url, pool_size=settings.api_db_pool, max_overflow=0, pool_timeout=30
    )
    app = FastAPI(
        title="htrq",
        version="1",
        summary="Handwritten pages in, text with confidences out.",
        lifespan=_lifespan(settings, engine),
        # Served below from files in the package: FastAPI's defaults load Swagger UI and
        # ReDoc from a CDN, which leaves /docs blank on a network without internet.
        docs_url=None,
        redoc_url=None,
    )
    _serve_docs(app)
    _open_services(app, settings, engine)
    _include_routes(app)
    # Assigning app.openapi is how FastAPI's documentation customises the schema; mypy
    # refuses any assignment to a method.
    app.openapi = _openapi_with_error_bodies(app)  # type: ignore[method-assign]
    _answer_errors(app)
    app.add_middleware(RequestSizeLimit, max_bytes=settings.max_request_bytes)
    return app


def _lifespan(
    settings: Settings, engine: Engine
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # The routes are sync: they run on AnyIO's thread pool, which need not be larger than
        # the connection pool they share.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        yield
        engine.dispose()

    return lifespan


def _serve_docs(app: FastAPI) -> None:
    """Swagger UI at ``/docs``, its assets from the package (``api/static``)."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="htrq API",
            swagger_js_url="/static/swagger/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger/swagger-ui.css",
            swagger_favicon_url="/static/swagger/favicon-32x32.png",
        )


def _open_services(app: FastAPI, settings: Settings, engine: Engine) -> None:
    """What the routes take from the app's state (``api/deps.py``)."""
    app.state.settings = settings
    app.state.sessions = make_sessions(engine)
    app.state.default_tenant = None  # looked up on the first request while auth is off
    if settings.auth == "off":
        log.warning(
            "HTRQ_AUTH=off: every request acts as the %r tenant, without a key; run it so "
            "only on a network you trust",
            DEFAULT_TENANT,
        )
    if settings.secret_key is None:
        log.warning(
            "HTRQ_SECRET_KEY is unset: new tenants' webhook secrets are stored in plain text; "
            "set it (and run `htrq tenants encrypt-secrets`) to store them encrypted"
        )
    app.state.storage = open_store(settings)
    app.state.sender = CelerySender(make_celery(settings, name="htrq-api"))
    assert settings.broker_url  # create_app refuses to start without it
    app.state.limiter = TenantLimiter.from_url(
        settings.broker_url,
        LimitSettings(
            rate=settings.tenant_rate,
            burst=settings.tenant_burst,
            heavy=settings.tenant_heavy,
            slot_seconds=settings.tenant_slot_seconds,
        ),
    )


def _include_routes(app: FastAPI) -> None:
    app.include_router(jobs.router)
    app.include_router(health.router)
    app.include_router(exports.router)
    app.include_router(metrics.router)
    app.include_router(lines.router)
    app.include_router(images.router)
    app.include_router(review.router)
    app.include_router(models.router)
    app.mount("/review/static", review.static_files(), name="review-static")


def _answer_errors(app: FastAPI) -> None:
    """Every error as ``{"error": {"code": ..., "message": ...}}`` with its status."""

    def refuse(_: Request, exc: Exception) -> JSONResponse:
        status, code = next(REFUSALS[c] for c in type(exc).__mro__ if c in REFUSALS)
        return error(status, code, str(exc))

    for refusal in REFUSALS:
        app.add_exception_handler(refusal, refuse)

    @app.exception_handler(PageError)
    def _page_error(request: Request, exc: PageError) -> JSONResponse:
        response = error(PAGE_ERROR_STATUS.get(exc.code, 422), exc.code, exc.message)
        return _closing_if_unread(request, response)

    @app.exception_handler(InvalidBody)
    def _invalid_body(request: Request, exc: InvalidBody) -> JSONResponse:
        return _closing_if_unread(request, error(400, "invalid_request", str(exc)))

    @app.exception_handler(Unauthorized)
    def _unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        response = error(401, "unauthorized", str(exc))
        response.headers["WWW-Authenticate"] = "Bearer"
        return _closing_if_unread(request, response)

    @app.exception_handler(Limited)
    def _limited(request: Request, exc: Limited) -> JSONResponse:
        response = error(429, exc.code, exc.message)
        response.headers["Retry-After"] = str(exc.retry_after)
        return _closing_if_unread(request, response)

    @app.exception_handler(StorageUnavailable)
    def _storage(_: Request, exc: StorageUnavailable) -> JSONResponse:
        # Nothing was written to the database: the client may send the same request again.
        return error(503, "storage_unavailable", f"{exc}; try again later")

    @app.exception_handler(RenderUnavailable)
    def _render(_: Request, exc: RenderUnavailable) -> JSONResponse:
        # No PDF renderer answered (all busy, out of time, or one died): the API itself is
        # fine and the same request may succeed later.
        response = error(503, exc.code, exc.message)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.exception_handler(RequestValidationError)
    def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        codes = {FIELD_CODES.get(tuple(e["loc"]), "invalid_request") for e in exc.errors()}
        return error(422, codes.pop() if len(codes) == 1 else "invalid_request", problems)

    @app.exception_handler(HTTPException)
    def _http(request: Request, exc: HTTPException) -> JSONResponse:
        # 400: a body that cannot be parsed at all (such as broken JSON).
        codes = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}
        code = codes.get(exc.status_code, "http_error")
        response = error(exc.status_code, code, str(exc.detail))
        if exc.headers:
            response.headers.update(exc.headers)
        if exc.status_code == 405:
            # RFC 9110: a 405 lists the methods the resource has. Starlette names those of the
            # first route on the path only; a path can have several (GET and DELETE a job).
            response.headers["Allow"] = ", ".join(_methods_of(app, request.scope))
        return response


def _methods_of(app: FastAPI, scope: Scope) -> list[str]:
    """Every method the OpenAPI document gives the path of ``scope`` (HEAD with GET, as
    Starlette answers it), in a fixed order."""
    path = scope["path"]
    methods: set[str] = set()
    for template, operations in app.openapi()["paths"].items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            methods |= {m.upper() for m in operations}
    if "GET" in methods:
        methods.add("HEAD")
    order = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return sorted(methods, key=lambda m: order.index(m) if m in order else len(order))
