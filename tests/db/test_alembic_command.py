"""``alembic -c "$(memfuse db ini-path)" upgrade head`` from a checkout's editable install.

There ``memfuse/alembic.ini`` does not exist (the wheel's copy is made at build time), so the
printed path is the checkout's root ``alembic.ini``; the command works from any directory.
The wheel's side is in ``tests/test_packaging.py``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

import memfuse
from memfuse.db import migrate

CHECKOUT = Path(memfuse.__file__).resolve().parent.parent


async def run(
    command: list[str], cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """``command`` in a thread, so the test's event loop (and its database server) runs on."""
    return await asyncio.to_thread(
        subprocess.run, command, cwd=cwd, env=env, capture_output=True, text=True, check=False
    )


async def test_alembic_upgrades_with_the_ini_memfuse_prints(
    tmp_path: Path, engine: AsyncEngine, database_url: str
) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(CHECKOUT),
        "MEMFUSE_DATABASE_URL": database_url,
        "MEMFUSE_SCHEMA": "memfuse_alembic_cli",
    }

    printed = await run([sys.executable, "-m", "memfuse.cli", "db", "ini-path"], tmp_path, env)
    ini = printed.stdout.strip()
    upgrade = await run(
        [sys.executable, "-m", "alembic", "-c", ini, "upgrade", "head"], tmp_path, env
    )

    assert printed.returncode == 0, printed.stderr
    assert Path(ini) == migrate.alembic_ini_path() == CHECKOUT / "alembic.ini"
    assert upgrade.returncode == 0, upgrade.stderr
    assert await migrate.current_revision(engine, "memfuse_alembic_cli") == migrate.head_revision()
