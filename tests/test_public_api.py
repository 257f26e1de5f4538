"""What ``import memfuse`` offers: every error a caller can meet is importable from the top."""

from __future__ import annotations

import inspect

import memfuse
from memfuse import errors


def test_every_memfuse_error_is_exported() -> None:
    defined = {
        name
        for name, value in inspect.getmembers(errors, inspect.isclass)
        if issubclass(value, errors.MemfuseError) and value.__module__ == errors.__name__
    }
    assert defined <= set(memfuse.__all__), sorted(defined - set(memfuse.__all__))
    for name in defined:
        assert getattr(memfuse, name) is getattr(errors, name)
