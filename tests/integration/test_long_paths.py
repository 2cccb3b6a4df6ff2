"""Paths longer than LMDB's 511-byte key limit, up to PATH_MAX, on real trees.

A relative path of 600 or 4,000 bytes is legal (names up to NAME_MAX, the
whole up to PATH_MAX): it is captured, synchronized, replicated, rewound,
replayed and told by history, diff and the difference report, byte for
byte, non-UTF-8 names included; the master state keys it by a fixed-length
key (``manifest.path_key``) and still lists and scans it in path order.
"""

from __future__ import annotations

import contextlib
import os
import random
import uuid
from typing import TYPE_CHECKING

import pytest

from xoengine.datastore import open_store
from xoengine.manifest import KEY_MAX, LONG_HEAD, FileState, Manifest, path_key
from xoengine.testing import (
    Append,
    CreateFile,
    Delete,
    Insert,
    MakeDir,
    Node,
    Operation,
    Rename,
    Symlink,
    TreeBuilder,
    WriteAt,
    assert_trees_equal,
    snapshot_contents,
    temporary_engine,
)

if TYPE_CHECKING:
    from pathlib import Path

    from xoengine.engine import Engine, Scenario
    from xoengine.transaction import WriteTxn

PATH_MAX = 4096  # Linux, counting the terminating NUL

D200 = b"d" * 200
MID = b"/".join([b"a", D200, D200, D200])  # a 604-byte directory: scans of it go past LONG_HEAD


def _deep(total: int, last: bytes) -> bytes:
    """A relative path of ``total`` bytes: 249-byte directory names under ``a``, then ``last``."""
    parts: list[bytes] = [b"a"]
    while sum(len(p) + 1 for p in parts) + 250 + len(last) <= total:
        parts.append(bytes([0x61 + len(parts) % 26]) * 248 + b"\xe9")  # not UTF-8
    path = b"/".join(parts) + b"/"
    return path + last + b"x" * (total - len(path) - len(last))


LONG_4K = _deep(4000, b"f\xff-")
LONG_4K_DIR = LONG_4K.rpartition(b"/")[0]

INITIAL: list[Operation] = [
    CreateFile("ok.txt", b"fine"),
    CreateFile("a/short.txt", b"short"),
    CreateFile(MID + b"/f.txt", b"608 bytes of path"),
    CreateFile(MID + b"/g\xe9.bin", random.Random(1).randbytes(20_000)),
    CreateFile(MID + b"/sub/" + b"h" * 250, b"deeper"),
    Symlink(MID + b"/link", b"f.txt"),
    CreateFile(LONG_4K, b"4000 bytes of path"),
    CreateFile(LONG_4K_DIR + b"/s", b"a short name in a long directory"),
]
CHANGES: list[Operation] = [
    WriteAt(MID + b"/f.txt", 0, b"608"),
    Insert(MID + b"/g\xe9.bin", 10_000, b"inserted"),
    Append(LONG_4K, b" and more"),
    Rename(MID + b"/sub", MID + b"/moved"),  # a directory whose path is longer than LONG_HEAD
    Rename(LONG_4K_DIR + b"/s", LONG_4K_DIR + b"/t\xe9"),
    MakeDir(LONG_4K_DIR + b"/new", 0o700),
    Rename("a", "z"),  # and one at the top, above every long path
]


def _z(raw: bytes) -> bytes:
    """Where the rename of ``a`` to ``z`` took ``raw``."""
    assert raw.startswith(b"a/")
    return b"z" + raw[1:]


DELETIONS: list[Operation] = [
    Delete(_z(LONG_4K)),
    Delete(_z(MID + b"/moved")),
    CreateFile(_z(MID + b"/moved"), b"a file where the directory was"),
]


def _fits(tmp_path: Path, *names: str) -> None:
    """Skip if the temporary directory is too deep for a 4,000-byte relative path below it."""
    longest = max(len(os.fsencode(tmp_path / name)) for name in names) + 1 + len(LONG_4K)
    if longest >= PATH_MAX:
        pytest.skip(f"{tmp_path} is too long for a {len(LONG_4K)}-byte path below it")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _scenario(engine: Engine, tmp_path: Path) -> tuple[Scenario, TreeBuilder]:
    builder = TreeBuilder(tmp_path / "master")
    builder.apply_all(INITIAL)
    sc = engine.create_scenario("fs", master=tmp_path / "master", replicas={"r1": tmp_path / "r1"})
    return sc, builder


def test_the_long_paths_are_what_they_claim() -> None:
    assert len(MID + b"/f.txt") == 610
    assert len(LONG_4K) == 4000
    assert max(len(name) for name in LONG_4K.split(b"/")) < 256  # NAME_MAX
    assert path_key(LONG_4K) != LONG_4K and len(path_key(LONG_4K)) == KEY_MAX


def test_start_protects_a_tree_holding_long_paths(tmp_path: Path) -> None:
    _fits(tmp_path, "master", "r1")
    with temporary_engine(tmp_path) as engine:
        sc, _ = _scenario(engine, tmp_path)
        sc.start()
        sc.wait_replicated()
        assert_trees_equal(tmp_path / "master", tmp_path / "r1", mtimes=True)
        state = sc.master_state_snapshot()
        assert _text(LONG_4K) in state
        assert _text(MID + b"/sub/" + b"h" * 250) in state
        assert list(state) == sorted(state, key=os.fsencode)  # path order, long ones too
        again = sc.capture()
        assert (again.events, again.warnings) == (0, [])
        assert sc.difference_report("r1", verify=True)["differences"] == {}
        # The fold from the journal alone gives the same state.
        sc.rebuild_master_state()
        assert sc.master_state_snapshot() == state


def test_changes_under_long_paths_replicate_rewind_and_replay(tmp_path: Path) -> None:
    _fits(tmp_path, "master", "r1", "at-start", "at-changes", "at-end")
    with temporary_engine(tmp_path) as engine:
        sc, builder = _scenario(engine, tmp_path)
        sc.start()
        sc.wait_replicated()
        start = builder.snapshot()
        before = sc.set_rewind_point("before")

        builder.apply_all(CHANGES)
        sc.capture()
        sc.wait_replicated()
        assert_trees_equal(tmp_path / "master", tmp_path / "r1", mtimes=True)
        changed = builder.snapshot()
        after = sc.set_rewind_point("after")
        moved = _text(_z(LONG_4K_DIR + b"/t\xe9"))

        builder.apply_all(DELETIONS)
        sc.capture()
        sc.wait_replicated()
        assert_trees_equal(tmp_path / "master", tmp_path / "r1", mtimes=True)
        assert sc.difference_report("r1", verify=True)["differences"] == {}
        state = sc.master_state_snapshot()
        assert _text(_z(LONG_4K)) not in state
        assert _text(_z(MID + b"/moved/") + b"h" * 250) not in state
        assert moved in state
        assert not [p for p in state if p.startswith("a/")]

        # History and diff name the long paths byte for byte.
        history = engine.history(sc, _text(_z(LONG_4K)))
        assert [(h.operation, h.path, h.new_path) for h in history if h.operation != "written"] == [
            ("created", _text(LONG_4K), None),
            ("renamed", _text(LONG_4K), _text(_z(LONG_4K))),
            ("deleted", _text(_z(LONG_4K)), None),
        ]
        diff = engine.diff(sc, before, after)
        assert diff.renamed[_text(LONG_4K_DIR + b"/s")] == moved
        assert diff.renamed[_text(LONG_4K)] == _text(_z(LONG_4K))
        assert _text(_z(LONG_4K)) in diff.modified
        assert _text(_z(LONG_4K)) in engine.diff(sc, after).removed

        # Replays at each instant give the master as it was then.
        for name, point, snapshot in (
            ("at-start", before, start),
            ("at-changes", after, changed),
            ("at-end", None, builder.snapshot()),
        ):
            engine.replay(sc, to=tmp_path / name, point=point)
            assert snapshot_contents(tmp_path / name) == {
                path: _contents(node) for path, node in snapshot.items()
            }, name

        # Rewinds back to a point after the changes, then before them, then forward.
        sc.rewind("r1", after)
        assert snapshot_contents(tmp_path / "r1") == snapshot_contents(tmp_path / "at-changes")
        sc.rewind("r1", before)
        assert snapshot_contents(tmp_path / "r1") == snapshot_contents(tmp_path / "at-start")
        sc.resume("r1")
        sc.wait_replicated()
        assert_trees_equal(tmp_path / "master", tmp_path / "r1", mtimes=True)


def _contents(node: Node) -> tuple[object, ...]:
    """:func:`snapshot_contents`'s view of one node of a snapshot taken earlier."""
    if node.kind == "symlink":
        return ("symlink", node.target, node.xattrs, node.owner)
    if node.kind == "dir":
        return ("dir", node.mode, node.xattrs, node.owner)
    return (node.kind, node.mode, node.content, node.xattrs, node.owner)


def test_long_keys_list_and_scan_in_path_order(tmp_path: Path) -> None:
    """Paths around the key limit, sharing a LONG_HEAD-byte head, in one manifest."""
    head = b"p/" + b"q" * (LONG_HEAD - 2)
    raws = [
        head,  # LONG_HEAD bytes: kept as it is
        head + b"/",
        head + b"/a",
        head + b"\x01",
        head + b"a" * (KEY_MAX - LONG_HEAD),  # KEY_MAX bytes: kept as it is
        head + b"b" * 20,
        head + b"/" + b"c" * 600,  # long, under head + "/"
        head + b"/" + b"c" * 600 + b"/x",
        head + b"/b" + b"\xff" * 30,
        head + b"a" * 30,  # long, between short ones of the same head
        head + b"\x02" * 40,
        head[:-1] + b"r" + b"s" * 700,  # another head
        b"p/" + b"q" * 3000,
        b"p",
        b"p0",
        b"caf\xe9/" + b"\xe9" * 900,
    ]
    names = [_text(raw) for raw in raws]
    for raw in raws:
        assert (path_key(raw) == raw) is (len(raw) <= KEY_MAX)
    store = open_store(tmp_path / "store", durability="nosync")
    try:
        manifest = Manifest("t")
        store.ensure(*manifest.tables)
        state = FileState(file_id=uuid.uuid4(), version=1, kind="file")

        def fill(txn: WriteTxn) -> None:
            for n, name in enumerate(names):
                manifest.put(txn, name, state.evolve(size=n))

        store.write(fill)
        with store.read() as txn:
            listed = [(os.fsencode(p), s.size) for p, s in manifest.items(txn)]
            assert listed == sorted((raw, n) for n, raw in enumerate(raws))
            for prefix in (
                b"",
                b"p",
                b"p/",
                head[:100],
                head,
                head + b"/",
                head + b"a",
                head + b"/c",
            ):
                under = [p for p, _ in manifest.items(txn, _text(prefix))]
                assert under == [_text(r) for r in sorted(raws) if r.startswith(prefix)], prefix
            for n, name in enumerate(names):
                found = manifest.get(txn, name)
                assert found is not None and found.size == n
            assert manifest.get(txn, _text(head + b"/" + b"c" * 601)) is None
            assert manifest.count(txn) == len(raws)

        def remove(txn: WriteTxn) -> None:
            for name in names[::2]:
                manifest.remove(txn, name)

        store.write(remove)
        with store.read() as txn:
            assert [p for p, _ in manifest.items(txn)] == sorted(names[1::2], key=os.fsencode)
    finally:
        store.close()


def _at(root: Path, rel: bytes, flags: int) -> int:
    """Open ``rel`` below ``root`` one directory at a time (made where missing)."""
    *parents, leaf = rel.split(b"/")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for name in parents:
        if flags & os.O_CREAT:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, dir_fd=fd)
        below = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = below
    try:
        return os.open(leaf, flags, 0o644, dir_fd=fd)
    finally:
        os.close(fd)


def _read_at(root: Path, rel: bytes) -> bytes:
    fd = _at(root, rel, os.O_RDONLY)
    try:
        return os.read(fd, 1 << 16)
    finally:
        os.close(fd)


def test_a_path_the_roots_own_path_takes_past_path_max_is_read(tmp_path: Path) -> None:
    """A 4,076-byte path below a root whose own path takes the whole past ``PATH_MAX``.

    Was a bug (review 21 C, F4): the content reads opened the whole path: the
    first synchronization stopped with E3010, and a capture journaled the file
    as empty, with a "changed while read" warning.
    """
    rel = _deep(PATH_MAX - 20, b"f-")
    master = tmp_path / "master"
    master.mkdir()
    assert len(os.fsencode(master)) + 1 + len(rel) >= PATH_MAX  # the premise
    fd = _at(master, rel, os.O_WRONLY | os.O_CREAT)
    os.write(fd, b"deep")
    with temporary_engine(tmp_path) as engine:
        sc = engine.create_scenario("fs", master=master, replicas={"r1": tmp_path / "r1"})
        (summary,) = sc.start()
        assert summary.warnings == []
        os.write(fd, b" and more")
        os.close(fd)
        assert sc.capture().warnings == []
        sc.wait_replicated()
        assert _read_at(tmp_path / "r1", rel) == b"deep and more"
        with engine.file_at("fs", _text(rel)) as f:
            assert f.read() == b"deep and more"
        assert sc.difference_report("r1")["pending_files"] == 0
        sc.stop()
