"""Database URLs: libpq's sslmode, query parameters asyncpg can take, ports, and the LISTEN
connection opened with the same options as the pool's connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import parts
import pytest
from asyncpg.connect_utils import SessionAttribute, SSLMode
from real_model import memfuse_with_model
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url

from memfuse.config import Settings
from memfuse.config.urls import (
    ACCEPTED_QUERY_PARAMETERS,
    SSL_MODES,
    TARGET_SESSION_ATTRS,
    asyncpg_connect_args,
    engine_key,
    mask_url,
    normalize_url,
)
from memfuse.container import resolve
from memfuse.db.engines import create_engine
from memfuse.embedding.embedders import LocalEmbedder
from memfuse.errors import ConfigurationError
from memfuse.memory import MemFuse

SECRET = "s3cr3t-Pw"
BASE = f"postgresql://app:{SECRET}@db.example.com/app"


def rejection(url: str) -> str:
    """The message of the ConfigurationError ``url`` raises, checked for the password."""
    with pytest.raises(ConfigurationError) as raised:
        normalize_url(url)
    assert raised.value.setting == "database_url"
    message = str(raised.value)
    assert SECRET not in message
    assert SECRET.lower() not in message.lower()
    return message


def with_query(url: str, **query: str) -> str:
    return make_url(url).update_query_dict(query).render_as_string(hide_password=False)


# --- sslmode --------------------------------------------------------------------------------


def test_the_ssl_modes_are_exactly_asyncpgs() -> None:
    """Every mode memfuse passes on is one asyncpg's ``connect(ssl=...)`` parses, and back."""
    assert set(SSL_MODES) == {mode.name.replace("_", "-") for mode in SSLMode}
    for mode in SSL_MODES:
        SSLMode.parse(mode)
    assert set(TARGET_SESSION_ATTRS) == {attr.value for attr in SessionAttribute}


@pytest.mark.parametrize("mode", SSL_MODES)
def test_libpq_sslmode_becomes_asyncpg_ssl(mode: str) -> None:
    normalized = normalize_url(f"{BASE}?sslmode={mode}")
    assert dict(normalized.query) == {"ssl": mode}
    assert engine_key(f"{BASE}?sslmode={mode}") == engine_key(f"{BASE}?ssl={mode}")
    assert asyncpg_connect_args(f"{BASE}?sslmode={mode}")["ssl"] == mode


def test_the_hosted_database_spelling_is_accepted_by_settings_and_memfuse() -> None:
    url = f"{BASE}?sslmode=require"
    settings = Settings(database_url=url)
    assert settings.masked_database_url == (
        "postgresql+asyncpg://app:***@db.example.com:5432/app?ssl=require"
    )
    MemFuse(url, embedder="none")  # no TypeError waiting for start()


def test_sslmode_and_ssl_may_agree_but_not_disagree() -> None:
    agreeing = f"{BASE}?sslmode=verify-full&ssl=verify-full"
    assert dict(normalize_url(agreeing).query) == {"ssl": "verify-full"}
    message = rejection(f"{BASE}?sslmode=require&ssl=disable")
    assert "'sslmode'" in message and "'ssl'" in message and "disagree" in message


@pytest.mark.parametrize("value", ["true", "REQUIRE", "verify_full", "on"])
def test_an_ssl_mode_asyncpg_would_not_parse_is_rejected(value: str) -> None:
    for name in ("ssl", "sslmode"):
        message = rejection(f"{BASE}?{name}={value}")
        assert f"query parameter {name!r}" in message
        assert "verify-full" in message  # lists the accepted modes


# --- other parameters -----------------------------------------------------------------------


def test_an_unknown_parameter_is_named_and_the_accepted_ones_listed() -> None:
    message = rejection(f"{BASE}?sslmode=require&frobnicate={SECRET}")
    assert "query parameter 'frobnicate'" in message
    for name in ("ssl", "sslmode", "passfile", "target_session_attrs", "direct_tls"):
        assert name in message
    assert ", ".join(ACCEPTED_QUERY_PARAMETERS) in message


def test_a_parameter_name_holding_the_password_is_not_echoed() -> None:
    message = rejection(f"{BASE}?{SECRET}=1")
    assert "a query parameter is not a connection option" in message


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("application_name", "ALTER ROLE <user> SET application_name"),
        ("timeout", "connect_timeout setting (MEMFUSE_CONNECT_TIMEOUT)"),
        ("connect_timeout", "connect_timeout setting (MEMFUSE_CONNECT_TIMEOUT)"),
        ("command_timeout", "command_timeout setting (MEMFUSE_COMMAND_TIMEOUT)"),
        ("max_cacheable_statement_size", "as text"),
        ("statement_cache_size", "prepared_statement_cache_size=0"),
        ("sslrootcert", "PGSSLROOTCERT"),
        ("sslcert", "PGSSLCERT"),
        ("sslkey", "PGSSLKEY"),
        ("password", "postgresql://user:password@host:port/database"),
        ("user", "postgresql://user:password@host:port/database"),
    ],
)
def test_parameters_a_url_cannot_carry_are_rejected_with_the_way_to_set_them(
    name: str, hint: str
) -> None:
    message = rejection(f"{BASE}?{name}=x1")
    assert f"query parameter {name!r}" in message
    assert hint in message


@pytest.mark.parametrize(
    "query",
    [
        "target_session_attrs=leader",
        "prepared_statement_cache_size=-1",
        "prepared_statement_cache_size=many",
        "prepared_statement_cache_size=%C2%B2",  # a superscript two: a digit int() refuses
        "gsslib=kerberos",
        "direct_tls=maybe",
        "sslnegotiation=tls",
        "ssl=require&ssl=require",
    ],
)
def test_a_value_asyncpg_could_not_use_is_rejected(query: str) -> None:
    name = query.split("=")[0]
    assert f"query parameter {name!r}" in rejection(f"{BASE}?{query}")


@pytest.mark.parametrize("name", ["ssl", "passfile", "host", "port", "krbsrvname"])
def test_an_empty_value_is_rejected(name: str) -> None:
    """make_url drops ``?name=``, but a URL object can still carry an empty value."""
    url = URL.create("postgresql", "app", SECRET, "db.example.com", None, "app", {name: ""})
    with pytest.raises(ConfigurationError, match=f"query parameter {name!r}") as raised:
        normalize_url(url)
    assert SECRET not in str(raised.value)


def test_accepted_parameters_are_kept_checked_and_sorted() -> None:
    url = (
        f"{BASE}?target_session_attrs=read-write&passfile=/etc/pgpass&service=app"
        "&prepared_statement_cache_size=007&krbsrvname=pg&gsslib=gssapi&sslmode=require"
    )
    assert dict(normalize_url(url).query) == {
        "gsslib": "gssapi",
        "krbsrvname": "pg",
        "passfile": "/etc/pgpass",
        "prepared_statement_cache_size": "7",
        "service": "app",
        "ssl": "require",
        "target_session_attrs": "read-write",
    }


def test_direct_tls_follows_sslnegotiation_and_needs_a_verifying_mode() -> None:
    direct = engine_key(f"{BASE}?sslnegotiation=direct&sslmode=require")
    assert direct == engine_key(f"{BASE}?direct_tls=true&ssl=require")
    assert direct.endswith("?direct_tls=true&ssl=require")
    # false is asyncpg's default, and a URL cannot carry False: the text "false" would be true
    assert engine_key(f"{BASE}?direct_tls=false") == engine_key(BASE)
    assert engine_key(f"{BASE}?sslnegotiation=postgres") == engine_key(BASE)
    assert "disagree" in rejection(f"{BASE}?sslnegotiation=postgres&direct_tls=true&ssl=require")
    assert "needs ssl" in rejection(f"{BASE}?direct_tls=true")
    assert "needs ssl" in rejection(f"{BASE}?sslnegotiation=direct&sslmode=prefer")


def test_normalizing_twice_changes_nothing() -> None:
    url = f"postgres://app:{SECRET}@DB.Example.com/app?sslmode=require&host=/run/pg&passfile=/p"
    once = normalize_url(url)
    assert normalize_url(once) == once
    assert normalize_url(once.render_as_string(hide_password=False)) == once
    assert SECRET not in mask_url(url)


# --- ports and hosts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app:{SECRET}@db.example.com:99999/app",
        f"postgresql://app:{SECRET}@db.example.com:65536/app",
        f"postgresql://app:{SECRET}@db.example.com:0/app",
        f"postgresql://app:{SECRET}@/app?host=h1:1&host=h2:99999",
        f"postgresql://app:{SECRET}@/app?host=h1:99999",
        f"postgresql://app:{SECRET}@/app?host=h1,h2&port=5432,70000",
        f"postgresql://app:{SECRET}@/app?port=0",
    ],
)
def test_a_port_outside_the_tcp_range_is_rejected(url: str) -> None:
    assert "port outside 1-65535" in rejection(url)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app:{SECRET}@db.example.com:port/app",
        f"postgresql://app:{SECRET}@/app?port=abc",
        f"postgresql://app:{SECRET}@/app?host=h1:1&host=h2:abc",
        f"postgresql://app:{SECRET}@/app?host=h1,h2&port=1",
    ],
)
def test_an_unparsable_host_or_port_is_rejected_without_the_password(url: str) -> None:
    rejection(url)


def test_ports_at_the_edges_and_several_hosts_are_accepted() -> None:
    assert normalize_url("postgresql://u:p@h:1/d").port == 1
    assert normalize_url("postgresql://u:p@h:65535/d").port == 65535
    args = asyncpg_connect_args("postgresql://u:p@/d?host=h1:5432&host=h2:5433")
    assert (args["host"], args["port"]) == (["h1", "h2"], [5432, 5433])


# --- asyncpg_connect_args -------------------------------------------------------------------


def test_the_listen_connection_gets_the_pools_connection_options() -> None:
    url = (
        f"{BASE}?sslmode=verify-full&sslnegotiation=direct&passfile=/etc/pgpass"
        "&target_session_attrs=read-write&krbsrvname=pg&gsslib=gssapi"
        "&prepared_statement_cache_size=0"
    )
    args = asyncpg_connect_args(url)
    assert args == {
        "user": "app",
        "password": SECRET,
        "host": "db.example.com",
        "port": 5432,
        "database": "app",
        "ssl": "verify-full",
        "direct_tls": "true",
        "passfile": "/etc/pgpass",
        "target_session_attrs": "read-write",
        "krbsrvname": "pg",
        "gsslib": "gssapi",
    }
    # what the pool's connections get, less the adapter's own statement cache size
    engine = create_engine(url)
    try:
        _, pool_args = engine.dialect.create_connect_args(engine.url)
    finally:
        asyncio.run(engine.dispose())
    assert pool_args.pop("prepared_statement_cache_size") == 0
    assert {name: value for name, value in args.items() if value is not None} == pool_args


def test_the_listen_connection_may_pass_its_own_timeout_and_server_settings() -> None:
    """The embedding worker adds ``timeout`` and ``server_settings`` to these arguments."""
    args = asyncpg_connect_args(f"{BASE}?sslmode=require&target_session_attrs=primary")
    assert not {"timeout", "command_timeout", "server_settings"} & set(args)
    assert asyncpg_connect_args("postgresql://u@/d?host=/run/pg") == {
        "user": "u",
        "password": None,
        "host": "/run/pg",
        "port": None,
        "database": "d",
    }


# --- against the test server ----------------------------------------------------------------


async def pool_select(url: str, sql: str = "SELECT 1") -> object:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return (await connection.execute(text(sql))).scalar()
    finally:
        await engine.dispose()


async def direct_select(url: str, sql: str = "SELECT 1") -> object:
    connection = await asyncpg.connect(**asyncpg_connect_args(url))
    try:
        return await connection.fetchval(sql)
    finally:
        await connection.close()


def chain(error: BaseException) -> list[BaseException]:
    """``error`` and its causes: the pool wraps the driver's errors in SQLAlchemy's."""
    errors: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in errors:
        errors.append(current)
        current = current.__cause__ or current.__context__
    return errors


BOTH_PATHS: list[Callable[..., Awaitable[object]]] = [pool_select, direct_select]


@pytest.mark.parametrize("mode", ["disable", "prefer"])
@pytest.mark.parametrize("path", BOTH_PATHS)
async def test_a_url_with_sslmode_connects(
    database_url: str, mode: str, path: Callable[..., Awaitable[object]]
) -> None:
    url = with_query(database_url, sslmode=mode, target_session_attrs="read-write")
    assert await path(url, "SELECT current_database()") == make_url(database_url).database


@pytest.mark.parametrize("path", BOTH_PATHS)
async def test_the_translated_sslmode_reaches_the_driver(
    database_url: str, path: Callable[..., Awaitable[object]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify-full makes asyncpg load the root certificate (even for a Unix socket), so a
    missing one fails the connection: the mode arrived; disable and prefer never load it."""
    monkeypatch.setenv("PGSSLROOTCERT", "/nonexistent/memfuse/root.crt")
    with pytest.raises(Exception) as failed:
        await path(with_query(database_url, sslmode="verify-full"))
    assert any(isinstance(e, FileNotFoundError) for e in chain(failed.value))
    for mode in ("disable", "prefer"):  # modes that never load a root certificate
        assert await path(with_query(database_url, sslmode=mode)) == 1


@pytest.mark.parametrize("path", BOTH_PATHS)
async def test_other_options_reach_the_driver(
    database_url: str, path: Callable[..., Awaitable[object]], tmp_path: Path
) -> None:
    """The test server is a primary, so asking for a standby fails; a password file is read
    (asyncpg refuses one that others may read) only when the URL names it."""
    with pytest.raises(Exception) as failed:
        await path(with_query(database_url, target_session_attrs="standby"))
    assert any(isinstance(e, asyncpg.TargetServerAttributeNotMatched) for e in chain(failed.value))
    assert await path(with_query(database_url, target_session_attrs="primary")) == 1
    passfile = tmp_path / "pgpass"
    passfile.write_text("*:*:*:*:unused\n")
    passfile.chmod(0o644)
    with pytest.warns(UserWarning, match="password file"):
        await path(with_query(database_url, passfile=str(passfile)))
    passfile.chmod(0o600)


@asynccontextmanager
async def started(url: str, model: LocalEmbedder) -> AsyncIterator[MemFuse]:
    async with memfuse_with_model(url, model, pipeline_auto=False) as mf:
        yield mf


async def test_memfuse_starts_embeds_and_listens_with_sslmode(
    database_url: str, model: LocalEmbedder
) -> None:
    """End to end: the pool migrates and writes, and the worker's LISTEN connection (opened
    from ``asyncpg_connect_args`` plus its own timeout and application name) connects."""
    url = with_query(database_url, sslmode="disable", target_session_attrs="read-write")
    async with started(url, model) as mf:
        assert (await resolve(mf.container.embedding_worker)) is not None
        for _ in range(200):
            if (await parts.worker(mf)).stats.listener_connects:
                break
            await asyncio.sleep(0.05)
        assert (await parts.worker(mf)).stats.listener_connects == 1
        memory = await mf.init("ana")
        await memory.add([{"role": "user", "content": "I keep bees on the roof."}])
        await mf.flush()
        report = await mf.health()
    assert report.ok, report.lines()
