"""One JSON endpoint of an OpenAI-compatible HTTP API, with the failure handling both the LLM
fact extractor and the HTTP embedder need: argument checks, per-request timeouts, retries with
exponential backoff (or a numeric ``Retry-After``) on timeouts, transport errors, HTTP 408, 429
and 5xx, and an API key that never reaches an error, a log line or a ``repr``.

httpx (the ``llm`` extra) is imported only when a client is made, so importing this module
needs nothing optional.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeGuard, TypeVar

from memfuse.errors import ClosedError, ConfigurationError, ModelCallError

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_DELAY = 30.0
"""Longest wait honoured from a ``Retry-After`` header or computed backoff, in seconds."""

PREVIEW_CHARS = 300
"""How much of a failing body goes into logs and error messages."""


class RetryableError(Exception):
    """A failure worth another attempt: a timeout, 408/429/5xx, an unusable body."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class JsonApiClient:
    """POSTs JSON to ``{base_url}{path}`` and retries what is worth retrying.

    ``failure`` names the operation in errors and logs ("embedding"), ``request`` one call
    ("embedding request"), ``owner`` the object that holds this client ("embedder"), and
    ``error`` is the exception raised once a request has failed for good. A ``client`` passed
    in is used as is (its timeout is overridden per request) and is not closed by
    :meth:`aclose`.
    """

    def __init__(
        self,
        base_url: str,
        path: str,
        *,
        model: str,
        api_key: str | None,
        timeout: float,
        max_retries: int,
        backoff_base: float,
        client: httpx.AsyncClient | None,
        error: type[ModelCallError],
        failure: str,
        request: str,
        owner: str,
    ) -> None:
        base = validate_base_url(base_url)
        if api_key is not None and not isinstance(api_key, str):
            raise ConfigurationError("api_key", "must be a string or None")
        if not is_number(timeout) or not math.isfinite(timeout) or timeout <= 0:
            raise ConfigurationError(
                "timeout", f"must be a positive number of seconds, got {timeout!r}"
            )
        if not is_int(max_retries) or max_retries < 0:
            raise ConfigurationError("max_retries", f"must be an integer >= 0, got {max_retries!r}")
        if not is_number(backoff_base) or not math.isfinite(backoff_base) or backoff_base < 0:
            raise ConfigurationError(
                "backoff_base", f"must be a number of seconds >= 0, got {backoff_base!r}"
            )
        self.url = f"{base}{path}"
        self.display_url = without_userinfo(self.url)
        self.model = model
        # An empty key (an unset environment variable) means no key, not "Bearer ".
        self._api_key = api_key.strip() if api_key and api_key.strip() else None
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff_base = float(backoff_base)
        self._client = client
        self._owns_client = client is None
        self._error = error
        self._failure = failure
        self._request_name = request
        self._owner = owner
        self.closed = False

    async def aclose(self) -> None:
        """Close the HTTP client if this object created it; later requests fail."""
        self.closed = True
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def check_open(self) -> None:
        if self.closed:
            raise ClosedError(f"the {self._owner} is closed")

    async def post(self, body: dict[str, Any], parse: Callable[[httpx.Response], T]) -> T:
        """POST ``body`` and return ``parse(response)`` of a 2xx answer, retrying as needed.

        ``parse`` may raise :class:`RetryableError` for an unusable answer.
        """
        headers = {"Accept": "application/json"}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key}"
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            try:
                return parse(await self._request(body, headers))
            except RetryableError as error:
                if attempt + 1 >= attempts:
                    raise self._error(
                        f"{self._failure} failed after {attempts} attempt(s) "
                        f"(POST {self.display_url}, model {self.model!r}): {error.reason}",
                        transient=True,
                    ) from None
                delay = self.delay(attempt, error.retry_after)
                logger.warning(
                    "%s attempt %d/%d failed (%s); retrying in %.2f s",
                    self._failure,
                    attempt + 1,
                    attempts,
                    error.reason,
                    delay,
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter, or the server's ``Retry-After``; both capped."""
        if retry_after is not None:
            return min(retry_after, MAX_DELAY)
        backoff = self.backoff_base * 2.0**attempt
        return min(backoff + random.uniform(0.0, 0.1 * backoff), MAX_DELAY)

    def _http(self) -> httpx.AsyncClient:
        import httpx

        if self._client is None:
            self.check_open()
            self._client = httpx.AsyncClient(timeout=self.timeout)
        return self._client

    async def _request(self, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
        """One POST: a 2xx response, or ``RetryableError`` / the client's error."""
        import httpx

        request = f"{self._request_name} to {self.display_url}"
        try:
            response = await self._http().post(
                self.url, json=body, headers=headers, timeout=self.timeout
            )
        except httpx.TimeoutException as error:
            raise RetryableError(
                f"request timed out after {self.timeout:g} s ({type(error).__name__})"
            ) from None
        except httpx.TransportError as error:
            raise RetryableError(
                f"transport error: {type(error).__name__}: {self.redact(str(error))}"
            ) from None
        except httpx.HTTPError as error:
            raise self._error(
                f"{request} failed: {type(error).__name__}: {self.redact(str(error))}"
            ) from None
        status = response.status_code
        if status == 429 or status == 408 or status >= 500:
            raise RetryableError(
                f"HTTP {status}: {self.preview(response.text)}",
                retry_after(response.headers.get("Retry-After")),
            )
        if not 200 <= status < 300:
            raise self._error(
                f"{request} (model {self.model!r}) was rejected with HTTP {status}: "
                f"{self.preview(response.text)}"
            )
        return response

    def redact(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text

    def preview(self, text: str) -> str:
        """A short, single-line, key-free excerpt of a body for logs and errors."""
        text = self.redact(" ".join(text.split()))
        if len(text) > PREVIEW_CHARS:
            return text[:PREVIEW_CHARS] + "…"
        return text or "<empty body>"


def retry_after(value: str | None) -> float | None:
    """Seconds from a numeric ``Retry-After``; HTTP dates are ignored (backoff applies)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def validate_base_url(base_url: Any) -> str:
    """An http(s) base URL with a host and no query, without its trailing slash."""
    import httpx

    if not isinstance(base_url, str) or not base_url.strip():
        raise ConfigurationError("base_url", "must be an http(s) URL such as http://host:8000/v1")
    text = base_url.strip().rstrip("/")
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as error:
        raise ConfigurationError("base_url", f"is not a valid URL: {error}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigurationError(
            "base_url", "must be an http(s) URL with a host, such as http://host:8000/v1"
        )
    if url.query or url.fragment:
        raise ConfigurationError("base_url", "must not have a query or fragment")
    return text


def without_userinfo(url: str) -> str:
    """The URL without any ``user:password@`` part, for logs and errors."""
    import httpx

    parsed = httpx.URL(url)
    if parsed.userinfo:
        return str(parsed.copy_with(username=None, password=None))
    return url


def is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:120] + "…"
