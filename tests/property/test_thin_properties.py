"""Thin-file properties: holes are never journaled, and every state comes back exact.

Each example is a fresh engine (real LMDB, ``nosync``) protecting one master
file that a random script grows by holes, writes into (inside, across and
past its end), punches holes in (``fallocate`` PUNCH_HOLE) and cuts, at a
block size that does or does not match the file system's 4 KiB. Each step
is journaled by a capture or, at random, through a journaled file object,
and ends at a rewind point whose bytes the test records. Then:

(a) the master state's block digests of the file are those of its bytes
    (the holes' included, though none is stored for them), and a second pass
    journals nothing;
(b) the replica holds the master's bytes, and its allocation is bounded by
    the data written (holes stay holes);
(c) rewinding the replica to every point (back, then forth) and replaying
    every point from the journal alone give the recorded bytes;
(d) a resume (a block-level resync of the rewound file) gives the master's
    bytes again, and a rebuild of the master state from the journal gives
    the same master state.
"""

from __future__ import annotations

import ctypes
import os
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xoengine.engine import Engine
from xoengine.masterstate import pack_digests
from xoengine.tree import ReplicaTree

if TYPE_CHECKING:
    from pathlib import Path

KiB = 1024
MiB = 1024 * KiB
SPAN = 6 * MiB  # offsets and sizes stay below this: a few 4 MiB blobs, quick examples

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def _punch(path: Path, offset: int, length: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        _libc.fallocate(fd, 3, offset, length)  # PUNCH_HOLE | KEEP_SIZE; ignored where it cannot
    finally:
        os.close(fd)


def _write(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


offsets = st.integers(0, SPAN)
step = st.one_of(
    st.tuples(st.just("grow"), offsets),  # truncate up (a hole), or down if smaller
    st.tuples(st.just("cut"), offsets),
    st.tuples(
        st.just("write"),
        offsets,
        st.integers(1, 300 * KiB),
        st.sampled_from([0, 1, 0x5A]),  # 0: zeros written as data, not a hole
    ),
    st.tuples(st.just("punch"), offsets, st.integers(1, 2 * MiB)),
)


def _apply(path: Path, action: tuple[Any, ...]) -> None:
    kind = action[0]
    if kind in {"grow", "cut"}:
        os.truncate(path, action[1])
    elif kind == "write":
        _, offset, length, fill = action
        data = bytes([fill]) * length if fill != 1 else os.urandom(length)
        _write(path, offset, data)
    else:
        _, offset, length = action
        _punch(path, offset, length)


def _journaled(sc: Any, action: tuple[Any, ...]) -> bool:
    """The step through a journaled file object (its writes and truncations); False if none."""
    kind = action[0]
    if kind == "punch":
        return False
    with sc.open("img", "r+b") as f:
        if kind in {"grow", "cut"}:
            f.truncate(action[1])
        else:
            _, offset, length, fill = action
            f.seek(offset)
            f.write(bytes([fill]) * length if fill != 1 else os.urandom(length))
    return True


def _content(path: Path) -> bytes:
    return path.read_bytes()


def _allocated(path: Path) -> int:
    return os.lstat(path).st_blocks * 512


@pytest.fixture(scope="module")
def holes_kept(tmp_path_factory: pytest.TempPathFactory) -> None:
    probe = tmp_path_factory.mktemp("probe") / "p"
    with open(probe, "wb") as f:
        f.truncate(8 * MiB)
        f.write(b"x")
    if _allocated(probe) >= MiB:
        pytest.skip("this file system does not keep holes")


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    script=st.lists(st.tuples(step, st.booleans()), min_size=1, max_size=7),
    initial=st.integers(0, 3 * MiB),
    block_size=st.sampled_from([4096, 1536]),
)
def test_thin_file_steps_journal_no_hole_and_rewind_exactly(
    tmp_path_factory: pytest.TempPathFactory,
    holes_kept: None,
    script: list[tuple[tuple[Any, ...], bool]],
    initial: int,
    block_size: int,
) -> None:
    base = tmp_path_factory.mktemp("thin")
    master, replica = base / "master", base / "r1"
    master.mkdir()
    image = master / "img"
    with open(image, "wb") as f:
        f.truncate(initial)  # a thin start: all hole
    _write(image, initial // 2, b"seed" * 1000)
    eng = Engine.open(base / "state", durability="nosync")
    try:
        sc = eng.create_scenario(
            "t", master=master, replicas={"r1": replica}, block_size=block_size
        )
        sc.start()
        marks = [(sc.set_rewind_point("start"), _content(image))]
        written = max(initial // 2 + 4000, 0)
        for number, (action, through_object) in enumerate(script):
            if not (through_object and _journaled(sc, action)):
                _apply(image, action)
                sc.capture()
            if action[0] == "write":
                written += action[2]
            sc.wait_replicated(timeout=60)
            # (a) the master state's digests are the file's, holes' included
            tree = ReplicaTree(str(master), fsync=False)
            held = sc.master_state_snapshot()["img"][1]
            assert held == pack_digests(tree.block_map("img", block_size)), action
            assert sc.capture().events == 0, action
            # (b) the replica holds the bytes, its holes kept
            assert _content(replica / "img") == _content(image), action
            assert _allocated(replica / "img") <= written + 2 * MiB, action
            marks.append((sc.set_rewind_point(f"p{number}"), _content(image)))
        # (c) every point back, then forth, and replayed from the journal alone
        for index, (point, recorded) in enumerate([*reversed(marks), *marks]):
            sc.rewind("r1", point)
            assert _content(replica / "img") == recorded, point.name
            if index < len(marks):
                out = base / f"replay{index}"
                eng.replay("t", to=out, position=point.position)
                assert _content(out / "img") == recorded, point.name
        # (d) a resync from the last rewind, and the master state rebuilt
        sc.rewind("r1", marks[0][0])
        sc.resume("r1")
        sc.wait_replicated(timeout=60)
        assert _content(replica / "img") == _content(image)
        live = sc.master_state_snapshot()
        sc.rebuild_master_state()
        assert sc.master_state_snapshot() == live
    finally:
        eng.close()
