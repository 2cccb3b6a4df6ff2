"""Properties of xoengine.blocks: deltas always rebuild the new content, and stay small."""

from __future__ import annotations

import io
import itertools
import random
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from xoengine import blocks
from xoengine.blocks import BlockMap, Copy, Literal, apply_delta, changed_blocks, delta

BLOCK_SIZES = st.sampled_from([1, 3, 16, 64])

# Low-entropy content on purpose: hypothesis favours zeros and repeats, which
# share weak sums and digests across blocks.
contents = st.binary(max_size=1500)


@st.composite
def edited(draw: st.DrawFn, base: bytes) -> bytes:
    """``base`` with a few inserts, deletes and overwrites at random offsets."""
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "delete", "overwrite"]))
        if kind == "insert":
            data[at:at] = draw(st.binary(max_size=200))
        elif kind == "delete":
            del data[at : at + draw(st.integers(0, 200))]
        else:
            patch = draw(st.binary(max_size=200))
            data[at : at + len(patch)] = patch
    return bytes(data)


@st.composite
def old_and_new(draw: st.DrawFn) -> tuple[bytes, bytes]:
    old = draw(contents)
    new = draw(st.one_of(contents, edited(old)))
    return old, new


def check_ops(ops: list[blocks.Op], new_size: int) -> None:
    position = 0
    for before, after in itertools.pairwise(ops):
        assert not (isinstance(before, Literal) and isinstance(after, Literal))
        if isinstance(before, Copy) and isinstance(after, Copy):
            assert before.offset + before.length != after.offset
    for op in ops:
        assert op.length > 0
        position += op.length
    assert position == new_size


@settings(max_examples=300, deadline=None)
@given(pair=old_and_new(), block_size=BLOCK_SIZES)
def test_delta_always_rebuilds_the_new_content(pair: tuple[bytes, bytes], block_size: int) -> None:
    old, new = pair
    ops = delta(BlockMap.compute(old, block_size), new)
    assert apply_delta(old, ops, new) == new
    assert apply_delta(io.BytesIO(old), ops, new) == new
    check_ops(ops, len(new))


@st.composite
def single_edit(draw: st.DrawFn) -> tuple[bytes, bytes, int]:
    """Random (high-entropy) content and one edit of it, with the edit's size."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    old = rng.randbytes(draw(st.integers(0, 3000)))
    at = draw(st.integers(0, len(old)))
    size = draw(st.integers(0, 300))
    kind = draw(st.sampled_from(["insert", "delete", "overwrite"]))
    patch = rng.randbytes(size)
    if kind == "insert":
        new = old[:at] + patch + old[at:]
    elif kind == "delete":
        new = old[:at] + old[at + size :]
    else:
        new = old[:at] + patch + old[at + size :]
    return old, new, size


@settings(max_examples=300, deadline=None)
@given(case=single_edit())
def test_single_edit_costs_at_most_its_size_plus_two_blocks(case: tuple[bytes, bytes, int]) -> None:
    old, new, size = case
    block_size = 64
    ops = delta(BlockMap.compute(old, block_size), new)
    assert apply_delta(old, ops, new) == new
    assert blocks.literal_bytes(ops) <= size + 2 * block_size


def test_an_edit_in_the_block_before_a_short_tail_leaves_the_tail_a_copy() -> None:
    # Found by the property above (a fresh clone's seed): a 9-byte deletion at 184 of
    # 275 bytes broke blocks 2 and 3, and the short last block, moved by -9, was sent
    # as literal bytes (138 > 9 + 2 * 64): only a chain of matches led to it.
    old = random.Random(15).randbytes(275)
    new = old[:184] + old[193:]
    ops = delta(BlockMap.compute(old, 64), new)
    assert apply_delta(old, ops, new) == new
    assert blocks.literal_bytes(ops) == 247 - 128  # the broken blocks only
    assert ops[-1] == blocks.Copy(offset=256, length=19)


@settings(max_examples=150, deadline=None)
@given(data=contents, block_size=BLOCK_SIZES, buffer_size=st.integers(1, 700))
def test_blockmap_from_a_reader_equals_from_memory(
    data: bytes, block_size: int, buffer_size: int
) -> None:
    expected = BlockMap.compute(data, block_size)
    assert BlockMap.compute_file(io.BytesIO(data), block_size, buffer_size=buffer_size) == expected
    assert BlockMap.from_bytes(expected.to_bytes()) == expected
    assert BlockMap.from_dict(expected.to_dict()) == expected


@settings(max_examples=150, deadline=None)
@given(pair=old_and_new(), block_size=BLOCK_SIZES)
def test_changed_blocks_matches_a_block_by_block_comparison(
    pair: tuple[bytes, bytes], block_size: int
) -> None:
    old, new = pair
    expected = [
        i
        for i in range(-(-len(new) // block_size))
        if new[i * block_size : (i + 1) * block_size] != old[i * block_size : (i + 1) * block_size]
    ]
    old_map = BlockMap.compute(old, block_size)
    assert changed_blocks(old_map, new) == expected
    assert changed_blocks(old_map, BlockMap.compute(new, block_size)) == expected


@settings(max_examples=100, deadline=None)
@given(data=st.binary(min_size=1, max_size=600), block_size=BLOCK_SIZES)
def test_rolled_weak_sums_equal_per_block_weak_sums(data: bytes, block_size: int) -> None:
    if len(data) < block_size:
        return
    roller = blocks._Roller(BlockMap.compute(data, block_size), memoryview(data))
    count = len(data) - block_size + 1
    rolled = roller._weak_at(0, count).tolist()
    view = memoryview(data)
    assert rolled == [blocks._weak_one(view[k : k + block_size]) for k in range(count)]


@st.composite
def thin_contents(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, int]]]:
    """Content of zero runs (holes) and data runs, with data segments that hold every
    data run (as ``SEEK_DATA`` gives them: maybe wider, over zeros too)."""
    data = bytearray()
    segments: list[tuple[int, int]] = []
    for _ in range(draw(st.integers(0, 6))):
        data.extend(bytes(draw(st.integers(0, 400))))
        piece = draw(st.binary(min_size=1, max_size=200))
        start = max(0, len(data) - draw(st.integers(0, 20)))
        data.extend(piece)
        segments.append((start, len(data)))
    data.extend(bytes(draw(st.integers(0, 300))))
    merged: list[tuple[int, int]] = []
    for start, stop in segments:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(stop, merged[-1][1]))
        else:
            merged.append((start, stop))
    return bytes(data), merged


@settings(max_examples=200, deadline=None)
@given(case=thin_contents(), block_size=BLOCK_SIZES, chunk=st.sampled_from([1, 16, 64, 200]))
def test_a_map_of_a_thin_file_that_skips_its_holes_is_the_map(
    case: tuple[bytes, list[tuple[int, int]]], block_size: int, chunk: int
) -> None:
    """``BlockMap.compute(segments=)`` does not read the holes, and maps the same bytes."""
    data, segments = case
    with mock.patch.object(blocks, "READ_CHUNK", chunk):  # many chunks, many holes
        assert BlockMap.compute(data, block_size, segments=segments) == BlockMap.compute(
            data, block_size
        )
