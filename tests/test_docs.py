"""The Python examples of the integration pages run as written, against the test database."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.model, pytest.mark.slow]

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = ["sync.md", "langgraph.md"]


def python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.DOTALL)


@pytest.mark.parametrize("page", PAGES)
def test_the_pages_examples_run(page: str, database_url: str, tmp_path: Path) -> None:
    blocks = python_blocks(page)
    assert blocks, f"{page} has no example"
    env = {**os.environ, "MEMFUSE_DATABASE_URL": database_url, "HF_HUB_OFFLINE": "1"}
    for number, block in enumerate(blocks):
        script = tmp_path / f"example_{number}.py"
        script.write_text(block)
        done = subprocess.run(
            [sys.executable, str(script)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"{page} example {number}:\n{done.stderr[-3000:]}"
        assert done.stdout.strip(), f"{page} example {number} printed nothing"
