"""What ``import memfuse`` offers: a deliberate list of names, and every type a public method
takes or returns among them, so callers never import from internal modules."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterator
from types import UnionType
from typing import Any, Literal, ParamSpec, TypeVar, Union, get_args, get_origin, get_type_hints

import memfuse
from memfuse import errors, types


def test_every_memfuse_error_is_exported() -> None:
    defined = {
        name
        for name, value in inspect.getmembers(errors, inspect.isclass)
        if issubclass(value, errors.MemfuseError) and value.__module__ == errors.__name__
    }
    assert defined <= set(memfuse.__all__), sorted(defined - set(memfuse.__all__))
    for name in defined:
        assert getattr(memfuse, name) is getattr(errors, name)


EXPORTED = {
    # the facade, its settings and its container
    "MemFuse",
    "Memory",
    "Settings",
    "PoolSettings",
    "load_settings",
    "Container",
    "__version__",
    # what its methods take and return (memfuse.types)
    "MemoryScope",
    "MessageRow",
    "EpisodeRow",
    "FactRow",
    "KnowledgeRow",
    "UserRow",
    "AgentRow",
    "SessionRow",
    "ApiKeyRow",
    "Page",
    "FilterIds",
    "ChunkData",
    "SearchResult",
    "HealthReport",
    "Check",
    "TaskState",
    "TaskStatus",
    "BufferStats",
    "WorkerStats",
    "RetrievalStats",
    "Layer",
    "Method",
    "Unit",
    "Order",
    "Role",
    # the services ``mf.tenancy``, ``mf.knowledge`` and ``mf.api_keys`` return (servers)
    "TenancyService",
    "KnowledgeService",
    "ApiKeyService",
    # the monitor ``mf.monitor`` returns, and what it reports
    "PerformanceMonitor",
    "OperationStats",
    "Alert",
    "Regression",
    # extension points a container override takes
    "Embedder",
    "FactExtractor",
    "FactCandidate",
    # errors
    "MemfuseError",
    "ClosedError",
    "ConfigurationError",
    "ConflictError",
    "DatabaseUnavailableError",
    "DimensionMismatchError",
    "EmbeddingError",
    "ExtractionError",
    "ModelCallError",
    "NotFoundError",
    "PipelineError",
    "SchemaError",
    "ValidationError",
}

STANDARD_MODULES = {
    *("builtins", "typing", "types", "collections.abc", "contextlib"),
    *("uuid", "datetime", "pathlib"),
}
"""Types from these modules may appear in public signatures without being re-exported."""


def test_all_is_the_deliberate_surface() -> None:
    assert set(memfuse.__all__) == EXPORTED
    assert len(memfuse.__all__) == len(EXPORTED), "no name is listed twice"
    for name in memfuse.__all__:
        assert hasattr(memfuse, name), name


def test_the_types_of_the_issue_import_from_the_top() -> None:
    from memfuse import EmbeddingError, EpisodeRow, FactRow, HealthReport, MessageRow
    from memfuse import SearchResult as Result

    assert Result is types.SearchResult and MessageRow is types.MessageRow
    assert (EpisodeRow, FactRow, HealthReport) == (
        types.EpisodeRow,
        types.FactRow,
        types.HealthReport,
    )
    assert issubclass(EmbeddingError, memfuse.MemfuseError)


BUILT_BY_THE_CONTAINER = {"TenancyService", "KnowledgeService", "ApiKeyService"}
"""Services a caller reaches through ``MemFuse``'s properties and never builds: their
``__init__`` takes the container's wiring (session factories, hooks), not caller types."""


def _public_members(cls: type) -> dict[str, Any]:
    """Annotated things a caller touches: public methods, properties and fields, and __init__
    (unless the container builds the class)."""
    members: dict[str, Any] = {}
    for name, value in vars(cls).items():
        if name.startswith("_") and (name != "__init__" or cls.__name__ in BUILT_BY_THE_CONTAINER):
            continue
        if isinstance(value, property):
            value = value.fget
        if isinstance(value, staticmethod | classmethod):
            value = value.__func__
        if inspect.isfunction(value):
            members[name] = value
    if dataclasses.is_dataclass(cls):
        members["<fields>"] = cls
    return members


def _named_types(hint: object) -> Iterator[object]:
    """Every class a type hint names, through unions, generics, ``Callable`` and ``Literal``."""
    if get_origin(hint) is Literal:
        return
    if isinstance(hint, TypeVar | ParamSpec) or hint in (Any, None, type(None), Ellipsis):
        return
    origin = get_origin(hint)
    if origin is not None:
        if origin not in (Union, UnionType):
            yield origin
        for argument in get_args(hint):
            if isinstance(argument, list):  # Callable's parameter list
                for parameter in argument:
                    yield from _named_types(parameter)
            else:
                yield from _named_types(argument)
        return
    yield hint


def test_public_signatures_name_only_exported_types() -> None:
    """A user can annotate anything memfuse hands them with a name from ``memfuse``."""
    exported = {id(getattr(memfuse, name)) for name in memfuse.__all__}
    problems: list[str] = []
    for name in sorted(memfuse.__all__):
        value = getattr(memfuse, name)
        if not inspect.isclass(value) or issubclass(value, BaseException):
            continue
        if not value.__module__.startswith("memfuse"):
            continue
        for member, target in _public_members(value).items():
            for hint in get_type_hints(target).values():
                for named in _named_types(hint):
                    module = getattr(named, "__module__", "")
                    if module in STANDARD_MODULES or id(named) in exported:
                        continue
                    problems.append(f"{name}.{member} names {module}.{named!r}")
    assert problems == [], "\n".join(problems)
