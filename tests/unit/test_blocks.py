"""Unit tests for xoengine.blocks: block maps, aligned comparison, deltas and their application."""

from __future__ import annotations

import io
import itertools
import mmap
import random
from typing import TYPE_CHECKING, Any

import pytest

from xoengine import blocks, codec
from xoengine.blocks import (
    DEFAULT_BLOCK_SIZE,
    MAX_BLOCK_SIZE,
    BlockMap,
    Copy,
    Literal,
    apply_delta,
    apply_delta_to,
    changed_blocks,
    changed_ranges,
    copied_bytes,
    delta,
    literal_bytes,
    ops_from_plain,
    ops_to_plain,
)
from xoengine.errors import ConfigurationError, FrameError

if TYPE_CHECKING:
    from pathlib import Path

BS = 64


def rand(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def roundtrip(old: bytes, new: bytes, block_size: int = BS) -> list[blocks.Op]:
    """delta + apply, checking the result and the op-list invariants."""
    ops = delta(BlockMap.compute(old, block_size), new)
    assert apply_delta(old, ops, new) == new
    assert_well_formed(ops, len(new))
    return ops


def assert_well_formed(ops: list[blocks.Op], new_size: int) -> None:
    position = 0
    for before, after in itertools.pairwise(ops):
        assert not (isinstance(before, Literal) and isinstance(after, Literal))
        if isinstance(before, Copy) and isinstance(after, Copy):
            assert before.offset + before.length != after.offset
    for op in ops:
        assert op.length > 0
        if isinstance(op, Literal):
            assert op.offset == position
        position += op.length
    assert position == new_size


# -- block maps ---------------------------------------------------------------------


def test_blockmap_compute_records_each_block_and_the_whole() -> None:
    data = rand(5 * BS + 17)
    m = BlockMap.compute(data, BS)
    assert (m.block_size, m.size, m.block_count) == (BS, len(data), 6)
    for i in range(6):
        offset, length = m.block_range(i)
        assert (offset, length) == (i * BS, BS if i < 5 else 17)
        assert m.block_digest(i) == codec.digest64(data[offset : offset + length])
    assert m.file_digest == codec.digest128(data)
    assert m.digest_array().tolist() == [m.block_digest(i) for i in range(6)]
    assert len(m.weak_array()) == 6


def test_blockmap_of_empty_content_has_no_blocks() -> None:
    m = BlockMap.compute(b"")
    assert (m.size, m.block_count, m.digests, m.weak) == (0, 0, b"", b"")
    assert m.file_digest == codec.digest128(b"")
    assert m.block_size == DEFAULT_BLOCK_SIZE


def test_blockmap_block_range_refuses_out_of_range() -> None:
    m = BlockMap.compute(b"x" * 10, 4)
    with pytest.raises(IndexError):
        m.block_range(3)
    with pytest.raises(IndexError):
        m.block_digest(-1)


def test_blockmap_is_compact() -> None:
    m = BlockMap.compute(rand(1000 * BS), BS)
    assert len(m.to_bytes()) == 29 + 12 * 1000
    assert isinstance(m.digests, bytes)


@pytest.mark.parametrize("size", [0, 1, BS - 1, BS, BS + 1, 10 * BS, 10 * BS + 5])
@pytest.mark.parametrize("buffer_size", [1, BS, 3 * BS + 7, 1 << 20])
def test_blockmap_compute_file_equals_compute(size: int, buffer_size: int) -> None:
    data = rand(size, seed=size)
    expected = BlockMap.compute(data, BS)
    assert BlockMap.compute_file(io.BytesIO(data), BS, buffer_size=buffer_size) == expected


def test_blockmap_compute_file_takes_paths(tmp_path: Path) -> None:
    data = rand(3 * DEFAULT_BLOCK_SIZE + 5)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    expected = BlockMap.compute(data)
    assert BlockMap.compute_file(path) == expected
    assert BlockMap.compute_file(str(path)) == expected
    assert BlockMap.compute_file(bytes(path)) == expected
    with path.open("rb") as f:
        assert BlockMap.compute_file(f) == expected


def test_blockmap_compute_accepts_mmap_and_memoryview(tmp_path: Path) -> None:
    data = rand(9 * BS + 1)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    expected = BlockMap.compute(data, BS)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        assert BlockMap.compute(mm, BS) == expected
    assert BlockMap.compute(memoryview(bytearray(data)), BS) == expected


@pytest.mark.parametrize("block_size", [0, -1, MAX_BLOCK_SIZE + 1, True, 4.0, "4096"])
def test_blockmap_refuses_bad_block_sizes(block_size: Any) -> None:
    with pytest.raises(ConfigurationError):
        BlockMap.compute(b"abc", block_size)
    with pytest.raises(ConfigurationError):
        BlockMap.compute_file(io.BytesIO(b"abc"), block_size)


def test_blockmap_dict_round_trips_through_msgpack() -> None:
    m = BlockMap.compute(rand(4 * BS + 9), BS)
    assert BlockMap.from_dict(codec.unpack(codec.pack(m.to_dict()))) == m


def test_blockmap_bytes_round_trip() -> None:
    for data in (b"", rand(1), rand(4 * BS), rand(4 * BS + 9)):
        m = BlockMap.compute(data, BS)
        assert BlockMap.from_bytes(m.to_bytes()) == m


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: {k: v for k, v in d.items() if k != "weak"},
        lambda d: {**d, "v": 2},
        lambda d: {**d, "digests": d["digests"][:-1]},
        lambda d: {**d, "weak": "text"},
        lambda d: {**d, "file_digest": b"short"},
        lambda d: {**d, "size": d["size"] + BS},
        lambda d: {**d, "size": -1},
        lambda d: {**d, "block_size": 0},
        lambda d: {**d, "block_size": "64"},
        lambda d: [1, 2, 3],
        lambda d: None,
    ],
)
def test_blockmap_from_dict_refuses_damage(damage: Any) -> None:
    plain = BlockMap.compute(rand(3 * BS + 1), BS).to_dict()
    with pytest.raises(FrameError):
        BlockMap.from_dict(damage(plain))


def test_blockmap_from_bytes_refuses_damage() -> None:
    raw = BlockMap.compute(rand(3 * BS + 1), BS).to_bytes()
    for bad in (b"", raw[:-1], raw + b"x", b"\x02" + raw[1:], raw[:1] + b"\0\0\0\0" + raw[5:]):
        with pytest.raises(FrameError):
            BlockMap.from_bytes(bad)


def test_blockmap_same_content() -> None:
    a = BlockMap.compute(b"abc" * 100, 16)
    assert a.same_content(BlockMap.compute(b"abc" * 100, 32))
    assert not a.same_content(BlockMap.compute(b"abd" * 100, 16))


def test_weak_sums_roll_to_the_block_values() -> None:
    data = rand(5 * BS + 33)
    m = BlockMap.compute(data, BS)
    roller = blocks._Roller(m, memoryview(data))
    rolled = roller._weak_at(0, len(data) - BS + 1).tolist()
    view = memoryview(data)
    assert rolled == [blocks._weak_one(view[k : k + BS]) for k in range(len(data) - BS + 1)]
    assert m.weak_array().tolist()[:5] == rolled[0 : 5 * BS : BS]
    assert m.weak_array().tolist()[5] == blocks._weak_one(view[5 * BS :])


# -- aligned comparison -------------------------------------------------------------


def test_changed_blocks_of_identical_content_is_empty() -> None:
    data = rand(10 * BS + 3)
    m = BlockMap.compute(data, BS)
    assert changed_blocks(m, data) == []
    assert changed_blocks(m, BlockMap.compute(data, BS)) == []
    assert changed_ranges(m, data) == []


def test_changed_blocks_finds_in_place_overwrites() -> None:
    old = rand(10 * BS + 3)
    new = bytearray(old)
    new[3 * BS + 5] ^= 1
    new[4 * BS : 4 * BS + 2] = b"zz"
    new[9 * BS + 10] ^= 1
    m = BlockMap.compute(old, BS)
    for candidate in (bytes(new), BlockMap.compute(bytes(new), BS)):
        assert changed_blocks(m, candidate) == [3, 4, 9]
        assert changed_ranges(m, candidate) == [(3 * BS, 2 * BS), (9 * BS, BS)]


def test_changed_blocks_lists_appended_blocks_and_a_grown_tail() -> None:
    old = rand(2 * BS + 10)
    new = old + rand(BS, seed=1)
    m = BlockMap.compute(old, BS)
    assert changed_blocks(m, new) == [2, 3]
    assert changed_ranges(m, new) == [(2 * BS, len(new) - 2 * BS)]


def test_changed_blocks_after_truncation_lists_only_a_cut_block() -> None:
    old = rand(4 * BS)
    m = BlockMap.compute(old, BS)
    assert changed_blocks(m, old[: 2 * BS]) == []
    assert changed_blocks(m, old[: 2 * BS + 5]) == [2]
    assert changed_blocks(m, b"") == []


def test_changed_blocks_refuses_mixed_block_sizes() -> None:
    with pytest.raises(ConfigurationError):
        changed_blocks(BlockMap.compute(b"a" * 100, 16), BlockMap.compute(b"a" * 100, 32))


# -- delta: edge cases --------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new"),
    [(b"", b""), (b"", b"abc"), (b"abc", b""), (b"", rand(3 * BS)), (rand(3 * BS), b"")],
)
def test_delta_handles_empty_sides(old: bytes, new: bytes) -> None:
    ops = roundtrip(old, new)
    assert literal_bytes(ops) == len(new)


@pytest.mark.parametrize("size", [1, BS - 1, BS, BS + 1, 7 * BS, 7 * BS + 13])
def test_delta_of_identical_content_is_one_copy(size: int) -> None:
    data = rand(size)
    assert roundtrip(data, data) == [Copy(0, size)]


@pytest.mark.parametrize("size", [1, BS, 7 * BS + 13])
def test_delta_of_all_different_content_is_one_literal(size: int) -> None:
    assert roundtrip(rand(size, 1), rand(size, 2)) == [Literal(0, size)]


@pytest.mark.parametrize("size", [4 * BS, 4 * BS + 13])
def test_delta_of_a_truncation_copies_the_prefix(size: int) -> None:
    old = rand(size)
    assert roundtrip(old, old[: 2 * BS]) == [Copy(0, 2 * BS)]
    ops = roundtrip(old, old[: 2 * BS + 7])
    assert literal_bytes(ops) <= 7


@pytest.mark.parametrize("size", [4 * BS, 4 * BS + 13])
def test_delta_of_an_append_carries_only_the_appended_bytes(size: int) -> None:
    old = rand(size)
    tail = rand(100, seed=9)
    assert roundtrip(old, old + tail) == [Copy(0, size), Literal(size, 100)]


@pytest.mark.parametrize("size", [20 * BS, 20 * BS + 13])
@pytest.mark.parametrize("where", [0, 1, BS, 5 * BS + 7, 10 * BS, "end"])
@pytest.mark.parametrize("length", [1, 10, BS, 3 * BS + 5])
def test_delta_of_an_insertion_costs_about_the_insertion(
    size: int, where: Any, length: int
) -> None:
    old = rand(size)
    at = size if where == "end" else where
    new = old[:at] + rand(length, seed=7) + old[at:]
    ops = roundtrip(old, new)
    assert literal_bytes(ops) <= length + 2 * BS
    assert copied_bytes(ops) >= size - 2 * BS


@pytest.mark.parametrize("size", [20 * BS, 20 * BS + 13])
@pytest.mark.parametrize("where", [0, 1, BS, 5 * BS + 7, "end"])
@pytest.mark.parametrize("length", [1, 10, BS, 3 * BS + 5])
def test_delta_of_a_deletion_costs_at_most_two_blocks(size: int, where: Any, length: int) -> None:
    old = rand(size)
    at = size - length if where == "end" else where
    new = old[:at] + old[at + length :]
    ops = roundtrip(old, new)
    assert literal_bytes(ops) <= 2 * BS


@pytest.mark.parametrize("where", [0, BS - 3, 5 * BS, 19 * BS + 1])
@pytest.mark.parametrize("length", [1, BS, 2 * BS + 1])
def test_delta_of_an_overwrite_costs_the_touched_blocks(where: int, length: int) -> None:
    old = rand(20 * BS + 13)
    new = old[:where] + rand(length, seed=3) + old[where + length :]
    new = new[: len(old)]
    ops = roundtrip(old, new)
    assert literal_bytes(ops) <= length + 2 * BS


def test_delta_finds_moved_and_repeated_blocks() -> None:
    a, b, c = rand(3 * BS, 1), rand(2 * BS, 2), rand(4 * BS, 3)
    old = a + b + c
    ops = roundtrip(old, c + a + a + b)
    assert literal_bytes(ops) == 0


def test_delta_of_all_zero_content_with_an_insertion() -> None:
    # Every old block shares one weak sum and one digest.
    old = bytes(50 * BS)
    for at in (0, 7, 25 * BS + 3, len(old)):
        new = old[:at] + rand(10, seed=at) + old[at:]
        assert literal_bytes(roundtrip(old, new)) <= 10 + 2 * BS
    new = old[: 20 * BS] + old[20 * BS + 5 :]
    assert literal_bytes(roundtrip(old, new)) <= 2 * BS


def test_delta_survives_weak_collisions_that_fail_the_strong_check() -> None:
    # [1,0,0,1] and [0,1,1,0] share a (2) and b (4+1 = 3+2): every 8th offset of
    # the new content is a weak hit on every old block, and none is a strong one.
    old = bytes([1, 0, 0, 1]) * 300
    new = bytes([0, 1, 1, 0, 5, 5, 5, 5]) * 150
    assert blocks._weak_one(memoryview(old[:4])) == blocks._weak_one(memoryview(new[:4]))
    assert roundtrip(old, new, block_size=4) == [Literal(0, len(new))]


def test_delta_with_periodic_low_entropy_data() -> None:
    old = b"abcabcabcab" * 500
    new = b"x" + old[:2000] + b"yy" + old[2000:] + b"z"
    assert literal_bytes(roundtrip(old, new, block_size=16)) <= 4 + 4 * 16


@pytest.mark.parametrize("block_size", [1, 2, 3, 5, 64, 100])
def test_delta_with_odd_block_sizes(block_size: int) -> None:
    old = rand(37 * block_size + 11)
    new = old[:50] + b"inserted" + old[50:300] + old[320:] + b"tail"
    roundtrip(old, new, block_size=block_size)


def test_delta_accepts_old_bytes_and_new_map() -> None:
    old = rand(30 * BS + 1)
    new = old[:100] + b"x" * 5 + old[100:]
    ops = delta(old, new, block_size=BS)
    assert ops == delta(BlockMap.compute(old, BS), new)
    assert ops == delta(old, new, block_size=BS, new_map=BlockMap.compute(new, BS))
    overwrite = old[:BS] + b"y" * BS + old[2 * BS :]
    assert delta(old, overwrite, block_size=BS, new_map=BlockMap.compute(overwrite, BS)) == [
        Copy(0, BS),
        Literal(BS, BS),
        Copy(2 * BS, len(old) - 2 * BS),
    ]


def test_delta_refuses_a_mismatched_new_map() -> None:
    old, new = rand(10 * BS), rand(10 * BS, 1)
    with pytest.raises(ConfigurationError):
        delta(BlockMap.compute(old, BS), new, new_map=BlockMap.compute(new, 2 * BS))
    with pytest.raises(ConfigurationError):
        delta(BlockMap.compute(old, BS), new, new_map=BlockMap.compute(new[:-1], BS))


def test_delta_of_a_shifted_megabyte_file_ships_the_insertion_only() -> None:
    old = rand(4 << 20)
    new = rand(100, seed=5) + old
    ops = delta(BlockMap.compute(old), new)
    assert literal_bytes(ops) == 100
    assert ops == [Literal(0, 100), Copy(0, len(old))]


def test_delta_reads_new_content_from_mmap(tmp_path: Path) -> None:
    old = rand(40 * BS)
    new = old[:333] + b"ins" + old[333:]
    path = tmp_path / "new.bin"
    path.write_bytes(new)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        ops = delta(BlockMap.compute(old, BS), mm)
    assert apply_delta(old, ops, new) == new


# -- applying -----------------------------------------------------------------------


def test_apply_delta_reads_a_file_base_and_literal_callback(tmp_path: Path) -> None:
    old = rand(3 << 20)  # more than one copy chunk
    new = old[:1000] + b"new bytes" + old[1000:] + b"end"
    ops = delta(BlockMap.compute(old), new)
    blobs = {
        op.offset: new[op.offset : op.offset + op.length] for op in ops if isinstance(op, Literal)
    }
    calls: list[tuple[int, int]] = []

    def fetch(offset: int, length: int) -> bytes:
        calls.append((offset, length))
        return blobs[offset]

    base = tmp_path / "old.bin"
    base.write_bytes(old)
    with base.open("rb") as f:
        assert apply_delta(f, ops, fetch) == new
    assert calls == [(op.offset, op.length) for op in ops if isinstance(op, Literal)]
    assert apply_delta(io.BytesIO(old), ops, new) == new


def test_apply_delta_to_streams_into_a_file(tmp_path: Path) -> None:
    old = rand(50 * BS)
    new = old[10 * BS :] + old[: 10 * BS] + b"!"
    ops = delta(BlockMap.compute(old, BS), new)
    target = tmp_path / "new.bin"
    with target.open("wb") as out:
        assert apply_delta_to(old, ops, new, out) == len(new)
    assert target.read_bytes() == new


def test_apply_delta_refuses_ops_that_do_not_fit() -> None:
    old = b"0123456789"
    cases: list[tuple[list[blocks.Op], Any]] = [
        ([Copy(5, 6)], b""),
        ([Literal(0, 4)], b"abc"),
        ([Literal(0, 4)], lambda offset, length: b"abc"),
        ([Copy(-1, 2)], b""),
    ]
    for ops, literals in cases:
        with pytest.raises(FrameError):
            apply_delta(old, ops, literals)
        with pytest.raises(FrameError):
            apply_delta(io.BytesIO(old), ops, literals)


def test_ops_round_trip_through_msgpack() -> None:
    ops: list[blocks.Op] = [Literal(0, 3), Copy(100, 4096), Literal(4099, 1)]
    plain = ops_to_plain(ops)
    assert plain == [[1, 0, 3], [0, 100, 4096], [1, 4099, 1]]
    assert ops_from_plain(codec.unpack(codec.pack(plain))) == ops


@pytest.mark.parametrize(
    "plain", [None, "x", [[2, 0, 1]], [[0, 1]], [[0, -1, 2]], [[0, 1, "2"]], [[0, 1, True]], [5]]
)
def test_ops_from_plain_refuses_malformed_ops(plain: Any) -> None:
    with pytest.raises(FrameError):
        ops_from_plain(plain)


class ShortWriter:
    """Takes at most 1000 bytes per write, like an unbuffered file may."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: memoryview | bytes) -> int:
        taken = bytes(data[:1000])
        self.data += taken
        return len(taken)


def test_apply_delta_to_retries_short_writes() -> None:
    old = rand(20 * BS)
    new = b"head" + old + rand(3000, seed=4)
    ops = delta(BlockMap.compute(old, BS), new)
    out = ShortWriter()
    assert apply_delta_to(old, ops, new, out) == len(new)
    assert bytes(out.data) == new
