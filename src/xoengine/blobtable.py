"""The blob table: content-addressed payloads (changed bytes, before-images, chunks).

Room: record. May import ``errors``, ``codec``, ``datastore`` and ``record``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from xoengine import codec
from xoengine.errors import BlobNotFoundError, FrameError, IntegrityViolationError
from xoengine.record import POS

if TYPE_CHECKING:
    from collections.abc import Iterator

    from xoengine.datastore import ReadTxn, Store, WriteTxn

__all__ = ["BLOB_MAX", "BLOB_SUFFIX", "BLOB_TABLE", "BlobTable", "blob_chunks", "content_key"]

BLOB_TABLE: Final = "blobs"
BLOB_SUFFIX: Final = ".blobs"
"""How the name of any other blob table ends (a replica's undo log has one of its own)."""
BLOB_MAX: Final = 4 * 1024 * 1024
"""Largest blob xoengine stores: changed bytes, before-images and chunks are split to it
(far below the frame cap, ``codec.MAX_FRAME_BYTES``)."""


def blob_chunks(offset: int, length: int) -> Iterator[tuple[int, int]]:
    """``(offset, length)`` pieces of at most :data:`BLOB_MAX` covering a region (none if empty).

    The one way a region becomes blobs: journaled writes, delta literals and
    before-images alike.
    """
    for start in range(offset, offset + max(length, 0), BLOB_MAX):
        yield start, min(BLOB_MAX, offset + length - start)


def content_key(data: bytes | memoryview) -> bytes:
    """The first 24 bytes of a blob id: ``xxh3_128(data) || len(data)`` (the slot follows)."""
    return codec.digest128(data) + POS.pack(len(data))


class BlobTable:
    """Content-addressed storage for large payloads (changed bytes, chunks).

    A blob id is ``xxh3_128(data) || len(data) || slot`` (25 bytes). A blob is
    stored once; on a key hit the stored bytes are compared with the new ones,
    and a different blob under the same hash (a crafted collision) goes to the
    next slot: data can never be substituted.
    """

    ID_SIZE: Final = 25

    def __init__(self, store: Store, table: str = BLOB_TABLE) -> None:
        """Use the shared blob table of ``store`` (created if missing and writable)."""
        self.store = store
        self.table = table
        store.ensure(table)

    def put(self, txn: WriteTxn, data: bytes | memoryview, key: bytes | None = None) -> bytes:
        """Store ``data`` inside ``txn`` (if not stored yet) and return its id.

        ``key``: :func:`content_key` of ``data`` if the caller has it already.
        """
        return self.add(txn, data, key)[0]

    def add(
        self, txn: WriteTxn, data: bytes | memoryview, key: bytes | None = None
    ) -> tuple[bytes, bool]:
        """:meth:`put`, also saying whether the bytes are new to the table."""
        blob_id, stored = self._place(txn, content_key(data) if key is None else key, data)
        if not stored:
            txn.put(self.table, blob_id, codec.frame(blob_id, data))
        return blob_id, not stored

    def find(
        self, txn: ReadTxn, data: bytes | memoryview, key: bytes | None = None
    ) -> bytes | None:
        """The id of ``data`` if this table holds those bytes, else None (nothing written).

        ``key``: :func:`content_key` of ``data`` if the caller has it already.
        """
        blob_id, stored = self._place(txn, content_key(data) if key is None else key, data)
        return blob_id if stored else None

    def discard(self, txn: WriteTxn, blob_id: bytes) -> None:
        """Delete ``blob_id`` (from a table whose owner counts references; never the journal's)."""
        txn.delete(self.table, blob_id)

    def _place(self, txn: ReadTxn, key: bytes, data: bytes | memoryview) -> tuple[bytes, bool]:
        """(id, whether stored): the slot holding ``data``, else the first free one."""
        for slot in range(256):
            blob_id = key + bytes((slot,))
            existing = txn.get(self.table, blob_id)
            if existing is None:
                return blob_id, False
            if codec.unframe(blob_id, existing, where=self.table) == data:
                return blob_id, True
        raise IntegrityViolationError(detail="256 different blobs share one hash")

    def save(self, data: bytes | memoryview) -> bytes:
        """Store ``data`` in its own (group-committed) transaction; return its id."""
        return self.store.write(lambda txn: self.put(txn, data))

    def get(self, blob_id: bytes, txn: ReadTxn | None = None) -> bytes:
        """Return the verified bytes of ``blob_id`` (:class:`BlobNotFoundError` if absent)."""
        return bytes(self.view(blob_id, txn))

    def view(self, blob_id: bytes, txn: ReadTxn | None = None) -> memoryview:
        """:meth:`get` without its last copy: a read-only view of the verified bytes.

        The view holds the one copy LMDB hands out (not the map itself), so it
        stays valid after the transaction. For bulk paths that only write the
        bytes somewhere (undo, replay, apply): one memory copy less per byte.
        """
        if txn is None:
            with self.store.read() as rtxn:
                return self.view(blob_id, rtxn)
        value = txn.get(self.table, blob_id)
        if value is None:
            raise BlobNotFoundError(blob=blob_id.hex())
        body = codec.unframe(blob_id, value, where=self.table)
        if len(body) != POS.unpack_from(blob_id, 16)[0] or codec.digest128(body) != blob_id[:16]:
            raise FrameError(position=blob_id.hex(), detail="blob content does not match its id")
        return body.toreadonly()

    @staticmethod
    def size_of(blob_id: bytes) -> int:
        """Length of the bytes of ``blob_id`` (read from the id: no lookup)."""
        return int(POS.unpack_from(blob_id, 16)[0])

    def __contains__(self, blob_id: bytes) -> bool:
        """Whether ``blob_id`` is stored."""
        with self.store.read() as txn:
            return txn.get(self.table, blob_id) is not None
