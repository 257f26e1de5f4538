"""Optional OpenTelemetry spans for ``Memory.add``, ``Memory.query`` and ``MemFuse.flush``.

With the ``otel`` extra, spans go to whatever tracer provider the app configured (the API's own
no-op one if none); without it, :func:`span` yields ``None`` and costs next to nothing. The
tracer is looked up on every call, not cached at import, so a provider the app sets after
importing memfuse is the one used.

Attributes are counts, options and memfuse's own ids: never message or query text, and never
user, agent or session names, which apps often fill with emails or handles.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from importlib.metadata import version
from typing import TYPE_CHECKING

try:
    from opentelemetry import trace
except ImportError:
    ENABLED = False
else:
    ENABLED = True

if TYPE_CHECKING:
    from opentelemetry.trace import Span
    from opentelemetry.util.types import AttributeValue


@contextmanager
def span(name: str, attributes: Mapping[str, AttributeValue]) -> Iterator[Span | None]:
    """A span made current for the block, so the app's own spans inside it nest under it.

    An exception is recorded on the span, which is marked as an error, and propagates unchanged.
    """
    if not ENABLED:
        yield None
        return
    tracer = trace.get_tracer("memfuse", _version())
    with tracer.start_as_current_span(name, attributes=attributes) as current:
        yield current


@cache
def _version() -> str:
    """The installed distribution's version, read once (from its metadata, not ``memfuse``)."""
    return version("memfuse")
