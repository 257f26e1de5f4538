"""The official MemFuse SDK (PyPI memfuse==0.3.3, unmodified) against `memfuse serve`.

The SDK's import package is also called ``memfuse``, so it lives in its own venv
(``.sdk-venv`` in the checkout, or ``MEMFUSE_SDK_VENV``), made here on first use and reused.
Its scripts (tests/server/sdk/) run in that venv against a server subprocess on a free port
with the real model and database; each asserts as it goes and prints a JSON summary.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import venv
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server.envelopes import ADMIN_KEY

pytestmark = [pytest.mark.model, pytest.mark.slow]

CHECKOUT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent / "sdk"
SDK_REQUIREMENT = "memfuse==0.3.3"


def sdk_python() -> Path:
    """The SDK venv's interpreter, installing the SDK first if the venv lacks it."""
    root = Path(os.environ.get("MEMFUSE_SDK_VENV", CHECKOUT / ".sdk-venv"))
    python = root / "bin" / "python"
    probe = [str(python), "-c", "import memfuse; assert memfuse.__version__ == '0.3.3'"]
    if python.exists() and subprocess.run(probe, capture_output=True, cwd=SCRIPTS).returncode == 0:
        return python
    venv.create(root, with_pip=True, clear=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", SDK_REQUIREMENT], check=True, timeout=900
    )
    subprocess.run(probe, check=True, cwd=SCRIPTS)
    return python


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def sdk() -> Path:
    return sdk_python()


@pytest.fixture
def server(database_url: str) -> Iterator[str]:
    """`memfuse serve` in a subprocess, keys required; its base URL once it answers."""
    port = free_port()
    env = {**os.environ, "MEMFUSE_SERVER_API_KEY": ADMIN_KEY, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "memfuse.cli", "--database-url", database_url]
    process = subprocess.Popen(
        [*command, "serve", "--port", str(port)],
        env=env,
        cwd=CHECKOUT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                assert process.stderr is not None
                raise AssertionError(f"memfuse serve exited: {process.stderr.read().decode()}")
            try:
                if httpx.get(f"{base_url}/api/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "memfuse serve did not answer in 180 s"
            time.sleep(0.3)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def run_script(sdk: Path, name: str, base_url: str) -> dict[str, object]:
    """Run an SDK script outside the checkout's import path; its JSON summary."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.pop("MEMFUSE_API_KEY", None)
    done = subprocess.run(
        [str(sdk), str(SCRIPTS / name), base_url, ADMIN_KEY],
        env=env,
        cwd=SCRIPTS,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    summary: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return summary


def test_sync_client_every_call(sdk: Path, server: str) -> None:
    """init (get-or-create, twice), messages, knowledge, query and query_session, api keys
    and a user key's reach, user deletion."""
    assert run_script(sdk, "sync_flow.py", server)["ok"] is True


def test_fifty_async_clients_at_once_lose_nothing(sdk: Path, server: str) -> None:
    summary = run_script(sdk, "async_clients.py", server)
    assert summary == {"ok": True, "clients": 50, "messages": 200}


def test_openai_wrapper_retrieves_and_stores_through_the_server(sdk: Path, server: str) -> None:
    summary = run_script(sdk, "openai_wrapper.py", server)
    assert summary["ok"] is True and summary["llm_calls"] == 2
