"""Checks of the response envelope every test of the server makes."""

from __future__ import annotations

from typing import Any

import httpx

ADMIN_KEY = "admin-key-for-tests-0123456789abcdef"


def ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    """The ``data`` of a successful envelope, after checking the envelope itself."""
    body = response.json()
    assert response.status_code == status, body
    assert body["status"] == "success" and body["code"] == status and body["errors"] is None
    data: dict[str, Any] = body["data"]
    return data


def failed(response: httpx.Response, status: int, field: str | None = None) -> str:
    """The message of an error envelope with this status (and first field, if given)."""
    body = response.json()
    assert response.status_code == status, body
    assert body["status"] == "error" and body["code"] == status and body["data"] is None
    assert "Traceback" not in body["message"]
    if field is not None:
        assert body["errors"] and body["errors"][0]["field"] == field, body
    message: str = body["message"]
    return message
