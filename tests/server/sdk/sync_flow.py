"""Run by the official SDK's venv (memfuse==0.3.3): every call of the sync client against a
running `memfuse serve`. Exits non-zero on the first failed check; prints one JSON summary."""

import json
import sys

from memfuse.utils import MemFuseHTTPError

import memfuse
from memfuse import MemFuse

base_url, admin_key = sys.argv[1], sys.argv[2]
assert memfuse.__version__ == "0.3.3", memfuse.__version__


def expect_http_error(status, call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except MemFuseHTTPError as error:
        assert error.status_code == status, (error.status_code, str(error))
        return str(error)
    raise AssertionError(f"expected HTTP {status}")


client = MemFuse(base_url=base_url, api_key=admin_key)
memory = client.init(user="alice", session="dinner")
again = client.init(user="alice", session="dinner")
assert (memory.user_id, memory.agent_id, memory.session_id) == (
    again.user_id,
    again.agent_id,
    again.session_id,
)
fresh = client.init(user="alice")  # no session name: the server makes one up
assert fresh.session_id != memory.session_id and fresh.session

added = memory.add(
    [
        {"role": "user", "content": "I am planning a risotto dinner for Friday"},
        {"role": "assistant", "content": "Great, how many guests?"},
        {"role": "user", "content": "Six guests, one is vegetarian", "metadata": {"k": 1}},
    ]
)
ids = added["data"]["message_ids"]
assert len(ids) == 3
listed = memory.list_messages(limit=10)["data"]["messages"]
assert listed[0]["content"] == "Six guests, one is vegetarian"
assert listed[0]["metadata"] == {"k": 1}
assert memory.list_messages(buffer_only=True)["data"]["messages"] == []
read = memory.read([ids[1]])["data"]["messages"]
assert read[0]["content"] == "Great, how many guests?"
memory.update([ids[1]], [{"role": "assistant", "content": "Great! How many guests will come?"}])
assert memory.read([ids[1]])["data"]["messages"][0]["content"].startswith("Great!")
memory.delete([ids[1]])
assert len(memory.list_messages()["data"]["messages"]) == 2
expect_http_error(404, memory.read, [ids[1]])

knowledge_ids = memory.add_knowledge(["Alice is allergic to peanuts"])["data"]["knowledge_ids"]
assert memory.read_knowledge(knowledge_ids)["data"]["knowledge"][0]["content"].endswith("peanuts")
memory.update_knowledge(knowledge_ids, ["Alice is allergic to peanuts and cashews"])
found = memory.query("Which nuts is Alice allergic to?", top_k=3)["data"]["results"]
stated = [item for item in found if item["type"] == "knowledge"]
assert stated and "cashews" in stated[0]["content"], found
session_results = memory.query_session("risotto dinner guests")["data"]["results"]
assert session_results and all(isinstance(item["metadata"], dict) for item in session_results)
assert session_results[0]["metadata"]["scope"] == "in_session"
fresh.add([{"role": "user", "content": "Another risotto idea with mushrooms"}])
cross = fresh.query_session("risotto")["data"]["results"]
assert {item["metadata"]["scope"] for item in cross if item["type"] == "message"} == {
    "in_session",
    "cross_session",
}
memory.delete_knowledge(knowledge_ids)
assert client.knowledge.list_sync(memory.user_id)["data"]["knowledge"] == []

health = client.health.health_check_sync()["data"]
assert health["version"] == "0.3.3"

# API keys: one for alice; with it the SDK reaches alice, and nothing of bob.
created = client.api_keys.create_sync(memory.user_id, name="notebook")["data"]["api_key"]
listed_keys = client.api_keys.list_sync(memory.user_id)["data"]["api_keys"]
assert [key["id"] for key in listed_keys] == [created["id"]]
assert listed_keys[0]["key"] != created["key"]  # shown once, masked afterwards
bob = client.init(user="bob", session="private")
bob.add([{"role": "user", "content": "bob's secret plan"}])
alice_client = MemFuse(base_url=base_url, api_key=created["key"])
alice_own = alice_client.init(user="alice", session="dinner")
assert alice_own.session_id == memory.session_id
assert "bob" not in json.dumps(alice_own.query("secret plan")["data"]["results"])
expect_http_error(404, alice_client.users.get_sync, bob.user_id)
expect_http_error(404, alice_client.messages.list_sync, bob.session_id)
expect_http_error(403, alice_client.init, user="bob")  # bob is hidden; creating users is 403
wrong = MemFuse(base_url=base_url, api_key="not-a-key")
expect_http_error(401, wrong.users.list_sync)
client.api_keys.delete_sync(memory.user_id, created["id"])
expect_http_error(401, alice_client.users.list_sync)

client.users.delete_sync(bob.user_id)
expect_http_error(404, client.users.get_sync, bob.user_id)
sys.stdout.write(json.dumps({"ok": True, "messages": len(listed), "results": len(found)}) + "\n")
