"""Manifests: what a tree holds, path by path, with block digests, stored in the journal's store.

Room: algorithms/storage. May import ``errors``, ``codec``, ``datastore``; no eventsourcing.

A manifest is three tables under one name ``N``:

- ``N.paths``: scenario path (UTF-8 with surrogateescape) -> frame of
  ``[file id, version, kind, size, mode, mtime_ns, ctime_ns, ino, dev, target,
  observed_ns, uid, gid, xattrs digest]`` (entries written before the last
  four have fewer: see :meth:`FileState.unpack`). A path longer than
  :data:`KEY_MAX` bytes (LMDB's key limit) is keyed by its first
  :data:`LONG_HEAD` bytes, a NUL (no path holds one) and the xxh3-128 of the
  whole path, and its frame holds ``[path bytes, entry]`` (see :func:`path_key`);
- ``N.blocks``: file id (16 bytes) + chunk number (4 bytes BE) -> frame of the
  packed block digests of up to :data:`CHUNK_BLOCKS` consecutive blocks, each
  digest :data:`DIGEST_WIDTH` bytes (``blocks.BlockMap`` layout); a block
  past a chunk's end, or in no chunk, holds zeros (a thin image's holes take
  no room);
- ``N.underived``: file id -> empty: files whose block digests are not known
  yet and must be derived from their content (a delta's new map is not in its
  event; see ``masterstate``); and the key ``rebuilding`` while a rebuild of
  the manifest has begun and not ended.

The master state of a scenario is a manifest folded from its file events in
the same transaction as they are appended (``capture``); the manifest code
itself only stores and reads.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final

from xoengine import codec
from xoengine.errors import FrameError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from xoengine.datastore import ReadTxn, WriteTxn

__all__ = [
    "CHUNK_BLOCKS",
    "DIGEST_WIDTH",
    "KEY_MAX",
    "LONG_HEAD",
    "FileState",
    "Manifest",
    "path_key",
]

DIGEST_WIDTH: Final = 12
"""Bytes per block: xxh3-64 strong digest (8, little-endian) then weak sum (4, little-endian)."""

CHUNK_BLOCKS: Final = 1024
"""Block digests stored per LMDB value."""

KEY_MAX: Final = 511
"""Longest key LMDB stores (its default build): a longer path is keyed by :func:`path_key`."""

LONG_HEAD: Final = KEY_MAX - 1 - 16
"""Bytes of a long path its key begins with (then a NUL and a 16-byte digest: KEY_MAX in all)."""

_ID_BYTES: Final = 16
_REBUILDING: Final = b"rebuilding"  # in the underived table: no file id is 10 bytes long


@dataclass(frozen=True)
class FileState:
    """What the manifest knows of one path."""

    file_id: uuid.UUID
    version: int
    kind: str
    size: int = 0
    mode: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    ino: int = 0
    dev: int = 0
    target: str | None = None
    observed_ns: int = 0
    """Wall-clock time (ns) the stat above was taken (0: unknown; see capture's racy rule)."""
    uid: int = -1
    gid: int = -1
    """The owner (-1: unknown, as in journals written before owners were recorded)."""
    xattrs: int = -1
    """Digest of the extended attributes (``masterstate.xattr_digest``: 0 none, -1 unknown,
    as in entries written before they were recorded)."""

    def pack(self) -> bytes:
        """The msgpack body of this entry."""
        return codec.pack(
            [
                self.file_id.bytes,
                self.version,
                self.kind,
                self.size,
                self.mode,
                self.mtime_ns,
                self.ctime_ns,
                self.ino,
                self.dev,
                self.target,
                self.observed_ns,
                self.uid,
                self.gid,
                self.xattrs,
            ]
        )

    @classmethod
    def unpack(cls, body: bytes | memoryview, where: str) -> FileState:
        """Inverse of :meth:`pack`."""
        fid, version, kind, size, mode, mtime_ns, ctime_ns, ino, dev, target, *rest = codec.unpack(
            body, position=where
        )
        observed_ns = rest[0] if rest else 0  # entries written before it was recorded
        uid, gid = rest[1:3] if len(rest) >= 3 else (-1, -1)  # as for the owner
        xattrs = rest[3] if len(rest) >= 4 else -1  # and for extended attributes
        return cls(
            uuid.UUID(bytes=fid),
            version,
            kind,
            size,
            mode,
            mtime_ns,
            ctime_ns,
            ino,
            dev,
            target,
            observed_ns,
            uid,
            gid,
            xattrs,
        )

    def evolve(self, **changes: object) -> FileState:
        """A copy with ``changes``."""
        return replace(self, **changes)  # type: ignore[arg-type]


def _raw(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def _path(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def path_key(raw: bytes) -> bytes:
    """The ``paths`` key of a path's bytes: themselves, or a long path's fixed-length key.

    Longer than :data:`KEY_MAX`: their first :data:`LONG_HEAD` bytes, a NUL and
    the xxh3-128 of all of them. Such a key still begins with every prefix of
    the path up to LONG_HEAD bytes (a prefix scan finds it), and only such a
    key holds a NUL: the keys of shorter paths (all an older store holds)
    keep their meaning.
    """
    if len(raw) <= KEY_MAX:
        return raw
    return raw[:LONG_HEAD] + b"\0" + codec.digest128(raw)


def _is_long(key: bytes) -> bool:
    return len(key) == KEY_MAX and key[LONG_HEAD] == 0


def _sorted(run: list[tuple[bytes, FileState]], under: bytes) -> Iterator[tuple[str, FileState]]:
    """The entries of ``run`` whose path begins with ``under``, in byte order of the path."""
    for raw, state in sorted(run, key=lambda entry: entry[0]):
        if raw.startswith(under):
            yield _path(raw), state


class Manifest:
    """Path entries and block digests of one tree, in two tables of a store."""

    def __init__(self, name: str) -> None:
        """Name the tables ``<name>.paths`` and ``<name>.blocks``."""
        self.name = name
        self.paths_table = f"{name}.paths"
        self.blocks_table = f"{name}.blocks"
        self.underived_table = f"{name}.underived"

    @property
    def tables(self) -> tuple[str, str, str]:
        """The table names (for ``Store.ensure``)."""
        return (self.paths_table, self.blocks_table, self.underived_table)

    # -- paths ---------------------------------------------------------------------------

    def get(self, txn: ReadTxn, path: str) -> FileState | None:
        """The entry of ``path``, or None."""
        key = path_key(_raw(path))
        value = txn.get(self.paths_table, key)
        if value is None:
            return None
        return self._decode(key, value)[1]

    def put(self, txn: WriteTxn, path: str, state: FileState) -> None:
        """Store the entry of ``path``."""
        raw = _raw(path)
        key = path_key(raw)
        body = codec.pack([raw, state.pack()]) if _is_long(key) else state.pack()
        txn.put(self.paths_table, key, codec.frame(key, body))

    def remove(self, txn: WriteTxn, path: str) -> None:
        """Forget ``path`` (its block digests stay with its file id until dropped)."""
        txn.delete(self.paths_table, path_key(_raw(path)))

    def items(self, txn: ReadTxn, prefix: str = "") -> Iterator[tuple[str, FileState]]:
        """All ``(path, entry)`` in byte order of the path, optionally under ``prefix``.

        Keys sharing a first :data:`LONG_HEAD` bytes are adjacent, and out of
        path order only there (a long path's digest): such a run is sorted.
        """
        raw = _raw(prefix)
        scan = raw[:LONG_HEAD]  # a long path's key holds no more of it
        run: list[tuple[bytes, FileState]] = []
        for key, value in txn.items(self.paths_table, scan or None, prefix=scan or None):
            if run and key[:LONG_HEAD] != run[0][0][:LONG_HEAD]:
                yield from _sorted(run, raw)
                run = []
            if len(key) >= LONG_HEAD:
                run.append(self._decode(key, value))
            else:
                path = _path(key)
                body = codec.unframe(key, value, where=self.paths_table)
                yield path, FileState.unpack(body, path)
        yield from _sorted(run, raw)

    def count(self, txn: ReadTxn) -> int:
        """Number of paths."""
        return txn.count(self.paths_table)

    def _decode(self, key: bytes, value: bytes) -> tuple[bytes, FileState]:
        """The path bytes and entry of one ``paths`` item (its frame verified)."""
        body = codec.unframe(key, value, where=self.paths_table)
        if not _is_long(key):
            return key, FileState.unpack(body, _path(key))
        raw, entry = codec.unpack(body, position=key.hex())
        if path_key(raw) != key:
            raise FrameError(position=key.hex(), detail="a long path's key is not of its path")
        return raw, FileState.unpack(entry, _path(raw))

    # -- block digests -------------------------------------------------------------------

    def _chunk_key(self, file_id: uuid.UUID, chunk: int) -> bytes:
        return file_id.bytes + chunk.to_bytes(4, "big")

    def digests(
        self, txn: ReadTxn, file_id: uuid.UUID, nblocks: int, *, fill: bytes, first: int = 0
    ) -> bytes:
        """The packed digests of blocks ``first .. nblocks-1``.

        A block with none stored is one of zeros, whose digest the caller gives
        as ``fill`` (:data:`DIGEST_WIDTH` bytes): the holes of a thin image
        cost no room (see :meth:`set_digests`).
        """
        out = bytearray()
        for chunk in range(first // CHUNK_BLOCKS, -(-nblocks // CHUNK_BLOCKS)):
            key = self._chunk_key(file_id, chunk)
            value = txn.get(self.blocks_table, key)
            base = chunk * CHUNK_BLOCKS
            lo, hi = max(first - base, 0), min(CHUNK_BLOCKS, nblocks - base)
            body = (
                b"" if value is None else bytes(codec.unframe(key, value, where=self.blocks_table))
            )
            body = body[lo * DIGEST_WIDTH : hi * DIGEST_WIDTH]
            out += body + fill * (hi - lo - len(body) // DIGEST_WIDTH)
        return bytes(out)

    def set_digests(
        self,
        txn: WriteTxn,
        file_id: uuid.UUID,
        first: int,
        packed: bytes,
        nblocks: int | None,
        *,
        fill: bytes,
    ) -> None:
        """Store digests of blocks ``first..`` (and cut the map to ``nblocks`` blocks if given).

        ``fill``: the digest of a block of zeros. A chunk that holds nothing
        else is not stored (:meth:`digests` gives ``fill`` for it).
        """
        count = len(packed) // DIGEST_WIDTH
        index = first
        while index < first + count:
            chunk, offset = divmod(index, CHUNK_BLOCKS)
            take = min(CHUNK_BLOCKS - offset, first + count - index)
            key = self._chunk_key(file_id, chunk)
            value = txn.get(self.blocks_table, key)
            body = bytearray(b"" if value is None else codec.unframe(key, value))
            start = offset * DIGEST_WIDTH
            if len(body) < start:
                body += fill * ((start - len(body)) // DIGEST_WIDTH)
            piece = packed[(index - first) * DIGEST_WIDTH : (index - first + take) * DIGEST_WIDTH]
            body[start : start + len(piece)] = piece
            if body == fill * (len(body) // DIGEST_WIDTH):
                if value is not None:
                    txn.delete(self.blocks_table, key)
            else:
                txn.put(self.blocks_table, key, codec.frame(key, bytes(body)))
            index += take
        if nblocks is not None:
            self.cut_digests(txn, file_id, nblocks)

    def cut_digests(self, txn: WriteTxn, file_id: uuid.UUID, nblocks: int) -> None:
        """Drop digests of blocks at or beyond ``nblocks``."""
        chunk, offset = divmod(nblocks, CHUNK_BLOCKS)
        found = list(
            txn.items(self.blocks_table, self._chunk_key(file_id, chunk), prefix=file_id.bytes)
        )
        for key, value in found:  # changed after the scan: no writes under a live cursor
            if int.from_bytes(key[16:], "big") == chunk and offset:
                body = bytes(codec.unframe(key, value))[: offset * DIGEST_WIDTH]
                txn.put(self.blocks_table, key, codec.frame(key, body))
            else:
                txn.delete(self.blocks_table, key)

    # -- maps still to derive ------------------------------------------------------------

    def mark_underived(self, txn: WriteTxn, file_id: uuid.UUID, *, underived: bool) -> None:
        """Record (or clear) that ``file_id``'s block map must be derived from its content."""
        if underived:
            txn.put(self.underived_table, file_id.bytes, b"")
        else:
            txn.delete(self.underived_table, file_id.bytes)

    def is_underived(self, txn: ReadTxn, file_id: uuid.UUID) -> bool:
        """Whether ``file_id``'s block map is still to be derived (its digests are not known)."""
        return txn.get(self.underived_table, file_id.bytes) is not None

    def underived(self, txn: ReadTxn) -> set[uuid.UUID]:
        """Every file id whose block map is still to be derived."""
        return {
            uuid.UUID(bytes=bytes(key))
            for key, _ in txn.items(self.underived_table)
            if len(key) == _ID_BYTES
        }

    def mark_rebuilding(self, txn: WriteTxn, *, rebuilding: bool) -> None:
        """Record (or clear) that a rebuild of this manifest has begun and not ended."""
        if rebuilding:
            txn.put(self.underived_table, _REBUILDING, b"")
        else:
            txn.delete(self.underived_table, _REBUILDING)

    def is_rebuilding(self, txn: ReadTxn) -> bool:
        """Whether a rebuild began and did not end (a crash midway): it must run again."""
        return txn.get(self.underived_table, _REBUILDING) is not None

    def drop(self, txn: WriteTxn) -> None:
        """Empty the tables (before a rebuild)."""
        txn.drop(self.paths_table)
        txn.drop(self.blocks_table)
        txn.drop(self.underived_table)
