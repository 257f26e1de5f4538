"""Keys: the admin key, users' keys (hashes at rest, expiry), and a user's key against every
route that names another user's ids."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.server.envelopes import failed, ok
from tests.server.test_routes import sdk_init


def as_user(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def new_key(client: httpx.AsyncClient, user_id: str, **options: Any) -> dict[str, Any]:
    created = ok(await client.post(f"/users/{user_id}/api-keys", json=options), 201)
    key: dict[str, Any] = created["api_key"]
    return key


async def test_requests_without_the_right_key_are_refused(client: httpx.AsyncClient) -> None:
    for headers in ({"Authorization": ""}, as_user("wrong"), {"Authorization": "Basic abc"}):
        message = failed(await client.get("/users", headers=headers), 401)
        assert "key" in message
    ok(await client.get("/health", headers=as_user("wrong")))


async def test_user_keys_are_hashed_at_rest_and_expire(
    client: httpx.AsyncClient, migrated_engine: AsyncEngine
) -> None:
    alice = await sdk_init(client, "alice", "chat")
    key = await new_key(client, alice["user_id"], name="laptop")
    clear = key["key"]
    assert clear.startswith("mf_") and len(clear) > 40
    async with migrated_engine.connect() as connection:
        stored = (
            await connection.execute(text("SELECT key_hash, prefix FROM memfuse.api_keys"))
        ).one()
    assert stored.key_hash == hashlib.sha256(clear.encode()).hexdigest()
    assert clear not in stored.key_hash and stored.prefix == clear[:8]
    listed = ok(await client.get(f"/users/{alice['user_id']}/api-keys"))["api_keys"]
    assert [item["key"] for item in listed] == [f"{clear[:8]}..."]
    assert ok(await client.get("/users", headers=as_user(clear)))["users"][0]["name"] == "alice"

    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    expired = await new_key(client, alice["user_id"], expires_at=past)
    failed(await client.get("/users", headers=as_user(expired["key"])), 401)
    ok(await client.delete(f"/users/{alice['user_id']}/api-keys/{key['id']}"))
    failed(await client.get("/users", headers=as_user(clear)), 401)


async def test_a_user_key_reaches_only_its_user(client: httpx.AsyncClient) -> None:
    alice = await sdk_init(client, "alice", "chat")
    bob = await sdk_init(client, "bob", "chat")
    bob_session = bob["session"]["id"]
    ok(
        await client.post(
            f"/sessions/{bob_session}/messages",
            json={"messages": [{"role": "user", "content": "bob's secret"}]},
        ),
        201,
    )
    bob_knowledge = ok(
        await client.post(f"/users/{bob['user_id']}/knowledge", json={"knowledge": ["secret"]}),
        201,
    )["knowledge_ids"]
    bob_key = (await new_key(client, bob["user_id"]))["id"]
    alice_key = (await new_key(client, alice["user_id"]))["key"]
    mine = as_user(alice_key)

    b, s = bob["user_id"], bob_session
    messages = {"messages": [{"role": "user", "content": "x"}]}
    ids = {"message_ids": [str(uuid.uuid4())]}
    knowledge_ids = {"knowledge_ids": bob_knowledge}
    foreign: list[tuple[str, str, Any]] = [
        ("GET", f"/users/{b}", None),
        ("PUT", f"/users/{b}", {"name": "taken"}),
        ("DELETE", f"/users/{b}", None),
        ("POST", f"/users/{b}/query", {"query": "secret"}),
        ("GET", "/users?name=bob", None),
        ("GET", f"/sessions?user_id={b}", None),
        ("POST", "/sessions", {"user_id": b, "agent_id": bob["agent_id"], "name": "x"}),
        ("GET", f"/sessions/{s}", None),
        ("PUT", f"/sessions/{s}", {"name": "mine"}),
        ("DELETE", f"/sessions/{s}", None),
        ("GET", f"/sessions/{s}/messages", None),
        ("POST", f"/sessions/{s}/messages", messages),
        ("POST", f"/sessions/{s}/messages/read", ids),
        ("PUT", f"/sessions/{s}/messages", {**ids, "new_messages": [{"content": "x"}]}),
        ("DELETE", f"/sessions/{s}/messages", ids),
        ("GET", f"/users/{b}/knowledge", None),
        ("POST", f"/users/{b}/knowledge", {"knowledge": ["planted"]}),
        ("POST", f"/users/{b}/knowledge/read", knowledge_ids),
        ("PUT", f"/users/{b}/knowledge", {**knowledge_ids, "new_knowledge": ["x"]}),
        ("DELETE", f"/users/{b}/knowledge", knowledge_ids),
        ("GET", f"/users/{b}/api-keys", None),
        ("POST", f"/users/{b}/api-keys", {}),
        ("DELETE", f"/users/{b}/api-keys/{bob_key}", None),
    ]
    for method, path, body in foreign:
        response = await client.request(method, path, json=body, headers=mine)
        failed(response, 404)  # the same answer as for ids that do not exist
        assert "bob's secret" not in response.text, (method, path)

    # Nothing changed for bob.
    assert ok(await client.get(f"/users/{b}"))["user"]["name"] == "bob"
    listed = ok(await client.get(f"/sessions/{s}/messages"))["messages"]
    assert [m["content"] for m in listed] == ["bob's secret"]
    assert len(ok(await client.get(f"/users/{b}/knowledge"))["knowledge"]) == 1
    # Alice's own search never returns bob's rows.
    results = ok(
        await client.post(
            f"/users/{alice['user_id']}/query", json={"query": "secret"}, headers=mine
        )
    )["results"]
    assert results == []
    # Admin-only actions.
    failed(await client.post("/users", json={"name": "carol"}, headers=mine), 403)
    shared = ok(await client.get("/agents?name=agent_default", headers=mine))["agents"][0]
    failed(await client.put(f"/agents/{shared['id']}", json={"name": "x"}, headers=mine), 403)
    # A user key's agents are its own.
    own = ok(await client.post("/agents", json={"name": "private"}, headers=mine), 201)["agent"]
    assert own["user_id"] == alice["user_id"]
    failed(await client.get("/agents?name=private"), 404)  # the admin sees shared ones by name
    bob_clear = (await new_key(client, bob["user_id"]))["key"]
    failed(await client.get(f"/agents/{own['id']}", headers=as_user(bob_clear)), 404)
