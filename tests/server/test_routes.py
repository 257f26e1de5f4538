"""Every route of the REST server in process: the SDK's init flow, messages, knowledge, query,
and the envelope on success and on error."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from memfuse.memory import MemFuse
from memfuse.server.app import create_app
from tests.server.envelopes import failed, ok


async def sdk_init(
    client: httpx.AsyncClient, user: str, session: str | None = None
) -> dict[str, Any]:
    """What the SDK's ``init()`` does: get-or-create the user and agent, then the session."""
    found = await client.get(f"/users?name={user}")
    if found.status_code == 404:
        failed(found, 404, "name")
        user_id = ok(await client.post("/users", json={"name": user}), 201)["user"]["id"]
    else:
        user_id = ok(found)["users"][0]["id"]
    agent = await client.post(
        "/agents",
        json={"name": "agent_default", "description": "Agent created by MemFuse client"},
        headers={"Idempotency-Key": "agent-create:agent_default:1"},
    )
    agent_id = agent.json()["data"]["agent"]["id"]
    if session is not None:
        listed = await client.get(f"/sessions?name={session}&user_id={user_id}")
        if listed.status_code == 200:
            return {"user_id": user_id, "agent_id": agent_id, "session": ok(listed)["sessions"][0]}
    created = await client.post(
        "/sessions", json={"user_id": user_id, "agent_id": agent_id, "name": session}
    )
    return {"user_id": user_id, "agent_id": agent_id, "session": ok(created, 201)["session"]}


async def test_health_is_open_and_names_the_api_version(client: httpx.AsyncClient) -> None:
    for path in ("/health", "/health/"):
        data = ok(await client.get(path, headers={"Authorization": ""}))
        assert data["status"] == "ok" and data["version"].startswith("0.3.")


async def test_init_twice_gets_the_same_user_and_agent(client: httpx.AsyncClient) -> None:
    first = await sdk_init(client, "alice", "trip")
    again = await sdk_init(client, "alice", "trip")
    assert (first["user_id"], first["agent_id"]) == (again["user_id"], again["agent_id"])
    assert first["session"]["id"] == again["session"]["id"]
    unnamed = await sdk_init(client, "alice")
    assert unnamed["session"]["name"] and unnamed["session"]["id"] != first["session"]["id"]
    repeat = await client.post("/agents", json={"name": "agent_default"})
    assert ok(repeat)["agent"]["id"] == first["agent_id"]
    existing = ok(await client.post("/users", json={"name": "alice"}))  # get-or-create: 200
    assert existing["user"]["id"] == first["user_id"]


async def test_messages_keep_roles_metadata_and_order(client: httpx.AsyncClient) -> None:
    session_id = (await sdk_init(client, "alice", "chat"))["session"]["id"]
    path = f"/sessions/{session_id}/messages"
    sent = [
        {"role": "user", "content": "Book me a table", "metadata": {"source": "app"}},
        {"role": "assistant", "content": "Calling the booking tool"},
        {"role": "tool", "content": '{"table": 12}', "name": "booking"},
    ]
    ids = ok(await client.post(path, json={"messages": sent}), 201)["message_ids"]
    assert len(ids) == 3
    listed = ok(await client.get(f"{path}?limit=10&sort_by=timestamp&order=desc&buffer_only=false"))
    assert [m["role"] for m in listed["messages"]] == ["tool", "assistant", "user"]
    assert listed["messages"][2]["metadata"] == {"source": "app"}
    assert ok(await client.get(f"{path}?buffer_only=true"))["messages"] == []

    read = ok(await client.post(f"{path}/read", json={"message_ids": ids[:1]}))
    assert read["messages"][0]["content"] == "Book me a table"
    update = {"message_ids": ids[:1], "new_messages": [{"role": "user", "content": "Book two"}]}
    ok(await client.put(path, json=update))
    assert (
        ok(await client.post(f"{path}/read", json={"message_ids": ids[:1]}))["messages"][0][
            "content"
        ]
        == "Book two"
    )
    deleted = await client.request("DELETE", path, json={"message_ids": ids[1:2]})
    assert ok(deleted)["message_ids"] == ids[1:2]
    assert len(ok(await client.get(path))["messages"]) == 2


async def test_bad_messages_name_the_field_and_write_nothing(client: httpx.AsyncClient) -> None:
    session_id = (await sdk_init(client, "alice", "chat"))["session"]["id"]
    path = f"/sessions/{session_id}/messages"
    good = {"role": "user", "content": "fine"}
    failed(await client.post(path, json={"messages": [good, {"role": "user"}]}), 400, "content")
    failed(await client.post(path, json={"messages": [{"role": "robot", "content": "x"}]}), 400)
    failed(await client.post(path, json={"messages": [good] * 1001}), 400, "messages")
    failed(await client.post(path, json={"text": "no messages key"}), 400, "messages")
    failed(await client.get(f"{path}?order=sideways"), 400, "order")
    unknown = "00000000-0000-0000-0000-000000000000"
    failed(await client.post(f"{path}/read", json={"message_ids": [unknown]}), 404)
    failed(await client.post("/sessions/not-a-uuid/messages", json={"messages": [good]}), 400)
    assert ok(await client.get(path))["messages"] == []


async def test_knowledge_crud_and_query_with_scope_tags(
    client: httpx.AsyncClient, mf: MemFuse
) -> None:
    here = await sdk_init(client, "alice", "dinner")
    elsewhere = await sdk_init(client, "alice", "travel")
    user_id = here["user_id"]
    await client.post(
        f"/sessions/{here['session']['id']}/messages",
        json={"messages": [{"role": "user", "content": "I am cooking risotto tonight"}]},
    )
    await client.post(
        f"/sessions/{elsewhere['session']['id']}/messages",
        json={"messages": [{"role": "user", "content": "I booked a risotto class in Milan"}]},
    )
    knowledge = f"/users/{user_id}/knowledge"
    ids = ok(await client.post(knowledge, json={"knowledge": ["Alice is vegetarian"]}), 201)[
        "knowledge_ids"
    ]
    await mf.flush()

    body = {"query": "risotto", "session_id": here["session"]["id"], "top_k": 5}
    results = ok(await client.post(f"/users/{user_id}/query", json=body))["results"]
    scopes = {item["content"]: item["metadata"]["scope"] for item in results}
    assert scopes["I am cooking risotto tonight"] == "in_session"
    assert scopes["I booked a risotto class in Milan"] == "cross_session"
    item = next(item for item in results if item["content"] == "I am cooking risotto tonight")
    assert item["type"] == "message" and item["role"] == "user"
    assert item["metadata"]["session_name"] == "dinner" and item["metadata"]["level"] == 0

    explained = {"query": "vegetarian diet", "explain": True}
    found = ok(await client.post(f"/users/{user_id}/query", json=explained))
    top = next(item for item in found["results"] if item["type"] == "knowledge")
    assert top["metadata"]["retrieval"]["ranks"]
    assert set(top["metadata"]["retrieval"]["ranks"]) <= {"knowledge_vector", "knowledge_text"}
    assert top["id"] == ids[0] and top["metadata"]["scope"] is None

    update = {"knowledge_ids": ids, "new_knowledge": ["Alice is vegan"]}
    ok(await client.put(knowledge, json=update))
    read = ok(await client.post(f"{knowledge}/read", json={"knowledge_ids": ids}))
    assert read["knowledge"][0]["content"] == "Alice is vegan"
    assert ok(await client.get(knowledge))["knowledge"][0]["id"] == ids[0]
    ok(await client.request("DELETE", knowledge, json={"knowledge_ids": ids}))
    assert ok(await client.get(knowledge))["knowledge"] == []
    failed(await client.request("DELETE", knowledge, json={"knowledge_ids": ids}), 404)


async def test_query_limits_and_filters(client: httpx.AsyncClient) -> None:
    alice = await sdk_init(client, "alice", "chat")
    user_id = alice["user_id"]
    failed(await client.post(f"/users/{user_id}/query", json={"query": "x", "top_k": 101}), 400)
    failed(await client.post(f"/users/{user_id}/query", json={"query": ""}), 400, "query")
    bob = await sdk_init(client, "bob", "chat")
    foreign_session = {"query": "x", "session_id": bob["session"]["id"]}
    failed(await client.post(f"/users/{user_id}/query", json=foreign_session), 404, "session_id")
    nothing = {"query": "x", "include_messages": False, "include_knowledge": False}
    assert ok(await client.post(f"/users/{user_id}/query", json=nothing))["results"] == []


async def test_users_agents_sessions_update_and_delete(client: httpx.AsyncClient) -> None:
    alice = await sdk_init(client, "alice", "chat")
    user_id, session_id = alice["user_id"], alice["session"]["id"]
    renamed = ok(await client.put(f"/users/{user_id}", json={"name": "alice2", "description": "d"}))
    assert renamed["user"]["name"] == "alice2" and renamed["user"]["description"] == "d"
    assert ok(await client.get(f"/users/{user_id}"))["user"]["name"] == "alice2"
    session = ok(await client.put(f"/sessions/{session_id}", json={"name": "renamed"}))
    assert session["session"]["name"] == "renamed"
    listed = ok(await client.get(f"/sessions?user_id={user_id}"))["sessions"]
    assert [s["name"] for s in listed] == ["renamed"]
    agent_id = alice["agent_id"]
    failed(await client.delete(f"/agents/{agent_id}"), 409)  # a session still talks to it
    ok(await client.delete(f"/sessions/{session_id}"))
    failed(await client.get(f"/sessions/{session_id}"), 404)
    ok(await client.delete(f"/agents/{agent_id}"))
    deleted = ok(await client.delete(f"/users/{user_id}"))
    assert deleted == {"user_id": user_id}
    failed(await client.get(f"/users/{user_id}"), 404)
    failed(await client.get("/users?name=alice2"), 404, "name")


async def test_unknown_routes_and_large_bodies_get_envelopes(client: httpx.AsyncClient) -> None:
    failed(await client.get("/nowhere"), 404)
    failed(await client.patch("/users"), 405)
    huge = {"messages": [{"role": "user", "content": "x" * 1_000_000}] * 5}
    failed(
        await client.post("/sessions/00000000-0000-0000-0000-000000000000/messages", json=huge), 413
    )


async def test_concurrent_writers_with_the_worker_running(
    client: httpx.AsyncClient, mf: MemFuse
) -> None:
    """Twenty sessions written at once, their knowledge beside them, the worker and pipeline
    running: every message and item is stored once and embedded."""
    scopes = [await sdk_init(client, f"user{n}", "chat") for n in range(5)]

    async def write(scope: dict[str, Any], n: int) -> None:
        path = f"/sessions/{scope['session']['id']}/messages"
        for turn in range(4):
            message = {"role": "user", "content": f"turn {turn} of writer {n}"}
            ok(await client.post(path, json={"messages": [message]}), 201)
        knowledge = f"/users/{scope['user_id']}/knowledge"
        ok(await client.post(knowledge, json={"knowledge": [f"fact of writer {n}"]}), 201)

    await asyncio.gather(*(write(scopes[n % 5], n) for n in range(20)))
    await mf.flush()
    for scope in scopes:
        path = f"/sessions/{scope['session']['id']}/messages?limit=100"
        assert len(ok(await client.get(path))["messages"]) == 16
        items = ok(await client.get(f"/users/{scope['user_id']}/knowledge"))["knowledge"]
        assert len(items) == 4
        memory = await mf.session_memory(uuid.UUID(scope["session"]["id"]))
        assert all(row.embedded for row in await memory.list_messages(limit=100))


async def test_an_unexpected_error_is_a_500_envelope_without_a_trace(
    mf: MemFuse, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(user_id: uuid.UUID) -> None:
        raise RuntimeError("secret internals: /srv/app.py line 12")

    monkeypatch.setattr(mf.tenancy, "get_user", broken)
    transport = httpx.ASGITransport(app=create_app(mf), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t/api/v1") as client:
        response = await client.get(f"/users/{uuid.uuid4()}")
    message = failed(response, 500)
    assert message == "internal server error" and "secret" not in response.text


async def test_concurrent_renames_to_one_name_conflict_cleanly(client: httpx.AsyncClient) -> None:
    """Two users renamed to the same name at once: one wins, the other gets 409 (not a 500)."""
    ids = [
        ok(await client.post("/users", json={"name": f"u{n}"}), 201)["user"]["id"] for n in range(6)
    ]
    responses = await asyncio.gather(
        *(client.put(f"/users/{user_id}", json={"name": "same"}) for user_id in ids)
    )
    assert sorted(response.status_code for response in responses) == [200] + [409] * 5


async def test_openapi_docs_describe_every_resource(client: httpx.AsyncClient) -> None:
    assert (await client.get("http://memfuse.test/docs")).status_code == 200
    paths = (await client.get("http://memfuse.test/openapi.json")).json()["paths"]
    for path in (
        "/api/v1/users/{user_id}/query",
        "/api/v1/sessions/{session_id}/messages",
        "/api/v1/users/{user_id}/knowledge",
        "/api/v1/users/{user_id}/api-keys",
        "/api/v1/agents",
    ):
        assert path in paths


async def test_an_unreachable_database_is_a_503(
    mf: MemFuse, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refused(user_id: uuid.UUID) -> None:
        raise asyncpg.CannotConnectNowError("the database system is shutting down")

    monkeypatch.setattr(mf.tenancy, "get_user", refused)
    transport = httpx.ASGITransport(app=create_app(mf), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t/api/v1") as client:
        response = await client.get(f"/users/{uuid.uuid4()}")
    assert "database unavailable" in failed(response, 503)


async def test_liveness_readiness_and_metrics(client: httpx.AsyncClient) -> None:
    no_key = {"Authorization": ""}
    assert ok(await client.get("/health/live", headers=no_key)) == {"status": "ok"}
    ready = ok(await client.get("/health/ready", headers=no_key))
    names = {check["name"] for check in ready["checks"]}
    assert {"database", "schema", "queue", "dead letters", "background"} <= names
    metrics_url = "http://memfuse.test/metrics"
    failed(await client.get(metrics_url, headers=no_key), 401)
    text = (await client.get(metrics_url)).text
    assert "memfuse_operation_calls_total" in text and 'operation="health_check"' in text


async def test_readiness_names_the_failed_checks(
    client: httpx.AsyncClient, mf: MemFuse, monkeypatch: pytest.MonkeyPatch
) -> None:
    from memfuse.types import Check, HealthReport

    async def failing(**options: object) -> HealthReport:
        return HealthReport((Check("database", True, "ok"), Check("queue", False, "too deep")), 0)

    monkeypatch.setattr(mf, "health", failing)
    message = failed(await client.get("/health/ready"), 503, "queue")
    assert "queue" in message
    assert ok(await client.get("/health/live"))["status"] == "ok"


async def test_deleting_an_agent_while_sessions_start_with_it(
    client: httpx.AsyncClient, mf: MemFuse
) -> None:
    """A deletion and session creations race: each creation either committed first (then the
    deletion is refused, 409) or finds the agent gone (404); nothing is lost, nothing is 500."""
    for round_number in range(5):
        user_id = ok(await client.post("/users", json={"name": f"racer{round_number}"}), 201)[
            "user"
        ]["id"]
        agent = ok(await client.post("/agents", json={"name": f"temp{round_number}"}), 201)
        agent_id = agent["agent"]["id"]
        creations = [
            client.post("/sessions", json={"user_id": user_id, "agent_id": agent_id})
            for _ in range(4)
        ]
        *created, deleted = await asyncio.gather(*creations, client.delete(f"/agents/{agent_id}"))
        statuses = sorted(response.status_code for response in created)
        assert set(statuses) <= {201, 404} and deleted.status_code in (200, 409)
        sessions = ok(await client.get(f"/sessions?user_id={user_id}"))["sessions"]
        if deleted.status_code == 200:
            assert sessions == [] and 201 not in statuses
        else:
            assert len(sessions) == statuses.count(201) >= 1
