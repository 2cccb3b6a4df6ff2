"""ReplicaTree.for_each: per-file work from several threads, each holding its own parents."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from xoengine.errors import ParentNotDirectoryError, XoError
from xoengine.tree import ReplicaTree


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_for_each_writes_every_file_once_and_closes_its_parents(tmp_path: Path) -> None:
    tree = ReplicaTree(str(tmp_path / "out"), fsync=False)
    paths = [f"d{i % 13}/e{i % 5}/f{i}" for i in range(300)]
    for path in {p.rpartition("/")[0] for p in paths}:
        os.makedirs(tmp_path / "out" / path)
    seen: list[str] = []
    threads: set[int] = set()
    fds = open_fds()

    def write(path: str) -> None:
        threads.add(threading.get_ident())
        seen.append(path)
        tree.write_new(path, [(0, path.encode() * 3)], 3 * len(path), 0o640, 10**18)

    tree.for_each(write, paths, threads=4)
    assert sorted(seen) == sorted(paths)  # each item exactly once
    assert len(threads) > 1
    for path in paths:
        assert (tmp_path / "out" / path).read_bytes() == path.encode() * 3
    assert open_fds() == fds  # every thread's held directories are closed


def test_for_each_raises_the_first_error_and_starts_nothing_after_it(tmp_path: Path) -> None:
    root = tmp_path / "out"
    tree = ReplicaTree(str(root), fsync=False)
    (root / "blocked").write_bytes(b"a file where a directory should be")
    paths = [f"ok{i}" for i in range(40)] + ["blocked/x"] + [f"late{i}" for i in range(400)]
    started: list[str] = []
    lock = threading.Lock()
    fds = open_fds()

    def write(path: str) -> None:
        with lock:
            started.append(path)
        tree.write_new(path, [(0, b"x")], 1, 0o600, 0)

    with pytest.raises(ParentNotDirectoryError) as caught:
        tree.for_each(write, paths, threads=4)
    assert isinstance(caught.value, XoError)
    assert "blocked/x" in started
    # After the failure the threads stop taking items: the long tail is never reached.
    assert len(started) < len(paths)
    assert all((root / p).exists() for p in started if p != "blocked/x")
    assert open_fds() == fds


def test_for_each_on_one_thread_runs_in_order(tmp_path: Path) -> None:
    tree = ReplicaTree(str(tmp_path / "out"), fsync=False)
    order: list[int] = []
    tree.for_each(order.append, range(50), threads=1)
    assert order == list(range(50))


def test_for_each_uses_threads_by_default_only_where_files_are_fsynced(tmp_path: Path) -> None:
    """Without fsync, threads would only contend for the GIL: the caller does the work."""
    for fsync, many in ((False, False), (True, True)):
        tree = ReplicaTree(str(tmp_path / f"out{fsync}"), fsync=fsync)
        seen: set[int] = set()

        def write(i: int, tree: ReplicaTree = tree, seen: set[int] = seen) -> None:
            seen.add(threading.get_ident())
            tree.write_new(f"f{i}", [(0, b"x" * 100)], 100, 0o600, 0)

        tree.for_each(write, range(200))
        assert (len(seen) > 1) is many
        assert (threading.get_ident() in seen) is not many


def test_for_each_stops_its_threads_when_the_caller_is_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the caller waits: the threads finish the item they hold and take no more.

    The signal goes to the process from a worker thread (as a terminal's would
    reach any thread). The items after it wait until the caller, having taken
    it (its handler runs in the caller's thread), is shutting its threads down,
    so how many start does not depend on how fast the others run: only the few
    the threads held then. (They waited for the handler alone, and once, on a
    loaded machine, all 5,000 items ran before the caller got on.)
    """
    from xoengine import tree as tree_module  # noqa: PLC0415

    tree = ReplicaTree(str(tmp_path / "out"), fsync=True)
    started: list[int] = []
    lock = threading.Lock()
    stopping = threading.Event()

    class Pool(tree_module.ThreadPoolExecutor):  # type: ignore[misc]
        def shutdown(self, *args: Any, **kwargs: Any) -> None:
            stopping.set()  # the caller's wait has ended: its interruption is seen
            super().shutdown(*args, **kwargs)

    monkeypatch.setattr(tree_module, "ThreadPoolExecutor", Pool)

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    def write(i: int) -> None:
        with lock:
            started.append(i)
        if i == 20:
            os.kill(os.getpid(), signal.SIGINT)  # delivered to the waiting caller
        elif i > 20:
            stopping.wait()
        tree.write_new(f"f{i}", [(0, b"x" * 4096)], 4096, 0o600, 0)

    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            tree.for_each(write, range(5000), threads=4)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert 20 in started
    assert len(started) < 5000  # those held when it was taken, and no more
    assert sorted(os.listdir(tmp_path / "out")) == sorted(f"f{i}" for i in started)


@pytest.mark.parametrize("size", [0, 1, 1024 * 1024 - 1, 1024 * 1024, 3 * 1024 * 1024 + 7])
def test_digest128_of_a_file_read_in_chunks_is_the_digest_of_its_bytes(
    tmp_path: Path, size: int
) -> None:
    from xoengine import codec  # noqa: PLC0415

    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    tree = ReplicaTree(str(tmp_path), fsync=False)
    assert tree.digest128("f") == codec.digest128(data)
    assert tree.digest128("absent") == codec.digest128(b"")


def test_read_whole_maps_a_private_copy_of_a_large_file_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mmap  # noqa: PLC0415

    from xoengine import tree as tree_module  # noqa: PLC0415

    monkeypatch.setattr(tree_module, "HOLD_MAX", 1000)
    source = tmp_path / "source"
    data = os.urandom(5000)
    source.write_bytes(data)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    fd = os.open(source, os.O_RDONLY)
    try:
        got = tree_module.read_whole(fd, os.fstat(fd), str(scratch))[0]
        assert isinstance(got, mmap.mmap)
        assert got[:] == data
        source.write_bytes(b"changed under the map")  # truncates the source: the copy holds
        assert got[:] == data
        assert not list(scratch.iterdir())  # unnamed: nothing to clean up, even after a kill
        os.lseek(fd, 0, os.SEEK_SET)
        small = tree_module.read_whole(fd, os.fstat(fd), str(scratch))[0]
        assert small == b"changed under the map"  # at most HOLD_MAX: read into memory
        # Where no copy can be made at all (no such directory, a full disk), a large
        # file is read into memory.
        source.write_bytes(data)
        os.lseek(fd, 0, os.SEEK_SET)
        assert tree_module.read_whole(fd, os.fstat(fd), str(tmp_path / "missing"))[0] == data
        # A file system without O_TMPFILE (NFS, FAT; opening the directory itself is
        # what a kernel without the flag does): a named copy, unlinked at once.
        monkeypatch.setattr(os, "O_TMPFILE", 0)
        os.lseek(fd, 0, os.SEEK_SET)
        named = tree_module.read_whole(fd, os.fstat(fd), str(scratch))[0]
        assert isinstance(named, mmap.mmap)
        assert named[:] == data
        assert not list(scratch.iterdir())
    finally:
        os.close(fd)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_owners_are_left_as_they_are_where_the_process_may_not_give_them(tmp_path: Path) -> None:
    """A replica run by a user (not root) keeps its files that user's, with no error."""
    import shutil  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    root = Path(tempfile.mkdtemp(prefix="xoengine-nobody-"))  # pytest's tmp is root's alone
    os.chown(root, 65534, 65534)
    script = (
        "import os\n"
        "from xoengine.tree import ReplicaTree\n"
        "os.setgid(65534); os.setuid(65534)\n"
        f"tree = ReplicaTree({str(root)!r})\n"
        "tree.write_new('f', [(0, b'x')], 1, 0o640, 0, owner=(0, 0))\n"
        "tree.set_meta('f', 0o600, None, owner=(1000, 100))\n"
        "tree.restore_bytes('f', [(0, b'y')], 1, None, None, owner=(0, 0))\n"
        "tree.replace('f', [b'z'], mode=0o644, owner=(0, 0))\n"
    )
    try:
        subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
        st = os.stat(root / "f")
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 65534, 0o644)
        assert (root / "f").read_bytes() == b"z"
    finally:
        shutil.rmtree(root)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root gives files to other users")
def test_a_setuid_file_never_belongs_to_root_on_the_way(tmp_path: Path) -> None:
    """A kill between writing a file and giving it its owner must not leave a root setuid file."""
    tree = ReplicaTree(str(tmp_path / "replica"))
    tree.create("made", "file", 0o4755, None)  # its owner comes later (the next event)
    assert os.stat(tmp_path / "replica" / "made").st_mode & 0o7777 == 0o755
    tree.set_meta("made", 0o4755, None, owner=(1000, 100))
    st = os.stat(tmp_path / "replica" / "made")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1000, 100, 0o4755)
    source = tmp_path / "source"
    source.write_bytes(b"#!/bin/sh\n")
    tree.copy_new("copied", str(source), 0o6755, owner=(1000, 100))  # owner before mode
    st = os.stat(tmp_path / "replica" / "copied")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1000, 100, 0o6755)
    tree.replace("copied", [b"new"], mode=0o4750, owner=(65534, 65534))
    st = os.stat(tmp_path / "replica" / "copied")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (65534, 65534, 0o4750)
