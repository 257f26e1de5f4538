"""Server benchmark: ``add`` and ``query`` through ``memfuse serve`` (HTTP, JSON, auth) against
the same calls in process, on the same database and model.

Run: ``.venv/bin/python -m benchmarks.server [--rounds 5] [--ops 100] [--clients 8]
[--output FILE.json]`` (needs the ``server`` extra and the ``local`` model).

The server runs as a subprocess (``memfuse serve`` with an admin key, its own pool, worker and
model), the client is httpx over TCP. Latency: ``rounds x ops`` sequential calls of each kind,
rounds interleaved, p50/p95 and the ratio to the in-process call. Throughput: ``clients``
concurrent callers, requests per second per round, median and the ratio. Every query text is
new (a counter in it), so no result cache answers.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from benchmarks.foundation import compare
from benchmarks.harness import drop_schema, run_benchmark
from memfuse.memory import MemFuse

SCHEMA = "bench_server"
ADMIN_KEY = "bench-admin-key-0123456789abcdef0123"
QUESTIONS = (
    "When did Caroline go to the support group?",
    "What does Melanie paint?",
    "Where did they camp last summer?",
    "Which book did she recommend?",
    "What is the name of the dog?",
)
Operation = Callable[[], Awaitable[object]]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _start_server(url: str) -> tuple[asyncio.subprocess.Process, str]:
    port = _free_port()
    env = {**os.environ, "MEMFUSE_SERVER_API_KEY": ADMIN_KEY, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "memfuse.cli", "--database-url", url, "--schema", SCHEMA]
    process = await asyncio.create_subprocess_exec(
        *command, "serve", "--port", str(port), env=env, stdout=asyncio.subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}/api/v1"
    deadline = time.monotonic() + 180
    async with httpx.AsyncClient() as probe:
        while True:
            try:
                if (await probe.get(f"{base}/health")).status_code == 200:
                    return process, base
            except httpx.TransportError:
                pass
            if process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError("memfuse serve did not start")
            await asyncio.sleep(0.3)


async def _throughput(operation: Operation, clients: int, calls: int) -> float:
    """Requests per second of ``clients`` callers making ``calls`` calls in all."""
    counter = itertools.count()

    async def caller() -> None:
        while next(counter) < calls:
            await operation()

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(clients)))
    return calls / (time.perf_counter() - started)


async def measure(url: str, rounds: int, ops: int, clients: int) -> dict[str, Any]:
    await drop_schema(url, SCHEMA)
    process, base = await _start_server(url)
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    limits = httpx.Limits(max_connections=clients + 2)
    try:
        async with (
            MemFuse(url, schema=SCHEMA) as mf,
            httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=60) as http,
        ):
            memory = await mf.init("bench-user", session="in-process")
            user_id = str(memory.scope.user_id)
            agent = (await http.post("/agents", json={"name": "bench-agent"})).json()
            session = await http.post(
                "/sessions",
                json={"user_id": user_id, "agent_id": agent["data"]["agent"]["id"], "name": "http"},
            )
            session_id = session.json()["data"]["session"]["id"]
            seed = [
                {"role": "user", "content": f"{question} Turn {n}."}
                for n in range(40)
                for question in QUESTIONS
            ]
            await memory.add(seed)
            await mf.flush()
            numbers = itertools.count()

            def text() -> str:
                n = next(numbers)
                return f"{QUESTIONS[n % len(QUESTIONS)]} ({n})"

            async def add_in_process() -> object:
                return await memory.add([{"role": "user", "content": text()}])

            async def add_over_http() -> object:
                message = {"role": "user", "content": text()}
                response = await http.post(
                    f"/sessions/{session_id}/messages", json={"messages": [message]}
                )
                response.raise_for_status()
                return response

            async def query_in_process() -> object:
                return await mf.search(memory.scope.user_id, text(), 5)

            async def query_over_http() -> object:
                response = await http.post(f"/users/{user_id}/query", json={"query": text()})
                response.raise_for_status()
                return response

            results: dict[str, Any] = {"clients": clients}
            results["add_latency"] = await compare(
                "add_latency",
                {"in_process": add_in_process, "server": add_over_http},
                "in_process",
                rounds,
                ops,
            )
            results["query_latency"] = await compare(
                "query_latency",
                {"in_process": query_in_process, "server": query_over_http},
                "in_process",
                rounds,
                ops,
            )
            for kind, pair in (
                ("add", (add_in_process, add_over_http)),
                ("query", (query_in_process, query_over_http)),
            ):
                rates: dict[str, list[float]] = {"in_process": [], "server": []}
                for _ in range(rounds):
                    for name, operation in zip(rates, pair, strict=True):
                        rates[name].append(await _throughput(operation, clients, ops))
                ratios = [
                    served / local
                    for served, local in zip(rates["server"], rates["in_process"], strict=True)
                ]
                results[f"{kind}_throughput"] = {
                    name: {"requests_per_s_median": round(statistics.median(values), 1)}
                    for name, values in rates.items()
                } | {"server_ratio_vs_in_process_median": round(statistics.median(ratios), 3)}
            await mf.flush()
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)
        await drop_schema(url, SCHEMA)
    return results


async def run(url: str, args: argparse.Namespace, source: str) -> dict[str, Any]:
    results = await measure(url, args.rounds, args.ops, args.clients)
    return {"database": source, **results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ops", type=int, default=100)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--output", type=Path)
    run_benchmark("benchmarks.server", run, parser.parse_args())


if __name__ == "__main__":
    main()
