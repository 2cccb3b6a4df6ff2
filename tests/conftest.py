"""Shared fixtures: a clean environment for every test, and a coarse-time filesystem."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

# Run as a background job of a shell without job control (`cmd &`, nohup), the suite
# starts with SIGINT ignored: Python then raises no KeyboardInterrupt, and the
# processes the tests start inherit the ignored signal. The tests of Ctrl-C need
# it delivered: give the process Python's own handler (its children start with
# the default action, as from a terminal).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

_PREFIXES = ("XO", "LMDB_", "PERSISTENCE_MODULE", "TRANSCODER_TOPIC", "CIPHER_", "COMPRESSOR_TOPIC")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(_PREFIXES):
            monkeypatch.delenv(key)


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


@pytest.fixture
def coarse_fs(tmp_path: Path) -> Iterator[Path]:
    """An ext4 with 128-byte inodes (timestamps in whole seconds), loop-mounted for the test.

    A rewrite of the same size within the second leaves a file's stat as it was:
    the filesystem that makes racy files happen for real. Making it needs root
    (mke2fs, mount -o loop); the test is skipped, saying why, where it cannot be.
    """
    image, mount_point = tmp_path / "coarse.img", tmp_path / "coarse"
    mount_point.mkdir()
    with image.open("wb") as f:
        f.truncate(256 * 1024 * 1024)  # sparse
    made = _run("mke2fs", "-q", "-t", "ext4", "-I", "128", "-F", str(image))
    if made.returncode != 0:
        pytest.skip(f"cannot make a coarse-time ext4: {made.stderr.strip()}")
    mounted = _run("mount", "-o", "loop", str(image), str(mount_point))
    if mounted.returncode != 0:
        pytest.skip(f"cannot loop-mount a coarse-time ext4 (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if _run("umount", str(mount_point)).returncode != 0:
            _run("umount", "-l", str(mount_point))


@pytest.fixture
def readonly_view(tmp_path: Path) -> Iterator[Callable[[Path], Path]]:
    """Mount a directory read-only elsewhere (a bind mount): evidence behind a write blocker.

    Writes below the view fail with EROFS whatever the permissions say, root's
    included. Needs root (mount); skipped, saying why, where it cannot be done.
    """
    views: list[Path] = []

    def view(source: Path) -> Path:
        target = tmp_path / f"readonly-{len(views)}"
        target.mkdir()
        bound = _run("mount", "--bind", str(source), str(target))
        if bound.returncode != 0:
            pytest.skip(f"cannot bind-mount (needs root): {bound.stderr.strip()}")
        views.append(target)
        remounted = _run("mount", "-o", "remount,ro,bind", str(target))
        if remounted.returncode != 0:
            pytest.skip(f"cannot make a bind mount read-only: {remounted.stderr.strip()}")
        return target

    try:
        yield view
    finally:
        for target in reversed(views):
            if _run("umount", str(target)).returncode != 0:
                _run("umount", "-l", str(target))
