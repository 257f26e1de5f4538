"""The wheel is the library only: ``memfuse/`` with its migrations and ``alembic.ini``.

``benchmarks/``, ``tests/`` and ``docs/`` stay in the checkout and the sdist, from which the
same wheel builds. An unpacked wheel finds its own ``alembic.ini`` and migrates a database.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from wheels import ROOT, build, unpack

from memfuse.db import migrate


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("build_wheel", tmp_path_factory.mktemp("wheel"))


def names_in(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_every_file_in_the_wheel_is_the_library_or_its_metadata(wheel: Path) -> None:
    names = names_in(wheel)
    metadata = next(name.split("/")[0] for name in names if ".dist-info/" in name)

    assert {name.split("/")[0] for name in names} == {"memfuse", metadata}
    assert not [name for name in names if "benchmarks" in name or name.startswith("tests/")]


def test_the_wheel_carries_the_migrations_and_alembic_ini(wheel: Path) -> None:
    names = set(names_in(wheel))
    versions = {
        f"memfuse/migrations/versions/{path.name}"
        for path in (ROOT / "migrations" / "versions").glob("*.py")
    }

    assert versions
    assert versions <= names
    assert {
        "memfuse/alembic.ini",
        "memfuse/migrations/env.py",
        "memfuse/migrations/script.py.mako",
        "memfuse/py.typed",
    } <= names


def test_tqdm_is_not_a_dependency_of_the_library(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        metadata_file = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(metadata_file).decode())
    required = [line for line in metadata.get_all("Requires-Dist", []) if "extra ==" not in line]

    assert required
    assert not [line for line in required if line.startswith("tqdm")]


def test_the_sdist_builds_the_same_wheel(tmp_path: Path, wheel: Path) -> None:
    sdist = build("build_sdist", tmp_path)
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path / "src", filter="data")
    (source,) = (tmp_path / "src").iterdir()

    rebuilt = build("build_wheel", tmp_path / "src", source=source)

    assert sorted(names_in(rebuilt)) == sorted(names_in(wheel))
    assert {path.name for path in source.iterdir()} == {
        *("memfuse", "migrations", "alembic.ini", "pyproject.toml", "README.md", "LICENSE"),
        *("tests", "docs", "benchmarks", "CHANGELOG.md", "CONTRIBUTING.md"),
        *(".gitignore", "PKG-INFO"),
    }
    assert not list(source.rglob("__pycache__"))


async def test_an_installed_wheel_migrates_with_the_alembic_ini_it_prints(
    tmp_path: Path, wheel: Path, engine: AsyncEngine, database_url: str
) -> None:
    site = unpack(wheel, tmp_path / "site")
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "MEMFUSE_DATABASE_URL": database_url,
        "MEMFUSE_SCHEMA": "memfuse_from_wheel",
    }

    printed = await run([sys.executable, "-m", "memfuse.cli", "db", "ini-path"], tmp_path, env)
    ini = Path(printed.stdout.strip())
    upgrade = await run(
        [sys.executable, "-m", "alembic", "-c", str(ini), "upgrade", "head"], tmp_path, env
    )

    assert printed.returncode == 0, printed.stderr
    assert ini == site / "memfuse" / "alembic.ini"
    assert upgrade.returncode == 0, upgrade.stderr
    assert await migrate.current_revision(engine, "memfuse_from_wheel") == migrate.head_revision()


async def run(
    command: list[str], cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """``command`` in a thread, so the test's event loop (and its database server) runs on."""
    return await asyncio.to_thread(
        subprocess.run, command, cwd=cwd, env=env, capture_output=True, text=True, check=False
    )


def test_the_wheel_carries_the_inspectors_templates_and_stylesheet(wheel: Path) -> None:
    names = set(names_in(wheel))
    files = {
        f"memfuse/server/{path.relative_to(ROOT / 'memfuse' / 'server').as_posix()}"
        for folder in ("templates", "static")
        for path in (ROOT / "memfuse" / "server" / folder).iterdir()
    }
    assert {"memfuse/server/templates/search.html", "memfuse/server/static/inspector.css"} <= files
    assert files <= names
