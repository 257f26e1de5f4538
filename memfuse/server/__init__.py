"""The REST server the official MemFuse SDK talks to (``memfuse serve``, the ``server`` extra).

A thin HTTP layer over :class:`~memfuse.memory.MemFuse`: every route checks who is asking
(:mod:`memfuse.server.auth`), then calls the facade or the services it exposes; no route runs
SQL of its own. Every response, errors included, is the SDK's JSON envelope
(:mod:`memfuse.server.envelope`). docs/server.md holds the contract.
"""

from memfuse.server.app import create_app

__all__ = ["create_app"]
