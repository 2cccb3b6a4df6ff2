"""Sparse files: zeros past the end of a file are left as holes, bytes stay exact."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xoengine.blocks import BlockMap
from xoengine.tree import ReplicaTree, data_of

MiB = 1024 * 1024


def allocated(path: Path) -> int:
    """Bytes the file takes on disk."""
    return os.lstat(path).st_blocks * 512


def sparse_supported(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    with open(probe, "wb") as f:
        f.truncate(8 * MiB)
        f.write(b"x")
    supported = allocated(probe) < MiB
    probe.unlink()
    return supported


@pytest.fixture
def sparse_dir(tmp_path: Path) -> Path:
    if not sparse_supported(tmp_path):
        pytest.skip("this file system does not keep holes")
    return tmp_path


# A piece: (offset, its runs of (length, fill byte)); fill 0 makes a run of zeros, so
# a piece may hold zeros inside it (a thin file's before-image) as well as be zeros.
Piece = tuple[int, list[tuple[int, int]]]
pieces_strategy = st.lists(
    st.tuples(
        st.integers(0, 300_000),
        st.lists(
            st.tuples(st.integers(1, 200_000), st.sampled_from([0, 0, 1, 7])),
            min_size=1,
            max_size=4,
        ),
    ),
    max_size=10,
)


def piece_bytes(runs: list[tuple[int, int]]) -> bytes:
    return b"".join(bytes([fill]) * length for length, fill in runs)


def model(initial: bytes, pieces: list[Piece], size: int) -> bytes:
    out = bytearray(initial)
    for offset, runs in pieces:
        data = piece_bytes(runs)
        if len(out) < offset + len(data):
            out.extend(bytes(offset + len(data) - len(out)))
        out[offset : offset + len(data)] = data
    return bytes(out[:size]) + bytes(max(0, size - len(out)))


@settings(max_examples=150, deadline=None)
@given(
    initial=st.binary(max_size=5000),
    pieces=pieces_strategy,
    extra=st.integers(-5000, 100_000),
)
def test_written_bytes_are_exact_whatever_is_left_as_holes(
    tmp_path_factory: pytest.TempPathFactory,
    initial: bytes,
    pieces: list[Piece],
    extra: int,
) -> None:
    """write_ranges, write_new and restore_bytes against a bytearray model.

    Zeros written over earlier bytes (the file's own or an earlier piece's,
    overlapping pieces included) must be written; only zeros past every byte
    held may be skipped.
    """
    root = tmp_path_factory.mktemp("sparse")
    tree = ReplicaTree(str(root), fsync=False)
    data = [(o, piece_bytes(runs)) for o, runs in pieces]
    furthest = max([len(initial)] + [o + len(b) for o, b in data])
    size = max(0, furthest + extra)
    for name in ("ranges", "restore"):
        (root / name).write_bytes(initial)
    tree.write_ranges("ranges", data, size)
    tree.restore_bytes("restore", data, size, None, None)
    tree.write_new("new", data, size, 0o600, 10**18)
    assert (root / "ranges").read_bytes() == model(initial, pieces, size)
    assert (root / "restore").read_bytes() == model(initial, pieces, size)
    assert (root / "new").read_bytes() == model(b"", pieces, size)


def test_zeros_past_the_end_stay_holes(sparse_dir: Path) -> None:
    tree = ReplicaTree(str(sparse_dir / "out"), fsync=False)
    zeros = bytes(4 * MiB)
    tree.write_new(
        "image", [(0, zeros), (4 * MiB, zeros), (9 * MiB, b"end")], 9 * MiB + 3, 0o600, 0
    )
    image = sparse_dir / "out" / "image"
    assert image.read_bytes() == bytes(9 * MiB) + b"end"
    assert allocated(image) < MiB
    # Growing it with zeros, then data further on: still no zeros on disk.
    tree.write_ranges("image", [(10 * MiB, zeros), (20 * MiB, b"tail")], 20 * MiB + 4)
    assert image.stat().st_size == 20 * MiB + 4
    assert allocated(image) < MiB
    with open(image, "rb") as f:
        f.seek(20 * MiB)
        assert f.read() == b"tail"
    # Zeros over data already there are written.
    tree.write_ranges("image", [(9 * MiB, bytes(3))], 20 * MiB + 4)
    assert image.read_bytes() == bytes(20 * MiB) + b"tail"


def test_a_block_of_data_with_zeros_after_it_takes_its_block_not_its_run(
    sparse_dir: Path,
) -> None:
    """Review 23 (E, F11): a changed 64 KiB block holding 4 bytes of data past a hole was
    written whole (the zeros were trimmed in 64 KiB runs only): 64 KiB on disk where
    the master took 4 KiB."""
    tree = ReplicaTree(str(sparse_dir / "out"), fsync=False)
    block = b"tail" + bytes(64 * 1024 - 4)
    tree.write_new("image", [(64 * MiB, block)], 128 * MiB, 0o600, 0)
    image = sparse_dir / "out" / "image"
    assert allocated(image) <= 8192
    with open(image, "rb") as f:
        f.seek(64 * MiB)
        assert f.read(len(block) + 8) == block + bytes(8)


def test_copy_new_keeps_holes(sparse_dir: Path) -> None:
    master = sparse_dir / "thin.img"
    with open(master, "wb") as f:
        f.write(b"head")
        f.seek(64 * MiB)
        f.write(b"middle")
        f.truncate(128 * MiB)  # ends in a hole
    tree = ReplicaTree(str(sparse_dir / "replica"), fsync=False)
    copied = tree.copy_new("thin.img", str(master), 0o640)
    replica = sparse_dir / "replica" / "thin.img"
    assert replica.stat().st_size == 128 * MiB
    assert allocated(replica) < 4 * MiB
    assert copied < 4 * MiB  # the bytes sent: data segments only
    with open(master, "rb") as a, open(replica, "rb") as b:
        while block := a.read(MiB):
            assert b.read(MiB) == block
    assert replica.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("block_size", [4096, 1000, 65536])
def test_the_block_map_of_a_thin_file_skips_its_holes_and_is_its_map(
    sparse_dir: Path, block_size: int
) -> None:
    """A thin replica file's map (the block-level resync's) read without its holes is
    the map of its bytes: the reader's offset survives the data segments' lseeks."""
    image = sparse_dir / "replica" / "thin.img"
    image.parent.mkdir()
    with open(image, "wb") as f:
        f.write(b"head" * 3000)
        f.seek(13 * MiB + 5)
        f.write(b"middle")
        f.seek(40 * MiB)
        f.write(b"tail" * 100)
    tree = ReplicaTree(str(sparse_dir / "replica"), fsync=False)
    data = image.read_bytes()
    assert tree.block_map("thin.img", block_size) == BlockMap.compute(data, block_size)
    with open(image, "rb") as f:
        st = os.fstat(f.fileno())
        segments = data_of(f.fileno(), st, st.st_size)
        assert segments is not None and segments[0][0] == 0
        assert f.tell() == 0
    assert BlockMap.compute(data, block_size, segments=segments) == BlockMap.compute(
        data, block_size
    )


def test_copy_new_of_a_file_with_no_holes_copies_it_all(tmp_path: Path) -> None:
    master = tmp_path / "dense"
    content = os.urandom(3 * MiB + 5)
    master.write_bytes(content)
    tree = ReplicaTree(str(tmp_path / "replica"), fsync=False)
    assert tree.copy_new("dense", str(master), 0o600) == len(content)
    assert (tmp_path / "replica" / "dense").read_bytes() == content
    (tmp_path / "empty").write_bytes(b"")
    assert tree.copy_new("empty", str(tmp_path / "empty"), 0o600) == 0
    assert (tmp_path / "replica" / "empty").read_bytes() == b""


def test_whole_file_reads_and_writes_past_two_gib(sparse_dir: Path) -> None:
    """One read or write call moves at most 2 GiB - 4 KiB on Linux: the rest must follow.

    Before the loops, ``tree.read`` of this file returned 2,147,479,552 of its
    2,147,491,840 bytes, silently (a whole-file read feeds deltas and
    rewinds). Several seconds here: the 2 GiB buffers are fresh memory.
    """
    size = 2 * 1024 * MiB + 8192
    with open(sparse_dir / "big", "wb") as f:
        f.seek(size - 4)
        f.write(b"tail")
    tree = ReplicaTree(str(sparse_dir), fsync=False)
    data = tree.read("big")
    assert len(data) == size
    assert data[-4:] == b"tail"
    tree.replace("copy", [data])  # replace writes every byte: one 2 GiB write call
    del data
    assert (sparse_dir / "copy").stat().st_size == size
    with open(sparse_dir / "copy", "rb") as f:
        f.seek(size - 4)
        assert f.read() == b"tail"


def test_copy_new_where_the_file_system_cannot_tell_holes_copies_it_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system without SEEK_DATA (mocked: every local one here has it) gets one segment."""
    real_lseek = os.lseek

    def lseek(fd: int, offset: int, how: int) -> int:
        if how in (os.SEEK_DATA, os.SEEK_HOLE):
            raise OSError(errno.EINVAL, "not supported")
        return real_lseek(fd, offset, how)

    monkeypatch.setattr(os, "lseek", lseek)
    master = tmp_path / "m"
    with open(master, "wb") as f:
        f.write(b"head")
        f.seek(3 * MiB)
        f.write(b"tail")
    tree = ReplicaTree(str(tmp_path / "replica"), fsync=False)
    assert tree.copy_new("m", str(master), 0o600) == 3 * MiB + 4
    assert (tmp_path / "replica" / "m").read_bytes() == master.read_bytes()


def test_zeros_between_the_data_of_a_new_files_piece_stay_holes(sparse_dir: Path) -> None:
    """Review 26 (P8): a whole file's before-image holds its holes as zeros, in pieces of
    4 MiB; the zeros inside a piece, between its data, were written (only those that led
    or ended it were left as holes)."""
    tree = ReplicaTree(str(sparse_dir / "out"), fsync=False)
    piece = bytearray(4 * MiB)
    piece[100:200] = b"a" * 100
    piece[MiB + 5 : MiB + 9000] = b"b" * 8995
    piece[3 * MiB : 3 * MiB + 64 * 1024] = b"c" * 64 * 1024
    tree.write_new("image", [(12345, bytes(piece))], 12345 + 4 * MiB, 0o600, 0)
    image = sparse_dir / "out" / "image"
    assert image.read_bytes() == bytes(12345) + piece
    assert allocated(image) <= 256 * 1024
