"""``memfuse bench`` runs from a source checkout, and says in one line what is missing.

The benchmarks are not in the wheel: from an unpacked wheel the command names the way to run
it; from the checkout it imports ``benchmarks`` beside ``memfuse/`` even when that folder is
not on ``sys.path``. A section whose packages are absent stops the run before it starts.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
from wheels import build, unpack

import memfuse
from benchmarks import suite
from memfuse.cli import BENCH_NEEDS_CHECKOUT
from memfuse.cli import main as memfuse_main

CHECKOUT = Path(memfuse.__file__).resolve().parent.parent


def python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )


def installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_bench_from_an_installed_wheel_says_it_runs_from_a_checkout(tmp_path: Path) -> None:
    site = unpack(build("build_wheel", tmp_path / "dist"), tmp_path / "site")
    output = tmp_path / "suite.json"
    code = (
        "import sys, memfuse.cli\n"
        f"sys.exit(memfuse.cli.main(['bench', '--output', {str(output)!r}]))\n"
    )

    done = python(code, tmp_path, PYTHONPATH=str(site))

    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"memfuse: {BENCH_NEEDS_CHECKOUT}"]
    assert "pip install -e '.[bench,local]'" in done.stderr
    assert not output.exists()


def test_bench_imports_the_checkout_beside_memfuse(tmp_path: Path) -> None:
    """The checkout is taken off ``sys.path`` after ``memfuse`` is imported: bench puts it back."""
    code = (
        "import sys, pathlib, memfuse.cli\n"
        f"root = pathlib.Path({str(CHECKOUT)!r})\n"
        "sys.path[:] = [p for p in sys.path if pathlib.Path(p or '.').resolve() != root]\n"
        f"sys.exit(memfuse.cli.main(['bench', '--only', 'nope', '--output', 'x.json']))\n"
    )

    done = python(code, tmp_path, PYTHONPATH=str(CHECKOUT))

    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == ["unknown sections: nope"]


def test_a_section_whose_packages_are_missing_stops_the_run_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(suite.REQUIREMENTS, "peers", ("memfuse-no-such-peer",))
    output = tmp_path / "suite.json"

    code = memfuse_main(["bench", "--only", "peers", "--output", str(output)])

    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        "memfuse bench: the peers section(s) need packages that are not installed"
        " (memfuse-no-such-peer): run pip install -e '.[bench,local]' in the checkout,"
        " or choose other sections with --only"
    ]
    assert not output.exists()


@pytest.mark.skipif(installed("mem0ai"), reason="the bench extra is installed here")
def test_without_the_bench_extra_the_peers_section_names_mem0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = memfuse_main(["bench", "--only", "peers", "--output", str(tmp_path / "suite.json")])

    assert code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "mem0ai" in line
    assert "pip install -e '.[bench,local]'" in line


def test_each_section_process_imports_the_checkout() -> None:
    path = suite.section_environment("postgresql://localhost/x")["PYTHONPATH"]

    assert path.split(os.pathsep)[0] == str(CHECKOUT)


def test_the_peers_module_imports_no_peer_until_it_runs(tmp_path: Path) -> None:
    code = (
        "import sys, benchmarks.peers\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('mem0', 'langgraph', 'psycopg')))\n"
    )

    done = python(code, tmp_path, PYTHONPATH=str(CHECKOUT))

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
