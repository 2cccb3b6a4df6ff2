"""Block maps and deltas: the one change-detection and delta engine of xoengine.

Room: algorithms (ARCHITECTURE.md "Rooms"). May import ``xoengine.errors``,
``xoengine.codec`` (every hash goes through it: it is the only user of xxhash),
numpy and the standard library. Never eventsourcing, lmdb or msgpack.

Terminology
-----------
*Block map* (:class:`BlockMap`): a file's content cut into fixed blocks of
``block_size`` bytes (the last block may be shorter), with, per block, an
xxh3-64 *strong digest* and a 32-bit rolling *weak sum*, plus the total size
and the xxh3-128 of the whole content. It is what the master state keeps per
file, and all that :func:`delta` needs of the old content.

*Delta*: a list of ops, :class:`Copy` (bytes of the old content, by old
offset) and :class:`Literal` (bytes of the new content, by new offset, so the
caller can store them as blobs), such that writing the ops in order
reproduces the new content exactly (:func:`apply_delta`). Adjacent copies of
contiguous old bytes and adjacent literals are coalesced.

How a delta is found (FACTS.md, "Delta and chunking building blocks")
---------------------------------------------------------------------
1. *Aligned pass*: block ``i`` of the new content is compared with block ``i``
   of the old map by strong digest. An in-place overwrite needs nothing more:
   the changed blocks become literals, everything else one coalesced copy.
2. *Regions*: each maximal run of new bytes not covered by an aligned match is
   scanned rsync-style. At the scan position the block the previous match
   predicts (the old block after it) is tried first by strong digest; only
   when that fails is the weak sum rolled over the following offsets, with
   numpy in bounded windows (uint32 wrap-around arithmetic, windows that grow
   from a few blocks to 1 Mi offsets), and the few offsets whose weak sum is
   an old block's are verified by strong digest. So an insertion costs bytes
   proportional to the insertion, and a shifted file is mostly walked block by
   block at hashing speed rather than rolled byte by byte.

The weak sum of bytes ``x[0..n)`` is ``b ^ (a * 0x9E3779B1) mod 2**32`` with
``a = sum(x[i])`` and ``b = sum((n - i) * x[i])`` (both mod 2**32): rsync's
checksum with a multiplicative mix, since ``a`` alone spans few values.

Trust: strong digests are xxh3-64, not collision-resistant against crafted
content (FACTS.md, "Hashing"). A receiver verifies the result against the new
map's :attr:`BlockMap.file_digest` (xxh3-128) when that matters.
"""

from __future__ import annotations

import io
import mmap
import os
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from xoengine import codec
from xoengine.errors import ConfigurationError, FrameError

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "MAX_BLOCK_SIZE",
    "READ_CHUNK",
    "BlockMap",
    "Buffer",
    "Copy",
    "Holes",
    "Literal",
    "LiteralSource",
    "Op",
    "apply_delta",
    "apply_delta_to",
    "block_digests",
    "changed_blocks",
    "changed_ranges",
    "coalesce_ranges",
    "copied_bytes",
    "delta",
    "literal_bytes",
    "ops_from_plain",
    "ops_to_plain",
]

DEFAULT_BLOCK_SIZE: Final = 4096
"""Block size of a map unless one is given (bytes)."""

MAX_BLOCK_SIZE: Final = 4 * 1024 * 1024
"""Largest block size accepted: weak sums are computed exactly in float64 up to ~8 MiB."""

Buffer = bytes | bytearray | memoryview | mmap.mmap
"""Contiguous byte content held in memory (or mapped)."""

LiteralSource = Buffer | Callable[[int, int], Buffer]
"""Where :func:`apply_delta` takes literal bytes: the new content itself, or a
function ``(new_offset, length) -> bytes`` (for example a blob-table lookup)."""

_MAP_FORMAT: Final = 1
_MAP_HEADER: Final = 1 + 4 + 8 + 16  # format, block_size, size, file digest
_MIX: Final = 0x9E3779B1
_MASK32: Final = 0xFFFFFFFF
READ_CHUNK: Final = 4 * 1024 * 1024
_WEAK_BATCH_BYTES: Final = 256 * 1024  # float64 scratch stays in cache
_ROLL_MAX_WINDOW: Final = 1024 * 1024  # offsets per numpy window: ~20 MB of uint32 scratch
_COPY_CHUNK: Final = 1024 * 1024

_U8 = npt.NDArray[np.uint8]
_U32 = npt.NDArray[np.uint32]
_U64 = npt.NDArray[np.uint64]


class _Reader(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


class _SeekableReader(_Reader, Protocol):
    def seek(self, offset: int, whence: int = ..., /) -> int: ...


class _Writer(Protocol):
    def write(self, data: memoryview | bytes, /) -> int | None: ...


# -- ops --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Copy:
    """Write ``length`` bytes of the old content starting at old ``offset``."""

    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Literal:
    """Write ``length`` bytes of the new content starting at new ``offset``."""

    offset: int
    length: int


Op = Copy | Literal
"""One delta instruction; a delta is a list of them, applied in order."""

_COPY_KIND: Final = 0
_LITERAL_KIND: Final = 1


def literal_bytes(ops: Iterable[Op]) -> int:
    """Total bytes the delta carries as literals (what must be shipped or stored)."""
    return sum(op.length for op in ops if isinstance(op, Literal))


def copied_bytes(ops: Iterable[Op]) -> int:
    """Total bytes the delta takes from the old content."""
    return sum(op.length for op in ops if isinstance(op, Copy))


def ops_to_plain(ops: Iterable[Op]) -> list[list[int]]:
    """Ops as ``[[kind, offset, length], ...]`` (kind 0 = copy, 1 = literal) for msgpack."""
    return [
        [_COPY_KIND if isinstance(op, Copy) else _LITERAL_KIND, op.offset, op.length] for op in ops
    ]


def ops_from_plain(plain: Any) -> list[Op]:
    """Inverse of :func:`ops_to_plain`; anything malformed is a :class:`FrameError`."""
    if not isinstance(plain, list | tuple):
        raise FrameError(position="delta", detail="ops are not a list")
    ops: list[Op] = []
    for item in plain:
        if (
            not isinstance(item, list | tuple)
            or len(item) != 3
            or not all(type(v) is int and v >= 0 for v in item)
            or item[0] not in (_COPY_KIND, _LITERAL_KIND)
        ):
            raise FrameError(position="delta", detail=f"malformed op {item!r}")
        kind, offset, length = item
        ops.append(Copy(offset, length) if kind == _COPY_KIND else Literal(offset, length))
    return ops


class _OpList:
    """Collects ops, coalescing contiguous copies and adjacent literals."""

    __slots__ = ("_kind", "_length", "_offset", "ops")

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self._kind = -1
        self._offset = 0
        self._length = 0

    def add(self, kind: int, offset: int, length: int) -> None:
        if length <= 0:
            return
        if kind == self._kind and self._offset + self._length == offset:
            self._length += length
            return
        self._flush()
        self._kind, self._offset, self._length = kind, offset, length

    def _flush(self) -> None:
        if self._kind == _COPY_KIND:
            self.ops.append(Copy(self._offset, self._length))
        elif self._kind == _LITERAL_KIND:
            self.ops.append(Literal(self._offset, self._length))
        self._kind = -1

    def finish(self) -> list[Op]:
        self._flush()
        return self.ops


# -- hashing helpers --------------------------------------------------------------


def _check_block_size(block_size: int) -> int:
    if type(block_size) is not int or not 1 <= block_size <= MAX_BLOCK_SIZE:
        raise ConfigurationError(
            detail=f"block size must be an integer from 1 to {MAX_BLOCK_SIZE}, not {block_size!r}"
        )
    return block_size


def _byte_view(data: Buffer) -> memoryview:
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _u8(view: memoryview) -> _U8:
    return np.frombuffer(view, dtype=np.uint8)


def _digests(view: memoryview, block_size: int) -> list[int]:
    """xxh3-64 of every block of ``view`` (the last one may be short)."""
    return codec.block_digests64(view, block_size)


def block_digests(data: Buffer, block_size: int = DEFAULT_BLOCK_SIZE) -> _U64:
    """xxh3-64 of every block of ``data``: change detection without the weak sums."""
    return np.array(_digests(_byte_view(data), _check_block_size(block_size)), dtype=np.uint64)


def _mix(a: _U32, b: _U32) -> _U32:
    out: _U32 = np.bitwise_xor(b, np.multiply(a, np.uint32(_MIX)))
    return out


def _weak_one(view: memoryview) -> int:
    """Weak sum of one block of any length (used for short last blocks)."""
    x = _u8(view).astype(np.uint64)
    n = len(x)
    a = int(x.sum())
    b = int((np.arange(n, 0, -1, dtype=np.uint64) * x).sum())
    return (b & _MASK32) ^ ((a * _MIX) & _MASK32)


@lru_cache(maxsize=8)
def _weak_weights(block_size: int) -> npt.NDArray[np.float64]:
    """Columns (n - i, 1): one matrix product yields b and a for a batch of blocks."""
    w = np.empty((block_size, 2), dtype=np.float64)
    w[:, 0] = np.arange(block_size, 0, -1, dtype=np.float64)
    w[:, 1] = 1.0
    w.flags.writeable = False  # shared through the cache
    return w


def _weak_full(view: memoryview, block_size: int, scratch: npt.NDArray[np.float64]) -> _U32:
    """Weak sums of the full blocks filling ``view`` (its length is a multiple of the size).

    float64 BLAS products are exact here (sums stay below 2**53 for blocks up to
    MAX_BLOCK_SIZE) and run at ~2 GB/s, where integer products or prefix sums
    over the whole content would not.
    """
    x = _u8(view)
    count = len(x) // block_size
    out: _U32 = np.empty(count, dtype=np.uint32)
    weights = _weak_weights(block_size)
    batch = scratch.shape[0]
    for first in range(0, count, batch):
        n = min(batch, count - first)
        rows = scratch[:n]
        np.copyto(rows, x[first * block_size : (first + n) * block_size].reshape(n, block_size))
        sums = (rows @ weights).astype(np.uint64).astype(np.uint32)
        out[first : first + n] = _mix(sums[:, 1], sums[:, 0])
    return out


class _MapBuilder:
    """Accumulates block digests and weak sums over successive chunks.

    Each chunk's digests are kept as one numpy array (8 + 4 bytes a block):
    a map of a 1 TiB thin image is 3 GiB while built, not a Python int per block.
    """

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.size = 0
        self.digests: list[_U64] = []
        self.weak: list[_U32] = []
        self._tail_seen = False
        self._zeros: dict[int, tuple[list[_U64], list[_U32]]] = {}
        batch = max(1, _WEAK_BATCH_BYTES // block_size)
        self._scratch: npt.NDArray[np.float64] = np.empty((batch, block_size), dtype=np.float64)

    def add(self, view: memoryview) -> None:
        """Add the next chunk; every chunk but the last is a multiple of the block size."""
        assert not self._tail_seen, "a short chunk must be the last"
        full = len(view) - len(view) % self.block_size
        self.digests.append(np.array(_digests(view, self.block_size), dtype=np.uint64))
        self.weak.append(_weak_full(view[:full], self.block_size, self._scratch))
        if full < len(view):
            self._tail_seen = True
            self.weak.append(np.array([_weak_one(view[full:])], dtype=np.uint32))
        self.size += len(view)

    def add_zeros(self, length: int) -> None:
        """Add a chunk of ``length`` zeros (as :meth:`add` would), computed once per length."""
        cached = self._zeros.get(length)
        if cached is None:
            digests, weak = len(self.digests), len(self.weak)
            self.add(memoryview(bytes(length)))
            cached = self._zeros[length] = (self.digests[digests:], self.weak[weak:])
            return
        assert not self._tail_seen, "a short chunk must be the last"
        self.digests.extend(cached[0])  # the same arrays again: concatenated at the end
        self.weak.extend(cached[1])
        self._tail_seen = length % self.block_size != 0
        self.size += length

    def finish(self, file_digest: bytes) -> BlockMap:
        return BlockMap(
            block_size=self.block_size,
            size=self.size,
            digests=_joined(self.digests, np.uint64).astype("<u8").tobytes(),
            weak=_joined(self.weak, np.uint32).astype("<u4").tobytes(),
            file_digest=file_digest,
        )


def _joined(parts: list[Any], dtype: type[np.generic]) -> Any:
    """The arrays of ``parts`` end to end (an empty array of ``dtype`` for none)."""
    return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)


def _write_all(out: _Writer, data: memoryview) -> None:
    """Write all of ``data`` (unbuffered files may take less than offered)."""
    while data:
        n = out.write(data)
        data = data[len(data) if n is None else n :]


def _fill(reader: _Reader, view: memoryview) -> int:
    """Read until ``view`` is full or the reader is at its end; return the bytes read."""
    got = 0
    while got < len(view):
        n = reader.readinto(view[got:])
        if not n:
            break
        got += n
    return got


# -- holes ------------------------------------------------------------------------


class Holes:
    """Where a sparse file's data segments leave holes: zeros that need no reading.

    ``segments``: ``(start, stop)`` of its data, in order (``tree.data_segments``,
    which may give more than the data, never less); ``size``: its size when
    they were asked. A reader going through the file asks :meth:`covers` of
    each chunk, or :meth:`extent` where it is, at offsets that never go back.
    """

    def __init__(self, segments: Sequence[tuple[int, int]], size: int, chunk: int) -> None:
        """Holes of a file of ``size`` bytes read in chunks of at most ``chunk`` bytes."""
        self.segments = segments
        self.size = size
        self._index = 0
        self._zeros = memoryview(bytes(chunk))

    def _next(self, offset: int) -> tuple[int, int] | None:
        """The first segment that ends past ``offset`` (None: only a hole is left)."""
        segments = self.segments
        while self._index < len(segments) and segments[self._index][1] <= offset:
            self._index += 1
        return segments[self._index] if self._index < len(segments) else None

    def extent(self, offset: int) -> tuple[bool, int]:
        """Whether ``offset`` lies in a hole, and where that hole (or data) ends."""
        segment = self._next(offset)
        if segment is None:
            return True, max(offset, self.size)
        start, stop = segment
        return (True, start) if offset < start else (False, stop)

    def covers(self, offset: int, length: int) -> memoryview | None:
        """``length`` zeros if ``[offset, offset + length)`` lies wholly in a hole, else None."""
        if length <= 0 or offset + length > self.size or length > len(self._zeros):
            return None
        segment = self._next(offset)
        if segment is not None and segment[0] < offset + length:
            return None
        return self._zeros[:length]


# -- block maps -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BlockMap:
    """Per-block digests of a file's content: what changed, and what a delta may copy.

    Fields are compact bytes (little-endian), so a map costs 12 bytes per block
    plus 29 (3 MiB for a 1 GiB file at the default block size) and packs as
    msgpack ``bin`` through :meth:`to_dict` or :meth:`to_bytes`.

    Attributes:
        block_size: bytes per block; the last block holds the remainder.
        size: total content size in bytes.
        digests: xxh3-64 of each block, 8 bytes each (``<u8``).
        weak: rolling weak sum of each block, 4 bytes each (``<u4``); see the
            module docstring for its definition.
        file_digest: xxh3-128 of the whole content (16 bytes).

    """

    block_size: int
    size: int
    digests: bytes
    weak: bytes
    file_digest: bytes

    def __post_init__(self) -> None:
        """Check the fields agree with each other (a damaged map is refused)."""
        sane = (
            type(self.block_size) is int
            and 1 <= self.block_size <= MAX_BLOCK_SIZE
            and type(self.size) is int
            and self.size >= 0
        )
        count = -(-self.size // self.block_size) if sane else -1
        if (
            count < 0
            or len(self.digests) != 8 * count
            or len(self.weak) != 4 * count
            or len(self.file_digest) != 16
        ):
            raise FrameError(
                position="block map",
                detail=(
                    f"inconsistent fields (block_size={self.block_size!r}, size={self.size!r}, "
                    f"{len(self.digests)} digest bytes, {len(self.weak)} weak bytes, "
                    f"{len(self.file_digest)}-byte file digest)"
                ),
            )

    # -- building

    @classmethod
    def compute(
        cls,
        data: Buffer,
        block_size: int = DEFAULT_BLOCK_SIZE,
        *,
        segments: Sequence[tuple[int, int]] | None = None,
    ) -> BlockMap:
        """Map of ``data`` (held in memory or mapped); nothing is copied.

        ``segments``: ``(start, stop)`` of the data of a sparse file, in order
        (``tree.data_segments``). Chunks of ``data`` outside all of them are
        holes, zeros that are not read: a mapped thin image is not paged in.
        """
        builder = _MapBuilder(_check_block_size(block_size))
        view = _byte_view(data)
        step = max(block_size, READ_CHUNK - READ_CHUNK % block_size)
        if segments is None:
            for start in range(0, len(view), step):
                builder.add(view[start : start + step])
            return builder.finish(codec.digest128(view))
        hasher = codec.hasher128()
        holes = Holes(segments, len(view), step)
        for start in range(0, len(view), step):
            chunk = view[start : start + step]
            zeros = holes.covers(start, len(chunk))
            if zeros is None:
                builder.add(chunk)
            else:
                builder.add_zeros(len(chunk))
            hasher.update(chunk if zeros is None else zeros)
        return builder.finish(bytes(hasher.digest()))

    @classmethod
    def compute_file(
        cls,
        source: str | os.PathLike[str] | os.PathLike[bytes] | bytes | _Reader,
        block_size: int = DEFAULT_BLOCK_SIZE,
        *,
        buffer_size: int = READ_CHUNK,
        holes: Holes | None = None,
    ) -> BlockMap:
        """Map of a file, given by path or as a binary reader positioned at its start.

        The file is read sequentially into one reused buffer of about
        ``buffer_size`` bytes (rounded to whole blocks). A reader is left at its
        end and not closed. ``OSError`` from opening or reading propagates: the
        caller (tree walker, capture) owns translating it. ``holes``: the
        file's :class:`Holes` (made for chunks of ``buffer_size``), which a
        reader that can seek passes over unread.
        """
        _check_block_size(block_size)
        if isinstance(source, str | bytes | os.PathLike):
            with open(source, "rb", buffering=0) as f:
                return cls.compute_file(f, block_size, buffer_size=buffer_size, holes=holes)
        buffer = memoryview(bytearray(max(block_size, buffer_size - buffer_size % block_size)))
        builder = _MapBuilder(block_size)
        hasher = codec.hasher128()
        offset = 0
        while True:
            zeros = None if holes is None else holes.covers(offset, len(buffer))
            if zeros is not None:
                typing.cast("_SeekableReader", source).seek(offset + len(zeros))
                builder.add_zeros(len(zeros))
                hasher.update(zeros)
                offset += len(zeros)
                continue
            got = _fill(source, buffer)
            if not got:
                break
            chunk = buffer[:got]
            builder.add(chunk)
            hasher.update(chunk)
            offset += got
            if got < len(buffer):
                break
        return builder.finish(bytes(hasher.digest()))

    # -- reading

    @property
    def block_count(self) -> int:
        """Number of blocks (the last may be short); 0 for empty content."""
        return len(self.digests) // 8

    def block_range(self, index: int) -> tuple[int, int]:
        """``(offset, length)`` of block ``index`` in the content."""
        if not 0 <= index < self.block_count:
            msg = f"block {index} out of range 0..{self.block_count - 1}"
            raise IndexError(msg)
        offset = index * self.block_size
        return offset, min(self.block_size, self.size - offset)

    def block_digest(self, index: int) -> int:
        """xxh3-64 of block ``index``."""
        self.block_range(index)
        return int.from_bytes(self.digests[8 * index : 8 * index + 8], "little")

    def digest_array(self) -> _U64:
        """The block digests as a read-only numpy ``uint64`` array (no copy)."""
        return np.frombuffer(self.digests, dtype="<u8").astype(np.uint64, copy=False)

    def weak_array(self) -> _U32:
        """The weak sums as a read-only numpy ``uint32`` array (no copy)."""
        return np.frombuffer(self.weak, dtype="<u4").astype(np.uint32, copy=False)

    def same_content(self, other: BlockMap) -> bool:
        """True if both maps describe the same bytes (size and xxh3-128 agree)."""
        return self.size == other.size and self.file_digest == other.file_digest

    # -- serialising

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (ints and bytes) for :func:`xoengine.codec.pack`."""
        return {
            "v": _MAP_FORMAT,
            "block_size": self.block_size,
            "size": self.size,
            "file_digest": self.file_digest,
            "digests": self.digests,
            "weak": self.weak,
        }

    @classmethod
    def from_dict(cls, plain: Any) -> BlockMap:
        """Inverse of :meth:`to_dict`; anything malformed is a :class:`FrameError`."""
        try:
            version = plain["v"]
            fields = {k: plain[k] for k in ("block_size", "size", "file_digest", "digests", "weak")}
        except (KeyError, TypeError, IndexError) as e:
            raise FrameError(position="block map", detail=f"missing field {e}") from e
        if version != _MAP_FORMAT:
            raise FrameError(position="block map", detail=f"unknown format {version!r}")
        for k in ("file_digest", "digests", "weak"):
            if not isinstance(fields[k], bytes | bytearray | memoryview):
                raise FrameError(position="block map", detail=f"{k} is not bytes")
            fields[k] = bytes(fields[k])
        return cls(**fields)

    def to_bytes(self) -> bytes:
        """Compact binary form: header, file digest, block digests, weak sums."""
        header = (
            _MAP_FORMAT.to_bytes(1, "little")
            + self.block_size.to_bytes(4, "little")
            + self.size.to_bytes(8, "little")
        )
        return header + self.file_digest + self.digests + self.weak

    @classmethod
    def from_bytes(cls, data: Buffer) -> BlockMap:
        """Inverse of :meth:`to_bytes`; anything malformed is a :class:`FrameError`."""
        raw = bytes(data)
        if len(raw) < _MAP_HEADER or raw[0] != _MAP_FORMAT:
            raise FrameError(position="block map", detail="bad header")
        block_size = int.from_bytes(raw[1:5], "little")
        size = int.from_bytes(raw[5:13], "little")
        if block_size < 1:
            raise FrameError(position="block map", detail="zero block size")
        count = -(-size // block_size)
        if len(raw) != _MAP_HEADER + 12 * count:
            raise FrameError(position="block map", detail=f"{len(raw)} bytes for {count} blocks")
        digests_end = _MAP_HEADER + 8 * count
        return cls(
            block_size=block_size,
            size=size,
            file_digest=raw[13:_MAP_HEADER],
            digests=raw[_MAP_HEADER:digests_end],
            weak=raw[digests_end:],
        )


def _as_map(content: BlockMap | Buffer, block_size: int) -> BlockMap:
    return content if isinstance(content, BlockMap) else BlockMap.compute(content, block_size)


# -- aligned comparison -----------------------------------------------------------


def _compared_size(old: BlockMap | Buffer, new: BlockMap | Buffer, block_size: int | None) -> int:
    """The block size two contents are compared at: a map's, else ``block_size``."""
    sizes = {c.block_size for c in (old, new) if isinstance(c, BlockMap)}
    if block_size is not None:
        sizes.add(block_size)
    if len(sizes) != 1:
        detail = f"block sizes differ ({sorted(sizes)})" if sizes else "no block size given"
        raise ConfigurationError(detail=detail)
    return sizes.pop()


def _strong(content: BlockMap | Buffer, block_size: int) -> tuple[_U64, int]:
    """The block digests and size of a map, or of bytes (their strong digests alone)."""
    if isinstance(content, BlockMap):
        return content.digest_array(), content.size
    view = _byte_view(content)
    return np.array(_digests(view, block_size), dtype=np.uint64), len(view)


def changed_blocks(
    old: BlockMap | Buffer, new: BlockMap | Buffer, block_size: int | None = None
) -> list[int]:
    """Indices of the new content's blocks that differ from the same-numbered old block.

    Aligned comparison only: right for in-place overwrites and appends. A block
    that exists only in the new content counts as changed; blocks cut off by a
    truncation are not listed (compare the sizes for that). Either side may be
    bytes, digested here (strong digests only); ``block_size`` is needed where
    neither is a map.
    """
    bs = _compared_size(old, new, block_size)
    old_digests, old_size = _strong(old, bs)
    new_digests, new_size = _strong(new, bs)
    common = min(len(old_digests), len(new_digests))
    differs = new_digests[:common] != old_digests[:common]
    changed = np.flatnonzero(differs).tolist()
    last = common - 1
    # Only the last common block can differ in length; equal digests of unequal
    # lengths are not trusted.
    if last >= 0 and not differs[last]:
        offset = last * bs
        if min(bs, old_size - offset) != min(bs, new_size - offset):
            changed.append(last)
    changed.extend(range(common, len(new_digests)))
    return [int(i) for i in changed]


def changed_ranges(
    old: BlockMap | Buffer, new: BlockMap | Buffer, block_size: int | None = None
) -> list[tuple[int, int]]:
    """:func:`changed_blocks` as coalesced ``(offset, length)`` byte ranges of the new content."""
    size = new.size if isinstance(new, BlockMap) else len(_byte_view(new))
    bs = _compared_size(old, new, block_size)
    ranges: list[tuple[int, int]] = []
    for index in changed_blocks(old, new, bs):
        start, end = index * bs, min(size, (index + 1) * bs)
        if ranges and ranges[-1][0] + ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], end - ranges[-1][0])
        else:
            ranges.append((start, end - start))
    return ranges


def coalesce_ranges(ranges: Iterable[Sequence[int]]) -> list[tuple[int, int]]:
    """``(offset, length)`` ranges sorted, with those that overlap or touch made one."""
    out: list[tuple[int, int]] = []
    for start, length in sorted((int(r[0]), int(r[1])) for r in ranges):
        if out and start <= out[-1][0] + out[-1][1]:
            prev_start, prev_len = out[-1]
            out[-1] = (prev_start, max(prev_start + prev_len, start + length) - prev_start)
        else:
            out.append((start, length))
    return out


# -- delta ------------------------------------------------------------------------


class _Roller:
    """Rolls the weak sum over windows of the new content and finds old blocks in it."""

    def __init__(self, old: BlockMap, new: memoryview) -> None:
        self.block_size = bs = old.block_size
        self.new = new
        self.x = _u8(new)
        full = old.size // bs
        weak = old.weak_array()[:full]
        self.keys: _U32 = np.unique(weak)
        # A presence table on the top bits of the weak sum screens offsets at
        # gather speed (false hits <= 1/64); searchsorted, ~65 ns per random
        # query, then only runs on what passes.
        bits = min(24, max(16, len(self.keys).bit_length() + 6))
        self._shift = np.uint32(32 - bits)
        self._present: npt.NDArray[np.bool_] = np.zeros(1 << bits, dtype=np.bool_)
        self._present[self.keys >> self._shift] = True
        digests = old.digest_array()[:full].tolist()
        # First block wins for repeated content; the chain check prefers the
        # predicted block before this table is consulted.
        self.strong: dict[int, int] = {}
        for index, digest in enumerate(digests):
            self.strong.setdefault(digest, index)
        self.min_window = max(8 * bs, 4096)
        self._capacity = 0
        self._grow(self.min_window)

    def _grow(self, window: int) -> None:
        if window <= self._capacity:
            return
        span = window + self.block_size
        self._capacity = window
        self._idx: _U32 = np.arange(span, dtype=np.uint32)
        self._v: _U32 = np.empty(span, dtype=np.uint32)
        self._s: _U32 = np.empty(span, dtype=np.uint32)
        self._t: _U32 = np.empty(span, dtype=np.uint32)
        self._a: _U32 = np.empty(window, dtype=np.uint32)
        self._b: _U32 = np.empty(window, dtype=np.uint32)

    def _weak_at(self, start: int, count: int) -> _U32:
        """Weak sums of the blocks starting at ``start .. start + count - 1``."""
        bs = self.block_size
        span = count + bs - 1
        v, s, t, idx = self._v, self._s, self._t, self._idx
        a, b = self._a[:count], self._b[:count]
        np.copyto(v[:span], self.x[start : start + span], casting="unsafe")
        # Prefix sums S of x and T of i*x (relative i), wrapping mod 2**32:
        # a_k = S[k+n] - S[k];  b_k = (k+n) * a_k - (T[k+n] - T[k]).
        s[0] = 0
        np.cumsum(v[:span], dtype=np.uint32, out=s[1 : span + 1])
        np.multiply(v[:span], idx[:span], out=v[:span])
        t[0] = 0
        np.cumsum(v[:span], dtype=np.uint32, out=t[1 : span + 1])
        np.subtract(s[bs : bs + count], s[:count], out=a)
        np.subtract(t[bs : bs + count], t[:count], out=b)
        np.multiply(idx[bs : bs + count], a, out=v[:count])
        np.subtract(v[:count], b, out=b)
        return _mix(a, b)

    def find(self, start: int, end: int) -> tuple[int, int] | None:
        """First ``(offset, old block)`` with a full old block at ``offset`` in ``[start, end)``."""
        bs = self.block_size
        last = end - bs
        if last < start or len(self.keys) == 0:
            return None
        digest64, new, strong = codec.digest64, self.new, self.strong
        window = self.min_window
        while start <= last:
            count = min(window, last - start + 1)
            self._grow(count)
            weak = self._weak_at(start, count)
            near = np.flatnonzero(self._present[weak >> self._shift])
            slot = np.searchsorted(self.keys, weak[near])
            np.minimum(slot, len(self.keys) - 1, out=slot)
            for k in near[self.keys[slot] == weak[near]].tolist():
                offset = start + k
                index = strong.get(digest64(new[offset : offset + bs]))
                if index is not None:
                    return offset, index
            start += count
            window = min(2 * window, _ROLL_MAX_WINDOW)
        return None


class _Delta:
    """One delta computation: aligned pass, then an rsync-style scan of each region."""

    def __init__(self, old: BlockMap, new: memoryview) -> None:
        self.old = old
        self.new = new
        self.bs = old.block_size
        self.out = _OpList()
        self._roller: _Roller | None = None
        self._old_digests: list[int] | None = None

    def aligned(self, new_map: BlockMap | None) -> npt.NDArray[np.bool_]:
        """Which old blocks reappear unchanged at their own offset in the new content."""
        old, bs, size = self.old, self.bs, len(self.new)
        matched = np.zeros(old.block_count, dtype=np.bool_)
        full = min(old.size, size) // bs
        if full:
            if new_map is not None:
                digests = new_map.digest_array()[:full]
            else:
                digests = np.array(_digests(self.new[: full * bs], bs), dtype=np.uint64)
            matched[:full] = digests == old.digest_array()[:full]
        if full < old.block_count:
            # The old short last block matches if the new content holds it in place.
            offset, length = old.block_range(full)
            if length < bs and offset + length <= size:
                matched[full] = self._holds_short_block(offset)
        return matched

    def _holds_short_block(self, at: int) -> bool:
        """Whether the new content holds the old short last block at ``at``."""
        last = self.old.block_count - 1
        length = self.old.block_range(last)[1]
        return codec.digest64(self.new[at : at + length]) == self.old.block_digest(last)

    def run(self, matched: npt.NDArray[np.bool_]) -> list[Op]:
        old, bs, size = self.old, self.bs, len(self.new)
        region = 0  # start of the pending unmatched region in the new content
        edges = np.flatnonzero(np.diff(matched.view(np.int8))) + 1
        starts = [0, *edges.tolist()]
        ends = [*edges.tolist(), len(matched)]
        for first, stop in zip(starts, ends, strict=True):
            if first == stop or not matched[first]:
                continue
            begin, end = first * bs, min(stop * bs, old.size)
            self.scan(region, begin)
            self.out.add(_COPY_KIND, begin, end - begin)
            region = end
        self.scan(region, size)
        return self.out.finish()

    def scan(self, start: int, end: int) -> None:
        """Cover new ``[start, end)`` with copies of old blocks found anywhere, else literals."""
        tail = self._moved_tail(start, end)
        if tail:
            end -= tail
        self._scan(start, end)
        if tail:
            self.out.add(_COPY_KIND, self.old.size - tail, tail)

    def _moved_tail(self, start: int, end: int) -> int:
        """The length of the old short last block if ``[start, end)`` ends the new content with it.

        A full block is found anywhere by the rolling sum; the short one only where
        a chain of matches leads to it, or in place. An edit in the block before
        it moves it with nothing to lead there: rsync looks for it at the end.
        """
        short = self.old.size % self.bs
        if not short or end != len(self.new) or end - start < short:
            return 0
        return short if self._holds_short_block(end - short) else 0

    def _scan(self, start: int, end: int) -> None:
        if end - start < self.bs:  # too short to hold a whole old block
            self.out.add(_LITERAL_KIND, start, end - start)
            return
        if self._roller is None:
            self._roller = _Roller(self.old, self.new)
            self._old_digests = self.old.digest_array().tolist()
        roller, digests = self._roller, self._old_digests
        assert digests is not None
        new, out, bs, digest64 = self.new, self.out, self.bs, codec.digest64
        count, old_size = len(digests), self.old.size
        position = start
        while position < end:
            found = roller.find(position, end)
            if found is None:
                break
            offset, index = found
            out.add(_LITERAL_KIND, position, offset - position)
            # Follow the match block by block while the next old block follows
            # here too (rsync's "test the next block at the shifted offset").
            while True:
                old_offset = index * bs
                length = min(bs, old_size - old_offset)
                out.add(_COPY_KIND, old_offset, length)
                offset += length
                index += 1
                if index >= count:
                    break
                next_length = min(bs, old_size - index * bs)
                if offset + next_length > end:
                    break
                if digest64(new[offset : offset + next_length]) != digests[index]:
                    break
            position = offset
        out.add(_LITERAL_KIND, position, end - position)


def delta(
    old: BlockMap | Buffer,
    new: Buffer,
    *,
    new_map: BlockMap | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> list[Op]:
    """Ops that turn the old content into ``new`` (see the module docstring for how).

    Args:
        old: the old content's :class:`BlockMap` (all the master keeps), or the
            old bytes themselves (mapped with ``block_size``).
        new: the new content, in memory or mapped (``mmap``).
        new_map: the new content's map, if the caller built it anyway (it
            saves hashing the aligned blocks again); same block size as ``old``.
        block_size: used only when ``old`` is bytes.

    Returns:
        Coalesced :class:`Copy` and :class:`Literal` ops; literals reference
        ``new`` by offset. Empty when ``new`` is empty.

    """
    old_map = _as_map(old, block_size)
    if new_map is not None and new_map.block_size != old_map.block_size:
        raise ConfigurationError(
            detail=f"block sizes differ ({old_map.block_size} and {new_map.block_size})"
        )
    view = _byte_view(new)
    if new_map is not None and new_map.size != len(view):
        raise ConfigurationError(detail=f"new_map is for {new_map.size} bytes, not {len(view)}")
    job = _Delta(old_map, view)
    return job.run(job.aligned(new_map))


# -- applying ---------------------------------------------------------------------


def _delta_error(detail: str) -> FrameError:
    return FrameError(position="delta", detail=detail)


def _literals(source: LiteralSource) -> Callable[[int, int], memoryview]:
    if callable(source):
        fetch = source

        def fetched(offset: int, length: int) -> memoryview:
            data = _byte_view(fetch(offset, length))
            if len(data) != length:
                raise _delta_error(f"literal {offset}+{length} came back with {len(data)} bytes")
            return data

        return fetched
    view = _byte_view(source)

    def sliced(offset: int, length: int) -> memoryview:
        if offset + length > len(view):
            raise _delta_error(f"literal {offset}+{length} beyond its {len(view)}-byte source")
        return view[offset : offset + length]

    return sliced


def _copies_from_file(old: _SeekableReader) -> Callable[[int, int], Iterator[memoryview]]:
    buffer = memoryview(bytearray(_COPY_CHUNK))

    def copy(offset: int, length: int) -> Iterator[memoryview]:
        old.seek(offset)
        while length > 0:
            got = _fill(old, buffer[: min(length, len(buffer))])
            if got == 0:
                raise _delta_error(f"copy {offset}+{length} reaches past the end of the base")
            yield buffer[:got]
            offset += got
            length -= got

    return copy


def _copies_from_buffer(old: Buffer) -> Callable[[int, int], Iterator[memoryview]]:
    view = _byte_view(old)

    def copy(offset: int, length: int) -> Iterator[memoryview]:
        if offset + length > len(view):
            raise _delta_error(f"copy {offset}+{length} beyond the {len(view)}-byte base")
        yield view[offset : offset + length]

    return copy


def apply_delta_to(
    old: Buffer | _SeekableReader,
    ops: Iterable[Op],
    literals: LiteralSource,
    out: _Writer,
) -> int:
    """Write the new content rebuilt from ``old`` and ``ops`` to ``out``; return its size.

    ``old`` is the old content in memory, or a seekable binary reader over it.
    ``out`` must not be ``old`` (copies read bytes a write may already have
    replaced): write to a new file and rename it into place. ``out.write`` must
    consume the bytes it is given before returning (they may be a reused
    buffer). Ops that do not fit their base or literal source raise
    :class:`FrameError`.
    """
    if isinstance(old, bytes | bytearray | memoryview | mmap.mmap):
        copy = _copies_from_buffer(old)
    else:
        copy = _copies_from_file(old)
    literal = _literals(literals)
    written = 0
    for op in ops:
        if op.offset < 0 or op.length < 0:
            raise _delta_error(f"negative op {op!r}")
        if isinstance(op, Copy):
            for piece in copy(op.offset, op.length):
                _write_all(out, piece)
        else:
            _write_all(out, literal(op.offset, op.length))
        written += op.length
    return written


def apply_delta(old: Buffer | _SeekableReader, ops: Iterable[Op], literals: LiteralSource) -> bytes:
    """The new content rebuilt from ``old`` and ``ops``, in memory (see :func:`apply_delta_to`)."""
    out = io.BytesIO()
    apply_delta_to(old, ops, literals, out)
    return out.getvalue()
