"""The JSON envelope of every response, errors included, and the errors' HTTP statuses.

``{"status": "success"|"error", "code": <HTTP status>, "data": {...}|null, "message": str,
"errors": [{"field", "message"}]|null}``. The SDK parses the body of every response (deletes
too) and decides success by the HTTP status alone, so an error is never sent with 200 and a
response is never empty. No stack trace reaches a client: unexpected errors are logged and
answered with a generic 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from memfuse.db.errors import database_error
from memfuse.errors import (
    ClosedError,
    ConflictError,
    DatabaseUnavailableError,
    MemfuseError,
    NotFoundError,
    ValidationError,
)

logger = logging.getLogger(__name__)

ERROR_STATUS: dict[type[MemfuseError], int] = {
    ValidationError: 400,
    NotFoundError: 404,
    ConflictError: 409,
    DatabaseUnavailableError: 503,
    ClosedError: 503,
}
"""The HTTP status of each memfuse error (subclasses take their base's); others are 500."""


class ApiError(Exception):
    """An error a route answers with: its status, message and the fields at fault."""

    def __init__(self, status: int, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


def success(data: Any, message: str = "ok", status: int = 200) -> JSONResponse:
    body = {
        "status": "success",
        "code": status,
        "data": jsonable_encoder(data),
        "message": message,
        "errors": None,
    }
    return JSONResponse(body, status_code=status)


def failure(status: int, message: str, errors: list[dict[str, str]] | None = None) -> JSONResponse:
    body = {"status": "error", "code": status, "data": None, "message": message, "errors": errors}
    return JSONResponse(body, status_code=status)


def _status_of(error: MemfuseError) -> int:
    for kind in type(error).__mro__:
        if kind in ERROR_STATUS:
            return ERROR_STATUS[kind]
    return 500


def install_error_handlers(app: FastAPI) -> None:
    """Every error becomes an envelope with its real status."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        errors = [{"field": error.field, "message": error.message}] if error.field else None
        return failure(error.status, error.message, errors)

    @app.exception_handler(MemfuseError)
    async def memfuse_error(request: Request, error: MemfuseError) -> JSONResponse:
        status = _status_of(error)
        if status >= 500:
            logger.warning("%s %s failed: %s", request.method, request.url.path, error)
        field = getattr(error, "field", None)
        errors = [{"field": field, "message": str(error)}] if field else None
        return failure(status, str(error), errors)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "field": ".".join(str(part) for part in problem.get("loc", ())[1:]) or "body",
                "message": str(problem.get("msg", "invalid")),
            }
            for problem in error.errors()
        ]
        first = errors[0] if errors else {"field": "body", "message": "invalid"}
        return failure(400, f"field {first['field']!r}: {first['message']}", errors)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return failure(error.status_code, str(error.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        translated = database_error(error, request.app.state.memfuse.settings.database_url)
        if translated is not None:  # the database is unreachable: 503, as the facade says
            return await memfuse_error(request, translated)
        logger.exception("%s %s failed", request.method, request.url.path)
        return failure(500, "internal server error")
