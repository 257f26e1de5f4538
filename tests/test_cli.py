"""The command line: the demo end to end, and clear errors with a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

MEMFUSE = [sys.executable, "-m", "memfuse.cli"]


def test_demo_migrates_creates_scope_and_reports(database_url: str) -> None:
    result = subprocess.run(
        [*MEMFUSE, "--database-url", database_url, "demo"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert "migrated to revision 0001" in result.stdout
    assert "session 'demo-session' = " in result.stdout
    assert "db_query" in result.stdout
    assert "tenancy_resolve" in result.stdout


def test_bad_setting_exits_non_zero_with_the_setting_named() -> None:
    result = subprocess.run(
        [*MEMFUSE, "--database-url", "mysql://root:pw@localhost/db", "db", "current"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "database_url" in result.stderr
    assert "pw@" not in result.stderr
