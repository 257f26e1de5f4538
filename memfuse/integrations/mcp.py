"""The MCP server: memfuse's memory as tools an assistant calls (``memfuse mcp``, the ``mcp``
extra, on the official ``mcp`` SDK's ``MCPServer``).

Tools, named as mem0's MCP server names them where they overlap: ``add_memory``,
``search_memories``, ``get_memories``, ``get_memory``, ``update_memory``, ``delete_memory``,
``delete_all_memories``. Each calls the public ``MemFuse``/``Memory`` API; a memfuse error comes
back as an MCP tool error carrying its message, never as a crash of the server.

Tenancy: the server has a default user. Started with ``fixed_user`` (``memfuse mcp --user
NAME``) it serves that user only, and a call naming another user is refused; otherwise a call
may name its ``user_id`` (a local, single-operator tool). Over HTTP the key rules of ``memfuse
serve`` hold: without a key only 127.0.0.1 is served; with ``MEMFUSE_SERVER_API_KEY`` every
request needs it (:func:`http_app`).
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field
from starlette.types import ASGIApp, Receive, Scope, Send

from memfuse.errors import MemfuseError, NotFoundError
from memfuse.memory import MemFuse, Memory
from memfuse.types import Layer, SearchResult

T = TypeVar("T")

DEFAULT_USER = "default"
DEFAULT_SESSION = "mcp"
"""The session memories go to when a call names none."""

INSTRUCTIONS = (
    "Long-term memory for this user. Call search_memories before answering anything that "
    "may depend on what the user said earlier or told you to remember; call add_memory with "
    "a short statement when the user tells you something worth remembering (a preference, a "
    "fact about them, a decision), or with the conversation's messages to keep them."
)

UserId = Annotated[
    str | None,
    Field(description="Whose memory (a user name). Leave out for the server's default user."),
]
MemoryId = Annotated[
    str, Field(description="The id of a message or remembered statement (from a result).")
]
SessionName = Annotated[
    str | None,
    Field(description="A conversation name; leave out for the default one."),
]


def _memory_json(result: SearchResult) -> dict[str, Any]:
    return {
        "id": str(result.id),
        "memory": result.content,
        "type": {"m0": "message", "m1": "episode", "m2": "fact"}.get(result.layer, result.layer),
        "score": round(result.score, 6),
        "created_at": result.created_at.isoformat(),
        "role": result.role,
    }


async def _tool(call: Awaitable[T]) -> T:
    """Run a memfuse call; its errors become MCP tool errors with memfuse's message."""
    try:
        return await call
    except MemfuseError as error:
        raise ToolError(str(error)) from error


def create_mcp_server(
    memfuse: MemFuse,
    *,
    fixed_user: str | None = None,
    default_user: str = DEFAULT_USER,
    agent: str | None = None,
    session: str = DEFAULT_SESSION,
    owns: bool = True,
) -> MCPServer[None]:
    """The MCP server over ``memfuse``: started by the server's lifespan (each client session
    in the streamable HTTP transport runs it: starting is idempotent) and closed with it if
    ``owns`` (stdio: one session per process)."""
    home = fixed_user or default_user

    @asynccontextmanager
    async def lifespan(server: MCPServer[None]) -> AsyncIterator[None]:
        await memfuse.start()
        try:
            yield
        finally:
            if owns:
                await memfuse.close()

    server: MCPServer[None] = MCPServer(
        name="memfuse", instructions=INSTRUCTIONS, lifespan=lifespan
    )

    async def memory_of(user_id: str | None, session_name: str | None = None) -> Memory:
        user = user_id or home
        if fixed_user is not None and user != fixed_user:
            raise ToolError(f"this server serves user {fixed_user!r} only")
        return await _tool(memfuse.init(user, agent, session_name or session))

    @server.tool()
    async def add_memory(
        text: Annotated[
            str | None,
            Field(description="A statement to remember, e.g. 'Alice is allergic to peanuts'."),
        ] = None,
        messages: Annotated[
            list[dict[str, Any]] | None,
            Field(
                description="Conversation messages to keep: [{'role': 'user'|'assistant'|"
                "'system'|'tool', 'content': str}, ...]"
            ),
        ] = None,
        user_id: UserId = None,
        session: SessionName = None,
        metadata: Annotated[
            dict[str, Any] | None, Field(description="Optional JSON stored with each item.")
        ] = None,
    ) -> dict[str, Any]:
        """Remember something: a statement (stored as a knowledge item of the user) and/or
        conversation messages (stored in the session, from which episodes and facts are
        derived). Give text, messages, or both. Returns the new ids."""
        if text is None and not messages:
            raise ToolError("give text or messages")
        memory = await memory_of(user_id, session)
        added: dict[str, Any] = {}
        if text is not None:
            item: dict[str, Any] = {"content": text}
            if metadata:
                item["metadata"] = metadata
            rows = await _tool(memory.add_knowledge([item]))
            added["memory_ids"] = [str(row.id) for row in rows]
        if messages:
            with_metadata = [
                {**message, "metadata": metadata} if metadata else message for message in messages
            ]
            ids = await _tool(memory.add(with_metadata))
            added["message_ids"] = [str(message_id) for message_id in ids]
        return added

    @server.tool()
    async def search_memories(
        query: Annotated[str, Field(description="What to look for, in plain words.")],
        top_k: Annotated[int, Field(ge=1, le=100, description="How many results.")] = 5,
        max_tokens: Annotated[
            int | None,
            Field(ge=1, description="Fill this token budget instead of returning top_k."),
        ] = None,
        layers: Annotated[
            list[Literal["messages", "episodes", "facts", "knowledge"]] | None,
            Field(description="Which kinds of memory to search; all by default."),
        ] = None,
        session: Annotated[
            str | None, Field(description="Only this conversation (by name).")
        ] = None,
        since: Annotated[
            datetime | None, Field(description="Only things said at or after this time.")
        ] = None,
        until: Annotated[
            datetime | None, Field(description="Only things said before this time.")
        ] = None,
        user_id: UserId = None,
    ) -> dict[str, Any]:
        """Search the user's memory (conversations, derived facts and remembered statements)
        by meaning and by words; best first."""
        memory = await memory_of(user_id)
        names: dict[str, Layer] = {
            "messages": "m0",
            "episodes": "m1",
            "facts": "m2",
            "knowledge": "knowledge",
        }
        chosen = [names[layer] for layer in layers] if layers else None
        results = await _tool(
            memory.query(
                query,
                None if max_tokens is not None else top_k,
                max_tokens=max_tokens,
                layers=chosen,
                session=session,
                since=since,
                until=until,
            )
        )
        return {"results": [_memory_json(result) for result in results]}

    @server.tool()
    async def get_memories(
        kind: Annotated[
            Literal["messages", "knowledge", "facts", "episodes"],
            Field(description="Which memories to list."),
        ] = "knowledge",
        session: Annotated[
            str | None,
            Field(description="Messages, episodes and facts of this conversation only."),
        ] = None,
        limit: Annotated[int, Field(ge=1, le=1000)] = 20,
        offset: Annotated[int, Field(ge=0)] = 0,
        user_id: UserId = None,
    ) -> dict[str, Any]:
        """List the user's memories, newest first, a page at a time."""
        memory = await memory_of(user_id, session)
        every = session is None
        items: list[dict[str, Any]]
        if kind == "knowledge":
            rows = await _tool(memory.list_knowledge(limit=limit, offset=offset))
            items = [
                {"id": str(row.id), "memory": row.content, "created_at": row.created_at.isoformat()}
                for row in rows
            ]
        elif kind == "messages":
            messages = await _tool(
                memory.list_messages(limit=limit, offset=offset, all_sessions=every)
            )
            items = [
                {
                    "id": str(row.id),
                    "memory": row.content,
                    "role": row.role,
                    "created_at": row.created_at.isoformat(),
                }
                for row in messages
            ]
        elif kind == "facts":
            facts = await _tool(memory.list_facts(limit=limit, offset=offset, all_sessions=every))
            items = [
                {"id": str(row.id), "memory": row.content, "created_at": row.created_at.isoformat()}
                for row in facts
            ]
        else:
            episodes = await _tool(
                memory.list_episodes(limit=limit, offset=offset, all_sessions=every)
            )
            items = [
                {"id": str(row.id), "memory": row.content, "created_at": row.created_at.isoformat()}
                for row in episodes
            ]
        return {"memories": items, "limit": limit, "offset": offset}

    async def find(memory: Memory, memory_id: str) -> tuple[str, Any]:
        try:
            parsed = uuid.UUID(memory_id)
        except ValueError:
            raise ToolError(f"memory_id {memory_id!r} is not a memory id") from None
        message = await _tool(memory.get_message(parsed))
        if message is not None:
            return "message", message
        item = await _tool(memory.get_knowledge(parsed))
        if item is not None:
            return "knowledge", item
        raise ToolError(f"memory {memory_id} does not exist")

    @server.tool()
    async def get_memory(memory_id: MemoryId, user_id: UserId = None) -> dict[str, Any]:
        """One memory by id: a message or a remembered statement."""
        kind, row = await find(await memory_of(user_id), memory_id)
        found: dict[str, Any] = {
            "id": str(row.id),
            "type": kind,
            "memory": row.content,
            "metadata": row.metadata,
            "created_at": row.created_at.isoformat(),
            "updated_at": row.updated_at.isoformat(),
        }
        return found

    @server.tool()
    async def update_memory(
        memory_id: MemoryId,
        text: Annotated[str, Field(description="The new text.")],
        user_id: UserId = None,
    ) -> dict[str, Any]:
        """Replace a memory's text (a message's episodes and facts are rebuilt)."""
        memory = await memory_of(user_id)
        kind, row = await find(memory, memory_id)
        if kind == "message":
            await _tool(memory.update_message(row.id, content=text))
        else:
            await _tool(memory.update_knowledge(row.id, content=text))
        return {"id": memory_id, "type": kind, "updated": True}

    @server.tool()
    async def delete_memory(memory_id: MemoryId, user_id: UserId = None) -> dict[str, Any]:
        """Forget one memory by id."""
        memory = await memory_of(user_id)
        kind, row = await find(memory, memory_id)
        if kind == "message":
            await _tool(memory.delete_message(row.id))
        else:
            await _tool(memory.delete_knowledge(row.id))
        return {"id": memory_id, "type": kind, "deleted": True}

    @server.tool()
    async def delete_all_memories(
        confirm: Annotated[
            bool,
            Field(description="Must be true: everything of the user is deleted, for good."),
        ],
        user_id: UserId = None,
    ) -> dict[str, Any]:
        """Forget everything of one user: every conversation, fact and remembered statement."""
        if confirm is not True:
            raise ToolError("nothing deleted: pass confirm=true to delete all memories")
        memory = await memory_of(user_id)
        try:
            await memory.delete_user()
        except NotFoundError:
            pass  # deleted meanwhile: the outcome asked for
        except MemfuseError as error:
            raise ToolError(str(error)) from error
        return {"user_id": memory.user, "deleted": True}

    return server


class RequireKey:
    """ASGI middleware: every request needs ``Authorization: Bearer <key>`` (constant time)."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            header = dict(scope.get("headers", ())).get(b"authorization", b"")
            scheme, _, given = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.key):
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": b'{"error": "invalid key"}'})
                return
        await self.app(scope, receive, send)


def http_app(server: MCPServer[None], admin_key: str | None, host: str) -> ASGIApp:
    """The streamable HTTP app (path ``/mcp``), behind the admin key when there is one."""
    app: ASGIApp = server.streamable_http_app(host=host)
    return app if admin_key is None else RequireKey(app, admin_key)


async def serve_stdio(memfuse: MemFuse, **options: Any) -> None:
    """Run the MCP server on stdin/stdout until the client closes it."""
    async with memfuse:
        await create_mcp_server(memfuse, owns=False, **options).run_stdio_async()


async def serve_http(
    memfuse: MemFuse, *, host: str, port: int, admin_key: str | None, **options: Any
) -> None:
    """Run the MCP server over streamable HTTP at ``http://host:port/mcp``."""
    import uvicorn

    async with memfuse:
        server = create_mcp_server(memfuse, owns=False, **options)
        config = uvicorn.Config(
            http_app(server, admin_key, host), host=host, port=port, log_level="warning"
        )
        await uvicorn.Server(config).serve()
