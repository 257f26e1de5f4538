"""``memfuse mcp`` driven by the official ``mcp`` SDK's own client over stdio: the server is a
subprocess on a real database with the real model; tools are listed and called as an
assistant would call them."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

pytestmark = [pytest.mark.model, pytest.mark.slow]

CHECKOUT = Path(__file__).resolve().parents[2]
TOOLS = {
    "add_memory",
    "search_memories",
    "get_memories",
    "get_memory",
    "update_memory",
    "delete_memory",
    "delete_all_memories",
}


def server(database_url: str, *options: str) -> StdioServerParameters:
    command = ["-m", "memfuse.cli", "--database-url", database_url, "mcp", *options]
    env = {key: value for key, value in os.environ.items() if key.startswith(("PATH", "HOME"))}
    env["HF_HUB_OFFLINE"] = "1"
    return StdioServerParameters(command=sys.executable, args=command, env=env, cwd=CHECKOUT)


def connect(database_url: str, *options: str) -> Client:
    """A client of a new server subprocess; enter it within the test (anyio's cancel scopes
    must close in the task that opened them, which a fixture's teardown is not)."""
    return Client(server(database_url, *options), read_timeout_seconds=120)


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    structured: dict[str, Any] = result.structured_content
    return structured


async def error_of(client: Client, tool: str, **arguments: Any) -> str:
    result = await client.call_tool(tool, arguments)
    assert result.is_error
    text: str = result.content[0].text  # type: ignore[union-attr]
    return text


async def test_tools_are_listed_with_schemas_for_a_model(database_url: str) -> None:
    async with connect(database_url) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(tools) == TOOLS
        search = tools["search_memories"]
        assert search.description and "Search" in search.description
        schema = search.input_schema
        assert schema["required"] == ["query"]
        assert "description" in schema["properties"]["query"]
        confirm = tools["delete_all_memories"].input_schema
        assert confirm["required"] == ["confirm"]


async def test_an_assistant_remembers_searches_edits_and_forgets(database_url: str) -> None:
    async with connect(database_url) as client:
        added = await call(client, "add_memory", text="Alice is allergic to peanuts")
        [memory_id] = added["memory_ids"]
        conversation = [
            {"role": "user", "content": "I'm flying to Lisbon on May 3rd."},
            {"role": "assistant", "content": "Noted, have a good trip!"},
        ]
        messages = await call(client, "add_memory", messages=conversation, session="travel")
        assert len(messages["message_ids"]) == 2

        found = await call(client, "search_memories", query="What is Alice allergic to?", top_k=3)
        stated = [item for item in found["results"] if item["type"] == "knowledge"]
        assert [item["id"] for item in stated] == [memory_id]
        trip = await call(client, "search_memories", query="Lisbon flight", layers=["messages"])
        assert trip["results"][0]["memory"] == "I'm flying to Lisbon on May 3rd."

        listed = await call(client, "get_memories", kind="messages", session="travel")
        assert [item["memory"] for item in listed["memories"]][::-1] == [
            message["content"] for message in conversation
        ]
        one = await call(client, "get_memory", memory_id=memory_id)
        assert one["memory"] == "Alice is allergic to peanuts" and one["type"] == "knowledge"

        await call(
            client, "update_memory", memory_id=memory_id, text="Alice is allergic to cashews"
        )
        assert (await call(client, "get_memory", memory_id=memory_id))["memory"].endswith("cashews")
        await call(client, "delete_memory", memory_id=memory_id)
        assert "does not exist" in await error_of(client, "get_memory", memory_id=memory_id)

        assert "confirm=true" in await error_of(client, "delete_all_memories", confirm=False)
        await call(client, "delete_all_memories", confirm=True)
        assert (await call(client, "get_memories", kind="messages"))["memories"] == []


async def test_bad_arguments_are_tool_errors_not_crashes(database_url: str) -> None:
    async with connect(database_url) as client:
        assert "give text or messages" in await error_of(client, "add_memory")
        bad_role = [{"role": "robot", "content": "x"}]
        assert "role" in await error_of(client, "add_memory", messages=bad_role)
        assert await error_of(client, "search_memories", query="x", top_k=0)
        assert "not a memory id" in await error_of(client, "get_memory", memory_id="nope")
        long_name = "x" * 300
        assert "255" in await error_of(client, "add_memory", text="hi", user_id=long_name)
        # The server is still up and answering.
        assert (await call(client, "get_memories"))["memories"] == []


async def test_two_users_are_isolated(database_url: str) -> None:
    async with connect(database_url) as client:
        secret = await call(client, "add_memory", text="Bob's locker code is 4711", user_id="bob")
        await call(client, "add_memory", text="Alice likes tea", user_id="alice")
        alice = await call(client, "search_memories", query="locker code", user_id="alice")
        assert all("4711" not in item["memory"] for item in alice["results"])
        message = await error_of(
            client, "get_memory", memory_id=secret["memory_ids"][0], user_id="alice"
        )
        assert "does not exist" in message
        bob = await call(client, "get_memories", user_id="bob")
        assert [item["memory"] for item in bob["memories"]] == ["Bob's locker code is 4711"]


async def test_a_server_fixed_to_one_user_refuses_others(database_url: str) -> None:
    async with connect(database_url, "--user", "alice") as client:
        await call(client, "add_memory", text="Alice likes tea")
        refused = await error_of(client, "get_memories", user_id="bob")
        assert "serves user 'alice' only" in refused
        listed = await call(client, "get_memories")
        assert json.dumps(listed).count("Alice likes tea") == 1


async def test_http_transport_requires_the_admin_key(database_url: str) -> None:
    """``memfuse mcp --http``: 401 without the key; with it, an MCP client lists the tools."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    key = "mcp-admin-key-0123456789abcdef"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MEMFUSE_SERVER_API_KEY": key}
    command = ["-m", "memfuse.cli", "--database-url", database_url, "mcp", "--http"]
    process = await asyncio.create_subprocess_exec(
        sys.executable, *command, "--port", str(port), env=env, cwd=CHECKOUT
    )
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            for _ in range(600):
                try:
                    refused = await http.post(url, json={})
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.2)
            assert refused.status_code == 401
            wrong = await http.post(url, json={}, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
        # The SDK's HTTP transport takes its own httpx2 client, here carrying the key.
        authorized = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60)
        transport = streamable_http_client(url, http_client=authorized)
        async with authorized, Client(transport) as client:
            tools = {tool.name for tool in (await client.list_tools()).tools}
        assert tools == TOOLS
    finally:
        process.terminate()
        await process.wait()
