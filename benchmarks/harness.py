"""What every benchmark module shares: the database it runs on, and how its JSON is written.

A benchmark's ``run(url, args, source)`` measures; :func:`run_benchmark` gives it
``MEMFUSE_DATABASE_URL`` or a fresh embedded server in a temporary directory, and writes
``{"meta": {command, arguments, duration, git commit}, **results}`` to ``--output``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from memfuse.config import Settings
from memfuse.config.urls import asyncpg_connect_args
from memfuse.db.embedded import database_url_for

Run = Callable[[str, argparse.Namespace, str], Awaitable[dict[str, Any]]]


def run_benchmark(module: str, run: Run, args: argparse.Namespace) -> dict[str, Any]:
    """Run ``run`` on the benchmark database; write and return the results."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    version = source_version()
    results = asyncio.run(_on_database(module, run, args))
    results["meta"].update(version)
    output: Path | None = getattr(args, "output", None)
    if output is not None:
        output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


async def _on_database(module: str, run: Run, args: argparse.Namespace) -> dict[str, Any]:
    command = shlex.join([".venv/bin/python", "-m", module, *sys.argv[1:]])
    meta: dict[str, Any] = {"command": command, **{k: str(v) for k, v in vars(args).items()}}
    env_url = os.environ.get("MEMFUSE_DATABASE_URL")
    source = "MEMFUSE_DATABASE_URL" if env_url else "embedded PostgreSQL (Unix socket)"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="memfuse-bench-") as data_dir:
        async with database_url_for(Settings(database_url=env_url, data_dir=Path(data_dir))) as url:
            results = await run(url, args, source)
    meta["duration_s"] = round(time.perf_counter() - started, 1)
    return {"meta": meta, **results}


async def drop_schema(url: str, schema: str) -> None:
    """Remove a benchmark's schema and everything in it (before a run, and after it)."""
    connection = await asyncpg.connect(**asyncpg_connect_args(url))
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


def source_version() -> dict[str, Any]:
    """The checked-out commit, and whether the working tree differs from it (read-only git)."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "modified_files": None}
    return {"git_commit": commit, "modified_files": [line[3:] for line in status.splitlines()]}
