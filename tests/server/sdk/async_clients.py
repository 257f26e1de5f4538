"""Run by the official SDK's venv: fifty AsyncMemFuse clients at once, each adding and
querying in its own session; then every message is counted. Prints one JSON summary."""

import asyncio
import json
import sys

from memfuse import AsyncMemFuse

base_url, admin_key = sys.argv[1], sys.argv[2]
CLIENTS = 50
TURNS = 4


async def one_client(n: int) -> dict:
    async with AsyncMemFuse(base_url=base_url, api_key=admin_key, timeout=120) as client:
        memory = await client.init(user=f"user{n % 10}", session=f"session-{n}")
        for turn in range(TURNS):
            await memory.add([{"role": "user", "content": f"client {n} says fact {turn}"}])
        results = (await memory.query_session(f"client {n} fact"))["data"]["results"]
        listed = (await memory.list_messages(limit=100))["data"]["messages"]
        return {"session": memory.session_id, "results": len(results), "messages": len(listed)}


async def main() -> None:
    outcomes = await asyncio.gather(*(one_client(n) for n in range(CLIENTS)))
    assert len({outcome["session"] for outcome in outcomes}) == CLIENTS
    assert all(outcome["messages"] == TURNS for outcome in outcomes), outcomes
    assert all(outcome["results"] > 0 for outcome in outcomes), outcomes
    sys.stdout.write(
        json.dumps({"ok": True, "clients": CLIENTS, "messages": CLIENTS * TURNS}) + "\n"
    )


asyncio.run(main())
