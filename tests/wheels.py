"""Build memfuse's wheel and sdist from this checkout, and unpack a wheel as pip would.

hatchling's PEP 517 hooks (the backend ``pyproject.toml`` names, from the ``dev`` extra) run
in a child process in the source tree: no build isolation, no network, about a second.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build(hook: str, directory: Path, source: Path = ROOT) -> Path:
    """Run ``hatchling.build.<hook>`` (``build_wheel``, ``build_sdist``) on ``source``."""
    code = f"import sys, hatchling.build as backend; print(backend.{hook}(sys.argv[1]))"
    done = subprocess.run(
        [sys.executable, "-c", code, str(directory)],
        cwd=source,
        capture_output=True,
        text=True,
        check=True,
    )
    return directory / done.stdout.strip().splitlines()[-1]


def unpack(wheel: Path, directory: Path) -> Path:
    """The wheel's files in ``directory``, importable with it on ``PYTHONPATH`` (its scripts
    are not installed: run ``python -m memfuse.cli``)."""
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(directory)
    return directory
