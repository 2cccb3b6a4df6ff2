"""Thin images: a file's holes cost nothing to capture, journal, keep or resync.

Was a bug (review 27r, M3): a file's block digests were sized by its apparent
size, holes included (12 bytes a 4 KiB block). One ``truncate -s 1T`` made a
capture take 12 GiB and minutes, then fail every pass with E4014 (one record
held the digests of 268 million blocks); extending a file journaled its new
zeros as writes; a resync stored every zero of a rewound image in the undo
log. Now a block with no digest in the master state is a block of zeros
(none is stored or journaled for a hole), a new file is read as an in-place
change of an empty one (in parts, holes unread), a hole past a file's old end
is no change at all, and a whole-file before-image notes its holes as counts.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any

import pytest
from scenario_kit import new_scenario

from xoengine.events import BytesWritten, ContentReplaced, FileTruncated
from xoengine.masterstate import pack_digests
from xoengine.tree import ReplicaTree

if TYPE_CHECKING:
    from pathlib import Path

    from xoengine.engine import Engine, Scenario

MiB = 1024 * 1024
GiB = 1024 * MiB
BS = 4096


@pytest.fixture
def base(tmp_path: Path) -> Path:
    probe = tmp_path / "probe"
    with open(probe, "wb") as f:
        f.truncate(64 * MiB)
        f.write(b"x")
    if os.lstat(probe).st_blocks * 512 >= MiB:
        pytest.skip("this file system does not keep holes")
    probe.unlink()
    return tmp_path


def digest_bytes(eng: Engine, after: int) -> int:
    """Bytes of block digests the content events after ``after`` carry."""
    kinds = (BytesWritten, FileTruncated)
    return sum(
        len(packed) for _, event in eng._iter_events(kinds, after) for _, packed in event.digests
    )


def content_of(path: Path) -> tuple[int, bytes]:
    """Size and xxh3-128 of a file's bytes, its holes not read."""
    tree = ReplicaTree(str(path.parent), fsync=False)
    block_map = tree.block_map(path.name, BS)
    return block_map.size, block_map.file_digest


def allocated(path: Path) -> int:
    return os.lstat(path).st_blocks * 512


def write_at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def punch(path: Path, offset: int, length: int) -> None:
    """Make ``[offset, offset + length)`` a hole, its size kept (``fallocate -p``)."""
    import ctypes  # noqa: PLC0415

    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fd = os.open(path, os.O_RDWR)
    try:
        if libc.fallocate(fd, 3, offset, length) != 0:  # PUNCH_HOLE | KEEP_SIZE
            pytest.skip("this file system cannot punch holes")
    finally:
        os.close(fd)


def quiet_after(sc: Scenario) -> None:
    """A second pass reads the racy file again and finds its bytes the digests say."""
    assert sc.capture().events == 0


def master_digests_are_the_files(sc: Scenario, master: Path, name: str) -> None:
    """The master state's digests of ``name`` (holes' included) are those of its bytes."""
    tree = ReplicaTree(str(master), fsync=False)
    held = sc.master_state_snapshot()[name][1]
    assert held == pack_digests(tree.block_map(name, BS))


def test_a_new_thin_image_journals_its_data_and_no_digest_of_its_holes(base: Path) -> None:
    eng, sc, master = new_scenario(base)
    try:
        sc.start()
        image = master / "thin.img"
        with open(image, "wb") as f:
            f.truncate(4 * GiB + 1000)  # a short last block, in a hole
        write_at(image, 5 * MiB + 100, os.urandom(MiB))
        write_at(image, 3 * GiB, os.urandom(3 * MiB))
        mark = eng.last_position()
        result = sc.capture()
        # The data and its blocks' digests (4 MiB + a block: ~12 KiB), not 12 MiB of holes'.
        assert result.bytes_changed <= 4 * MiB + 2 * BS
        assert digest_bytes(eng, mark) <= 12 * (4 * MiB // BS + 4)
        sc.wait_replicated()
        replica = base / "r1" / "thin.img"
        assert content_of(replica) == content_of(image)
        assert allocated(replica) < 16 * MiB
        master_digests_are_the_files(sc, master, "thin.img")
        quiet_after(sc)
        live = sc.master_state_snapshot()
        sc.rebuild_master_state()
        assert sc.master_state_snapshot() == live
    finally:
        eng.close()


def test_an_image_grown_cut_and_punched_journals_what_moved_and_rewinds_exactly(
    base: Path,
) -> None:
    eng, sc, master = new_scenario(base)
    image = master / "img"
    image.write_bytes(os.urandom(10_000))
    size = 64 * MiB
    steps: list[tuple[str, Any, int]] = [  # what, how, the most it may journal
        ("grown by a hole", functools.partial(os.truncate, image, size + 123), 2 * BS),
        (
            "written inside",
            functools.partial(write_at, image, 20 * MiB + 7, os.urandom(MiB)),
            2 * MiB,
        ),
        ("punched", functools.partial(punch, image, 20 * MiB, 512 * 1024), 2 * MiB),
        ("cut short", functools.partial(os.truncate, image, 20 * MiB + 300 * 1024 + 5), BS),
        ("grown again", functools.partial(os.truncate, image, 2 * size), 2 * BS),
    ]
    try:
        sc.start()
        marks = [(sc.set_rewind_point("start"), content_of(image))]
        for what, step, most in steps:
            step()
            result = sc.capture()
            assert result.bytes_changed <= most, what
            sc.wait_replicated()
            assert content_of(base / "r1" / "img") == content_of(image), what
            master_digests_are_the_files(sc, master, "img")
            quiet_after(sc)
            marks.append((sc.set_rewind_point(what), content_of(image)))
        assert allocated(base / "r1" / "img") < 8 * MiB
        for index, (point, held) in enumerate([*reversed(marks), *marks]):
            sc.rewind("r1", point)
            assert content_of(base / "r1" / "img") == held, point.name
            out = base / f"replay{index}"
            eng.replay("fx", to=out, position=point.position)
            assert content_of(out / "img") == held, point.name
            assert allocated(out / "img") < 8 * MiB
        sc.resume("r1")
        sc.wait_replicated()
        assert content_of(base / "r1" / "img") == content_of(image)
        live = sc.master_state_snapshot()
        sc.rebuild_master_state()
        assert sc.master_state_snapshot() == live
    finally:
        eng.close()


def test_a_journaled_file_extended_far_journals_no_digest_of_the_hole(base: Path) -> None:
    eng, sc, master = new_scenario(base)
    try:
        (master / "f").write_bytes(os.urandom(5000))
        sc.start()
        mark = eng.last_position()
        with sc.open("f", "r+b") as f:
            f.truncate(4 * GiB)
            f.seek(2 * GiB)
            f.write(b"y" * 100)
        assert digest_bytes(eng, mark) <= 12 * 8
        sc.wait_replicated()
        assert content_of(base / "r1" / "f") == content_of(master / "f")
        master_digests_are_the_files(sc, master, "f")
        quiet_after(sc)
    finally:
        eng.close()


def test_a_resync_keeps_a_rewound_images_holes_as_counts(base: Path) -> None:
    eng, sc, master = new_scenario(base)
    image = master / "img"
    with open(image, "wb") as f:
        f.truncate(256 * MiB)
    write_at(image, 100 * MiB, os.urandom(MiB))
    try:
        sc.start()
        point = sc.set_rewind_point("before")
        before = content_of(image)
        write_at(image, 200 * MiB, os.urandom(MiB))
        sc.capture()
        sc.wait_replicated()
        sc.rewind("r1", point)
        sc.resume("r1")  # keeps the rewound file whole before it resyncs it
        sc.wait_replicated()
        after = content_of(image)
        assert content_of(base / "r1" / "img") == after
        chunks = [
            name
            for record in sc._appliers["r1"].undo.records(after=0)
            for name in record.args.get("chunks", [])
        ]
        # A blob for each 4 MiB part that holds data; the rest of the image as counts.
        assert sum(isinstance(name, str) for name in chunks) == 2
        assert sum(name for name in chunks if isinstance(name, int)) == 248 * MiB
        resumed = sc.set_rewind_point("resumed")
        sc.rewind("r1", point)
        assert content_of(base / "r1" / "img") == before
        assert allocated(base / "r1" / "img") < 8 * MiB
        sc.rewind("r1", resumed)
        assert content_of(base / "r1" / "img") == after
    finally:
        eng.close()


def test_a_rewrite_read_whole_journals_no_hole_past_the_old_end(base: Path) -> None:
    """Review 28 (B3): a file rewritten at another size is read whole (its change shifts
    data); every block past its old end counted as changed, holes included: the zeros
    of a hole grown after the new data were journaled (1 GiB of them here, 7 s)."""
    eng, sc, master = new_scenario(base)
    image = master / "img"
    image.write_bytes(os.urandom(MiB))
    try:
        sc.start()
        with open(image, "wb") as f:
            f.write(os.urandom(2 * MiB))
            f.truncate(256 * MiB)
        result = sc.capture()
        assert result.bytes_changed <= 2 * MiB + BS
        sc.wait_replicated()
        assert content_of(base / "r1" / "img") == content_of(image)
        assert allocated(base / "r1" / "img") < 8 * MiB
        master_digests_are_the_files(sc, master, "img")
        quiet_after(sc)
    finally:
        eng.close()


def test_a_thin_image_resynced_or_shifted_keeps_its_holes(base: Path) -> None:
    """Review 28 (B2): a resync of a rewound thin image whose size changed took the
    delta path (the whole apparent size mapped and read, ~10 s a GiB), and a delta's
    copies of zero blocks filled the holes of the replica and of a replay: a 1 TiB
    image would fill the replica's disk. A delta is tried for shifted data only, and
    a file rebuilt from one leaves runs of zeros as holes."""
    eng, sc, master = new_scenario(base)
    image = master / "img"
    data = os.urandom(MiB)
    with open(image, "wb") as f:
        f.write(data)
        f.truncate(128 * MiB)
    replica = base / "r1" / "img"
    try:
        sc.start()
        point = sc.set_rewind_point("before")
        write_at(image, 64 * MiB, os.urandom(12 * 1024))
        os.truncate(image, 256 * MiB)
        sc.capture()
        sc.wait_replicated()
        sc.rewind("r1", point)
        sc.resume("r1")
        sc.wait_replicated()
        assert content_of(replica) == content_of(image)
        assert allocated(replica) < 8 * MiB
        with open(image, "wb") as f:  # shifted by a byte at its front: a delta
            f.write(b"X" + data)
            f.truncate(512 * MiB)
        mark = eng.last_position()
        sc.capture()
        assert list(eng._iter_events((ContentReplaced,), mark))
        sc.wait_replicated()
        assert content_of(replica) == content_of(image)
        assert allocated(replica) < 8 * MiB
        out = base / "replay"
        eng.replay("fx", to=out, position=eng.last_position())
        assert content_of(out / "img") == content_of(image)
        assert allocated(out / "img") < 8 * MiB
    finally:
        eng.close()


def test_a_long_hole_at_the_largest_block_size_is_compared_a_window_at_a_time(
    base: Path,
) -> None:
    """Review 28 (B2'): the zeros of a hole's window were sized in blocks (16,384 of them):
    64 GiB at a block size of 4 MiB, and a file grown by a hole of 24 GiB or more made
    every capture raise MemoryError."""
    eng, sc, master = new_scenario(base, block_size=4 * MiB)
    image = master / "img"
    image.write_bytes(os.urandom(MiB))
    try:
        sc.start()
        os.truncate(image, 64 * GiB)
        assert sc.capture().bytes_changed <= 4 * MiB
        sc.wait_replicated()
        assert content_of(base / "r1" / "img") == content_of(image)
        punch(image, 0, 4 * MiB)  # a hole over the old data: compared with its digests
        assert sc.capture().bytes_changed == 4 * MiB
        sc.wait_replicated()
        assert content_of(base / "r1" / "img") == content_of(image)
        quiet_after(sc)
    finally:
        eng.close()
