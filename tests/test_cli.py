"""The command line: the demo end to end, and clear errors with a non-zero exit."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from memfuse import cli
from memfuse.cli import database_unavailable, main
from memfuse.config import Settings
from memfuse.config.urls import asyncpg_connect_args
from memfuse.memory import MemFuse

MEMFUSE = [sys.executable, "-m", "memfuse.cli"]


def test_demo_ingests_a_conversation_and_shows_every_layer(database_url: str) -> None:
    result = subprocess.run(
        [*MEMFUSE, "--database-url", database_url, "demo"],
        check=True,
        capture_output=True,
        text=True,
    )
    out = result.stdout
    assert "added 5 messages to session 'spring-catch-up'" in out
    assert "#1 Ana: Big news: I moved to Lisbon last month." in out
    assert "2023-05-08 13:56 - 14:00, 5 messages" in out
    assert "superseded 2023-06-20] Ana live in Porto" in out
    assert "yesterday (7 May 2023)" in out
    madeira = out.split("search: 'Who is travelling to Madeira?'")[1].splitlines()
    assert "Ana: I'm flying to Madeira next Friday with my sister Rita." in madeira[1]
    for operation in ("m0_operation", "m1_operation", "m2_operation", "buffer_flush"):
        assert operation in out


def test_ingest_imports_a_file_and_is_idempotent_for_locomo(
    database_url: str, tmp_path: Path
) -> None:
    sample = {
        "sample_id": "tiny",
        "conversation": {
            "speaker_a": "Caroline",
            "speaker_b": "Melanie",
            "session_1_date_time": "1:56 pm on 8 May, 2023",
            "session_1": [
                {"speaker": "Caroline", "dia_id": "D1:1", "text": "I went hiking yesterday."},
                {"speaker": "Melanie", "dia_id": "D1:2", "text": "I painted a lake."},
            ],
            "session_2_date_time": "10:00 am on 9 May, 2023",
            "session_2": [{"speaker": "Caroline", "dia_id": "D2:1", "text": "I love tea."}],
        },
        "qa": [],
    }
    file = tmp_path / "locomo.json"
    file.write_text(json.dumps([sample]))
    command = [*MEMFUSE, "--database-url", database_url, "ingest", str(file), "--quiet"]
    first = subprocess.run(command, check=True, capture_output=True, text=True)
    assert "added 3 messages in 2 sessions of 1 user(s)" in first.stdout
    assert "processed into episodes and facts" in first.stdout
    subprocess.run(command, check=True, capture_output=True, text=True)

    async def stored() -> list[str]:
        async with MemFuse(database_url, pipeline_auto=False) as mf:
            memory = await mf.init("locomo-tiny", session="session_1")
            messages = await memory.list_messages(all_sessions=True, order="asc")
            return [f"{m.name}: {m.content} @ {m.created_at:%Y-%m-%d}" for m in messages]

    assert asyncio.run(stored()) == [
        "Caroline: I went hiking yesterday. @ 2023-05-08",
        "Melanie: I painted a lake. @ 2023-05-08",
        "Caroline: I love tea. @ 2023-05-09",
    ]


def test_ingest_rejects_a_bad_file_naming_the_place(database_url: str, tmp_path: Path) -> None:
    file = tmp_path / "bad.json"
    file.write_text(json.dumps({"user": "ana", "messages": [{"role": "robot", "content": "x"}]}))
    result = subprocess.run(
        [*MEMFUSE, "--database-url", database_url, "ingest", str(file)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "message 1: field 'role'" in result.stderr


def test_bad_setting_exits_non_zero_with_the_setting_named() -> None:
    result = subprocess.run(
        [*MEMFUSE, "--database-url", "mysql://root:pw@localhost/db", "db", "current"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "database_url" in result.stderr
    assert "pw@" not in result.stderr


@pytest.mark.model
def test_worker_once_embeds_what_is_queued(database_url: str) -> None:
    async def write() -> None:
        async with MemFuse(database_url, pipeline_auto=False, embedder="none") as mf:
            memory = await mf.init("ana")
            await memory.add([{"role": "user", "content": "I adopted a cat named Miso."}])
            await mf.flush()

    asyncio.run(write())
    env = {**os.environ, "MEMFUSE_EMBEDDER": "local", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [*MEMFUSE, "--database-url", database_url, "worker", "--once"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    assert "embedded 3 rows" in result.stdout, "the message, its episode and its fact"

    async def embedded() -> list[bool]:
        async with MemFuse(database_url, pipeline_auto=False, embedder="none") as mf:
            memory = await mf.init("ana")
            messages = await memory.list_messages(all_sessions=True)
            episodes = await memory.list_episodes(all_sessions=True)
            return [m.embedded for m in messages] + [e.embedded for e in episodes]

    assert asyncio.run(embedded()) == [True, True]


# --- the database is down or refuses us: one line, exit 2 ---------------------------------------

PASSWORD = "s3cret-Pw-42"
REFUSED = f"postgresql://memfuse:{PASSWORD}@127.0.0.1:1/memfuse"
UNKNOWN_HOST = f"postgresql://memfuse:{PASSWORD}@no-such-host.invalid/memfuse"
NO_SOCKET = f"postgresql://memfuse:{PASSWORD}@/memfuse?host=/nonexistent/memfuse-socket-dir"


def assert_one_line(
    code: int, capsys: pytest.CaptureFixture[str], reason: str, password: str | None
) -> str:
    """Exit status 2 and exactly one line on stderr, naming the reason and not the password."""
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, err
    assert err.startswith("memfuse: database unavailable: "), err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert reason in err, err
    assert "Traceback" not in err + captured.out
    if password:
        assert password not in err + captured.out
    return err


def command_arguments(command: str, tmp_path: Path) -> list[str]:
    """Valid arguments for each command, so that only the database can be at fault."""
    conversation = tmp_path / "conversation.json"
    conversation.write_text(
        json.dumps({"user": "ana", "messages": [{"role": "user", "content": "hi"}]})
    )
    locomo = tmp_path / "locomo.json"
    locomo.write_text(json.dumps([LOCOMO_SAMPLE]))
    return {
        "db current": ["db", "current"],
        "db upgrade": ["db", "upgrade"],
        "db downgrade": ["db", "downgrade", "base"],
        "demo": ["demo"],
        "ingest": ["ingest", str(conversation), "--quiet"],
        "worker": ["worker", "--once"],
        "eval": ["eval", "locomo", "--data", str(locomo), "--output", str(tmp_path / "r.json")],
        "stats": ["stats"],
        "stats --json": ["stats", "--json"],
    }[command]


LOCOMO_SAMPLE = {
    "sample_id": "tiny",
    "conversation": {
        "speaker_a": "Caroline",
        "speaker_b": "Melanie",
        "session_1_date_time": "1:56 pm on 8 May, 2023",
        "session_1": [{"speaker": "Caroline", "dia_id": "D1:1", "text": "I love tea."}],
    },
    "qa": [{"question": "What does Caroline love?", "evidence": ["D1:1"], "category": 4}],
}


@pytest.fixture
def embedder_without_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """An embedder (the worker and eval need one) that loads no model and is never called."""
    monkeypatch.setenv("MEMFUSE_EMBEDDER", "openai")
    monkeypatch.setenv("MEMFUSE_EMBEDDING_BASE_URL", "http://127.0.0.1:1/v1")
    monkeypatch.setenv("MEMFUSE_EMBEDDING_MODEL", "unused")


@pytest.mark.parametrize(
    "command",
    [
        "db current",
        "db upgrade",
        "db downgrade",
        "demo",
        "ingest",
        "worker",
        "eval",
        "stats",
        "stats --json",
    ],
)
@pytest.mark.usefixtures("embedder_without_model")
def test_every_command_reports_a_refused_port_in_one_line(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.perf_counter()
    code = main(["--database-url", REFUSED, *command_arguments(command, tmp_path)])
    assert_one_line(code, capsys, "connection refused", PASSWORD)
    assert time.perf_counter() - started < 20


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (REFUSED, "connection refused"),
        (UNKNOWN_HOST, "unknown database host"),
        (NO_SOCKET, "no server socket"),
    ],
    ids=["refused-port", "unknown-host", "missing-socket"],
)
@pytest.mark.parametrize("command", ["db current", "ingest", "stats"])
def test_an_unreachable_server_is_one_line_naming_the_masked_url(
    url: str, reason: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.perf_counter()
    code = main(["--database-url", url, *command_arguments(command, tmp_path)])
    err = assert_one_line(code, capsys, reason, PASSWORD)
    assert "memfuse:***@" in err, "the URL is named, its password masked"
    assert time.perf_counter() - started < 20, "fails fast, not after asyncpg's 60 s timeout"


@pytest.mark.parametrize("command", ["db current", "demo", "ingest", "stats"])
def test_a_database_that_does_not_exist_is_one_line(
    server_url: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = make_url(server_url)
    url = server.set(database=f"memfuse_missing_{uuid.uuid4().hex[:8]}")
    code = main(
        [
            "--database-url",
            url.render_as_string(hide_password=False),
            *command_arguments(command, tmp_path),
        ]
    )
    err = assert_one_line(code, capsys, "the database does not exist", server.password)
    assert str(url.database) in err


@pytest.mark.parametrize("command", ["db current", "demo", "ingest", "stats"])
def test_a_role_the_server_refuses_is_one_line(
    server_url: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = make_url(server_url).set(username="memfuse_no_such_role", password=PASSWORD)
    code = main(
        [
            "--database-url",
            url.render_as_string(hide_password=False),
            *command_arguments(command, tmp_path),
        ]
    )
    # Trust authentication says the role does not exist; password authentication refuses it.
    assert_one_line(code, capsys, "refused", PASSWORD)


@pytest.mark.usefixtures("embedder_without_model")
def test_worker_and_eval_on_a_database_that_does_not_exist(
    server_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = make_url(server_url).set(database="memfuse_missing_db")
    for command in ("worker", "eval"):
        arguments = command_arguments(command, tmp_path)
        code = main(["--database-url", url.render_as_string(hide_password=False), *arguments])
        assert_one_line(code, capsys, "does not exist", make_url(server_url).password)


def test_doctor_keeps_its_report_when_the_database_is_down(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["--database-url", REFUSED, "doctor"])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err == ""
    assert "FAIL" in captured.out and "unhealthy" in captured.out
    assert PASSWORD not in captured.out and "Traceback" not in captured.out


def test_other_os_errors_are_not_reported_as_an_outage() -> None:
    """A missing model or an unwritable report is an OSError too, but not the database's."""
    settings = Settings(database_url=REFUSED)
    try:
        Path("/nonexistent/memfuse/report.json").write_text("{}")
    except OSError as error:
        assert database_unavailable(error, settings) is None
    try:
        raise ConnectionRefusedError(111, "refused by something else")
    except OSError as error:
        assert database_unavailable(error, settings) is None


def test_a_driver_error_is_reported_with_the_masked_url() -> None:
    async def connect() -> None:
        await asyncpg.connect(**asyncpg_connect_args(REFUSED))

    with pytest.raises(OSError) as caught:
        asyncio.run(connect())
    unavailable = database_unavailable(caught.value, Settings(database_url=REFUSED))
    assert unavailable is not None
    assert str(unavailable) == (
        "database unavailable: connection refused (is the server running?) "
        "(database postgresql+asyncpg://memfuse:***@127.0.0.1:1/memfuse)"
    )


def test_ctrl_c_is_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    async def interrupted(*_: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_db_command", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(["--database-url", REFUSED, "db", "current"])


def test_serve_refuses_a_public_address_without_a_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without MEMFUSE_SERVER_API_KEY, only 127.0.0.1: anything else is one line and exit 2,
    before a database or a port is touched."""
    monkeypatch.delenv("MEMFUSE_SERVER_API_KEY", raising=False)
    monkeypatch.setenv("MEMFUSE_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("memfuse: ") and "MEMFUSE_SERVER_API_KEY" in error
    assert error.count("\n") == 1


def test_doctor_cached_reuses_a_recent_report(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probe running ``doctor --cached`` every second checks the database once per interval."""
    monkeypatch.setenv("MEMFUSE_DATA_DIR", str(tmp_path))
    command = ["--database-url", database_url, "doctor", "--json", "--cached", "60"]
    assert main(["--database-url", database_url, "db", "upgrade"]) == 0
    assert main(command) in (0, 1)
    cache = tmp_path / "doctor-cache.json"
    first = json.loads(cache.read_text())
    assert main(command) in (0, 1)
    assert json.loads(cache.read_text()) == first  # served from the file, not checked again
    assert main([*command[:-1], "0"]) in (0, 1)
    assert json.loads(cache.read_text()) != first  # too old for 0 seconds: checked again
