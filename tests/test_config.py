"""Settings: sources and their precedence, pool levels, validation at start-up, masking."""

from __future__ import annotations

from pathlib import Path

import pytest

from memfuse.config import PoolSettings, Settings, load_settings
from memfuse.errors import ConfigurationError

pytestmark = pytest.mark.usefixtures("clean_env")


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "memfuse.toml"
    path.write_text(body)
    return path


def test_defaults_mean_embedded_server() -> None:
    settings = load_settings(environ={})
    assert settings.database_url is None
    assert settings.schema == "memfuse"
    assert settings.embedding_dimension == 384
    assert settings.pool == PoolSettings()


def test_pool_levels_resolve_store_then_database_then_postgres(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
[postgres]
pool_size = 20
max_overflow = 40
pool_timeout = 60
pool_recycle = 900

[database]
pool_size = 10
max_overflow = 15

[store]
pool_size = 4
""",
    )
    pool = load_settings(path, environ={}).pool
    assert (pool.pool_size, pool.max_overflow, pool.pool_timeout, pool.pool_recycle) == (
        4,
        15,
        60.0,
        900,
    )


def test_environment_overrides_file_and_arguments_override_environment(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[store]\npool_size = 4\n")
    env = {"MEMFUSE_POOL_SIZE": "8", "MEMFUSE_POOL_PRE_PING": "false", "MEMFUSE_SCHEMA": "mem"}
    settings = load_settings(path, environ=env)
    assert settings.pool.pool_size == 8
    assert settings.pool.pool_pre_ping is False
    assert settings.schema == "mem"
    assert load_settings(path, environ=env, pool_size=2).pool.pool_size == 2


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, 'embedding_dimension = 768\n[database]\nurl = "postgresql://h/db"\n'
    )
    settings = load_settings(environ={"MEMFUSE_CONFIG": str(path)})
    assert settings.embedding_dimension == 768
    assert settings.masked_database_url == "postgresql+asyncpg://h:5432/db"


def test_database_url_precedence() -> None:
    env = {
        "POSTGRES_HOST": "pg.internal",
        "POSTGRES_PORT": "6543",
        "POSTGRES_DB": "mem",
        "POSTGRES_USER": "app",
        "POSTGRES_PASSWORD": "pw",
    }
    from_parts = load_settings(environ=env)
    assert from_parts.masked_database_url == "postgresql+asyncpg://app:***@pg.internal:6543/mem"
    env["MEMFUSE_DATABASE_URL"] = "postgresql://other/db"
    assert load_settings(environ=env).masked_database_url == "postgresql+asyncpg://other:5432/db"
    explicit = load_settings(environ=env, database_url="postgresql://arg/db")
    assert explicit.masked_database_url == "postgresql+asyncpg://arg:5432/db"


@pytest.mark.parametrize(
    ("source", "setting"),
    [
        ({"MEMFUSE_POOL_SIZE": "0"}, "pool_size"),
        ({"MEMFUSE_POOL_SIZE": "many"}, "pool_size"),
        ({"MEMFUSE_MAX_OVERFLOW": "-1"}, "max_overflow"),
        ({"MEMFUSE_POOL_TIMEOUT": "0"}, "pool_timeout"),
        ({"MEMFUSE_POOL_TIMEOUT": "-3"}, "pool_timeout"),
        ({"MEMFUSE_POOL_RECYCLE": "0"}, "pool_recycle"),
        ({"MEMFUSE_POOL_PRE_PING": "maybe"}, "pool_pre_ping"),
        ({"MEMFUSE_DATABASE_URL": "not a url"}, "database_url"),
        ({"MEMFUSE_DATABASE_URL": "mysql://u@h/db"}, "database_url"),
        ({"MEMFUSE_SCHEMA": "Bad-Name"}, "schema"),
        ({"MEMFUSE_EMBEDDING_DIMENSION": "0"}, "embedding_dimension"),
        ({"POSTGRES_HOST": "h", "POSTGRES_PORT": "x"}, "postgres.port"),
    ],
)
def test_invalid_values_fail_at_start_naming_the_setting(
    source: dict[str, str], setting: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_settings(environ=source)
    assert raised.value.setting == setting
    assert setting in str(raised.value)


def test_invalid_file_values_and_keys_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="pool_size"):
        load_settings(write_config(tmp_path, "[database]\npool_size = 0\n"), environ={})
    with pytest.raises(ConfigurationError, match=r"store\.pool_sise"):
        load_settings(write_config(tmp_path, "[store]\npool_sise = 3\n"), environ={})
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", environ={})
    with pytest.raises(ConfigurationError, match="MEMFUSE_CONFIG"):
        load_settings(write_config(tmp_path, "pool_size = [\n"), environ={})


def test_unknown_argument_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="pool_sise"):
        load_settings(environ={}, pool_sise=3)


def test_repr_masks_the_password() -> None:
    settings = Settings(database_url="postgresql://app:topsecret@db/mem")
    assert "topsecret" not in repr(settings)
    assert "***" in repr(settings)


def test_dimension_above_the_hnsw_limit_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="2000"):
        load_settings(environ={}, embedding_dimension=3072)


def test_pool_keys_at_the_top_level_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"\[store\]"):
        load_settings(write_config(tmp_path, "pool_size = 99\n"), environ={})


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        ({"buffer_max_messages": 0}, "buffer_max_messages"),
        ({"buffer_max_pending": 10, "buffer_max_messages": 20}, "buffer_max_pending"),
        ({"buffer_max_delay": -1}, "buffer_max_delay"),
        ({"episode_target_tokens": 900, "episode_max_tokens": 800}, "episode_max_tokens"),
        ({"fact_extractor": "magic"}, "fact_extractor"),
        ({"fact_extractor": "llm"}, "llm_base_url"),
        ({"fact_extractor": "llm", "llm_base_url": "http://x/v1"}, "llm_model"),
        ({"llm_base_url": "ftp://x"}, "llm_base_url"),
        ({"pipeline_poll_interval": 0}, "pipeline_poll_interval"),
        ({"pipeline_pass_interval": -1}, "pipeline_pass_interval"),
        ({"max_message_chars": 0}, "max_message_chars"),
    ],
)
def test_layer_settings_are_checked(
    clean_env: None, overrides: dict[str, object], setting: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(**overrides)
    assert caught.value.setting == setting


def test_every_setting_reads_its_environment_variable(clean_env: None) -> None:
    settings = load_settings(
        environ={"MEMFUSE_BUFFER_MAX_DELAY": "0.25", "MEMFUSE_PIPELINE_PARALLEL": "false"}
    )
    assert (settings.buffer_max_delay, settings.pipeline_parallel) == (0.25, False)


def test_the_llm_api_key_is_masked(clean_env: None) -> None:
    assert "sk-secret" not in repr(load_settings(llm_api_key="sk-secret"))
