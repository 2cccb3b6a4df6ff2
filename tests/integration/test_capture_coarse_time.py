"""Capture on a filesystem whose timestamps only move once a second.

ext4 made with 128-byte inodes keeps whole seconds: a rewrite of the same size
within the second of the last capture leaves size, mtime, ctime and inode as
they were. Such a file is *racy* (git's word): its stat cannot vouch for it.
The capture must look at its bytes again, or the replica and the journal keep
the old content forever. The filesystem is real (``coarse_fs`` in conftest: a
loop-mounted image, which needs root; skipped, saying why, where it cannot be).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from xoengine.testing import assert_trees_equal, temporary_engine

if TYPE_CHECKING:
    from pathlib import Path


def _stamp(path: Path) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def test_capture_sees_a_same_size_rewrite_within_one_timestamp_tick(
    coarse_fs: Path, tmp_path: Path
) -> None:
    master = coarse_fs / "master"
    master.mkdir()
    target = master / "f"
    with temporary_engine(tmp_path) as engine:
        sc = engine.create_scenario("c", master=master, replicas={"r1": tmp_path / "r1"})
        sc.start()
        for attempt in range(20):
            target.write_bytes(b"A%03d" % attempt * 25)
            sc.capture()
            recorded = _stamp(target)
            with target.open("r+b") as f:
                f.write(b"B%03d" % attempt * 25)  # same size, most likely the same second
            if _stamp(target) == recorded:
                break  # the rewrite is invisible to stat: the case under test
        else:
            pytest.fail("20 rewrites all crossed a second boundary")
        sc.capture()
        sc.wait_replicated(timeout=30)
        assert (tmp_path / "r1" / "f").read_bytes() == target.read_bytes()
        assert_trees_equal(master, tmp_path / "r1", mtimes=True)
        # Replayed from the journal alone, the file holds the rewrite too.
        engine.replay("c", to=tmp_path / "replayed")
        assert (tmp_path / "replayed" / "f").read_bytes() == target.read_bytes()


@pytest.mark.parametrize("kind", ["empty file", "file", "directory", "symlink"])
def test_capture_sees_an_xattr_set_within_one_timestamp_tick(
    coarse_fs: Path, tmp_path: Path, kind: str
) -> None:
    # Was a bug: setting an extended attribute moves the ctime alone, not within
    # its second here, and only racy non-empty files were looked at again.
    master = coarse_fs / "master"
    master.mkdir()
    target = master / "p"
    with temporary_engine(tmp_path) as engine:
        sc = engine.create_scenario("c", master=master, replicas={"r1": tmp_path / "r1"})
        sc.start()
        for attempt in range(20):
            if kind == "directory":
                target.mkdir()
            elif kind == "symlink":
                target.symlink_to("nowhere")
            else:
                target.write_bytes(b"" if kind == "empty file" else b"x")
            sc.capture()
            recorded = os.lstat(target).st_ctime_ns
            os.setxattr(target, "trusted.t", b"%d" % attempt, follow_symlinks=False)
            if os.lstat(target).st_ctime_ns == recorded:
                break  # the stat shows nothing: the case under test
            os.rmdir(target) if kind == "directory" else target.unlink()
            sc.capture()
        else:
            pytest.fail("20 attempts all crossed a second boundary")
        sc.capture()
        sc.wait_replicated(timeout=30)
        assert_trees_equal(master, tmp_path / "r1")  # extended attributes included


CAPABILITY = b"\x01\x00\x00\x02\x00 \x00\x00" + bytes(12)  # cap_net_bind_service, permitted


def test_a_capability_given_again_after_a_write_within_one_tick_reaches_the_replica(
    coarse_fs: Path, tmp_path: Path
) -> None:
    # Found by the coarse-time property run: a same-size write (which drops the file's
    # capability) and the same capability set again, both within the second, left the
    # xattrs as the journal knew them: the replica applied the write, lost its
    # capability with it, and was never given it again.
    master = coarse_fs / "master"
    master.mkdir()
    target = master / "a"
    target.write_bytes(os.urandom(3000))
    try:
        os.setxattr(target, "security.capability", CAPABILITY)
    except OSError as e:
        pytest.skip(f"cannot set a file capability here: {e.strerror}")
    with temporary_engine(tmp_path) as engine:
        sc = engine.create_scenario("c", master=master, replicas={"r1": tmp_path / "r1"})
        sc.start()
        sc.wait_replicated(timeout=30)
        for attempt in range(20):
            recorded = _stamp(target)
            with target.open("r+b") as f:
                f.write(bytes([attempt]))  # same size; the kernel drops the capability
            os.setxattr(target, "security.capability", CAPABILITY)
            if _stamp(target)[:2] == recorded[:2]:
                break  # the write is invisible to size and mtime: the case under test
            sc.capture()
        else:
            pytest.fail("20 writes all crossed a second boundary")
        sc.capture()
        sc.wait_replicated(timeout=30)
        got = os.getxattr(tmp_path / "r1" / "a", "security.capability")
        assert got == CAPABILITY
        assert_trees_equal(master, tmp_path / "r1", mtimes=True)
