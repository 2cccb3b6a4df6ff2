"""What the integration tests share: a file written with its parents, a scenario on a new engine,
the command line run in a child process."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING, Any

from xoengine.engine import Engine, Scenario

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path


def run_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``xoengine ARGS`` in a child process (text output captured, any exit status)."""
    return subprocess.run(
        [sys.executable, "-m", "xoengine.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


def run_python(code: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """``python -c CODE ARGS`` in a child process (a hang fails after 120 s, not the suite)."""
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, making its parent directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def new_scenario(
    base: Path,
    name: str = "fx",
    replicas: Sequence[str] = ("r1",),
    master: str = "master",
    **options: Any,
) -> tuple[Engine, Scenario, Path]:
    """A scenario ``name`` on a new engine in ``base/state`` (nosync), its master ``base/master``.

    Each replica is ``base/<its name>``. The caller closes the engine.
    """
    root = base / master
    root.mkdir(exist_ok=True)
    eng = Engine.open(base / "state", durability="nosync")
    sc = eng.create_scenario(
        name, master=str(root), replicas={r: str(base / r) for r in replicas}, **options
    )
    return eng, sc, root
