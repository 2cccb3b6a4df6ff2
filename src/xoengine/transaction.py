"""Read and write transactions over a :class:`~xoengine.datastore.Store`.

Room: floor, beside ``datastore`` (which opens them; seen here only for type
checking). Never imports ``lmdb``: it calls the py-lmdb transaction the store
hands it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xoengine.errors import (
    StorageError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from xoengine.datastore import Store


__all__ = ["ReadTxn", "WriteTxn"]


class ReadTxn:
    """A read view of the store at one committed transaction.

    Values are copied out as ``bytes``; nothing here outlives the transaction.
    """

    def __init__(self, store: Store, txn: Any, seq: int) -> None:
        self._store = store
        self._txn = txn
        # Handles opened at or after this sequence number are invalid in this txn.
        self._seq = seq

    def _dbi(self, db: str) -> Any:
        entry = self._store._handle(db)
        if entry is None:
            return None
        handle, seq = entry
        if seq >= self._seq:
            # The table was opened after this read began (another process created
            # it): LMDB knows the handle only in transactions begun after that, so
            # go on in a new snapshot (py-lmdb's Transaction has no reset/renew).
            self._txn.abort()
            self._seq = self._store._dbi_seq
            self._txn = self._store._env.begin(write=False, buffers=False)
        return handle

    def get(self, db: str, key: bytes) -> bytes | None:
        """Return the value under ``key`` in sub-database ``db``, or None."""
        handle = self._dbi(db)
        if handle is None:
            return None
        value: bytes | None = self._txn.get(key, db=handle)
        return value

    def found(self, db: str, keys: Sequence[bytes]) -> set[bytes]:
        """Which of ``keys`` are in ``db`` (one call into LMDB for all of them)."""
        handle = self._dbi(db)
        if handle is None or not keys:
            return set()
        cursor = self._txn.cursor(db=handle)
        return {bytes(key) for key, _ in cursor.getmulti(keys)}

    def last(self, db: str) -> tuple[bytes, bytes] | None:
        """Return the last (highest-key) item of ``db``, or None if it is empty."""
        handle = self._dbi(db)
        if handle is None:
            return None
        cursor = self._txn.cursor(db=handle)
        if not cursor.last():
            return None
        return cursor.key(), cursor.value()

    def items(
        self,
        db: str,
        start: bytes | None = None,
        *,
        reverse: bool = False,
        prefix: bytes | None = None,
    ) -> Iterator[tuple[bytes, bytes]]:
        """Iterate ``(key, value)`` from ``start`` (inclusive) in key order.

        With ``reverse`` the walk goes down from the last key <= ``start``.
        With ``prefix`` it stops at the first key without that prefix.
        """
        handle = self._dbi(db)
        if handle is None:
            return
        cursor = self._txn.cursor(db=handle)
        if reverse:
            if start is None:
                positioned = cursor.last()
            else:
                positioned = cursor.set_range(start)
                if positioned and cursor.key() != start:
                    positioned = cursor.prev()
                elif not positioned:
                    positioned = cursor.last()
            it = cursor.iterprev(keys=True, values=True) if positioned else iter(())
        else:
            positioned = cursor.first() if start is None else cursor.set_range(start)
            it = cursor.iternext(keys=True, values=True) if positioned else iter(())
        for key, value in it:
            if prefix is not None and not key.startswith(prefix):
                return
            yield key, value

    def tables(self) -> list[str]:
        """Names of every sub-database in the store."""
        cursor = self._txn.cursor()
        return [
            bytes(k).decode("utf-8", "replace") for k in cursor.iternext(keys=True, values=False)
        ]

    def count(self, db: str) -> int:
        """Number of entries in ``db``."""
        handle = self._dbi(db)
        if handle is None:
            return 0
        return int(self._txn.stat(handle)["entries"])

    def page_bytes(self, db: str) -> int:
        """Bytes of the pages ``db`` holds (branch, leaf and overflow): its room on disk."""
        handle = self._dbi(db)
        if handle is None:
            return 0
        stat = self._txn.stat(handle)
        pages = stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
        return int(pages * stat["psize"])


class WriteTxn(ReadTxn):
    """The write transaction handed to a function given to :meth:`Store.write`."""

    def __init__(self, store: Store, txn: Any, seq: int) -> None:
        super().__init__(store, txn, seq)
        self.committed: list[Callable[[], None]] = []

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once this caller's work is committed (never if it is not).

        For in-memory caches of what the transaction wrote: a function given to
        :meth:`Store.write` may run more than once (map growth) or be rolled
        back (its own error), and only the run that commits calls back. It runs
        in the committing thread after the commit, before the caller returns.
        """
        self.committed.append(callback)

    def _dbi(self, db: str) -> Any:
        # Only tables made by ensure(): opening a handle here would wait for the
        # writer mutex this very transaction holds.
        entry = self._store._handles.get(db)
        if entry is None or entry[1] >= self._seq:
            raise StorageError(detail=f"table {db!r} used in a write before Store.ensure()")
        return entry[0]

    def put(self, db: str, key: bytes, value: bytes, *, overwrite: bool = True) -> bool:
        """Store ``value``; with ``overwrite=False`` return False if ``key`` exists."""
        handle = self._dbi(db)
        return bool(self._txn.put(key, value, db=handle, overwrite=overwrite))

    def append_many(self, db: str, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Store items at keys above every existing key, in ascending order, in one call.

        LMDB's append fast path; raise if a key is not above the ones before it.
        """
        cursor = self._txn.cursor(db=self._dbi(db))
        _, added = cursor.putmulti(items, append=True)
        if added != len(items):
            key = items[added][0] if added < len(items) else b""
            raise StorageError(detail=f"append out of order in {db!r} at key {key.hex()}")

    def put_many(self, db: str, items: Sequence[tuple[bytes, bytes]]) -> None:
        """:meth:`put` (overwriting) for many items, in one call into LMDB."""
        self._txn.cursor(db=self._dbi(db)).putmulti(items)

    def delete(self, db: str, key: bytes) -> bool:
        """Delete ``key``; return whether it existed."""
        handle = self._dbi(db)
        return bool(self._txn.delete(key, db=handle))

    def drop(self, db: str) -> None:
        """Empty sub-database ``db`` (it stays defined)."""
        handle = self._dbi(db)
        self._txn.drop(handle, delete=False)
