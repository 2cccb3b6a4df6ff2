"""The stream index's unmerged part: entries above the merge marker, held in memory.

Room: record. May import ``codec`` and ``record`` (the journal's recorders
use it; the layout and rules are in docs/journal-format.md, "Stream index and
merge marker").
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from xoengine import codec
from xoengine.record import (
    POS,
    VERSION_OFFSET,
    decode_position,
    decode_stream_key,
    encode_position,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from xoengine.datastore import ReadTxn

__all__ = ["MARKER_KEY", "MERGE_AT", "StreamEntries", "StreamTail", "frame_marker"]

MERGE_AT: Final = 16384
"""Unmerged events after which the writer merges their stream entries into the sorted index."""
MARKER_KEY: Final = b"upto"


class StreamEntries(NamedTuple):
    """Stream-index entries of a batch of events, in the forms the tail uses them."""

    keys: list[bytes]  # stream keys (oid prefix, version)
    pkeys: list[bytes]  # position keys, in the same order
    prefixes: list[bytes]  # the keys' oid prefixes
    versions: list[int]
    positions: Sequence[int]


class StreamTail:
    """Stream-index entries of the events above the merge marker, held in memory.

    With random originator ids (uuid4, eventsourcing's default) every put into
    the sorted stream index lands on its own B-tree page: at batch 100 that
    was two thirds of a commit's pages. So an append only appends the event;
    its ``(originator, version) -> position`` entry lives here, and every
    :data:`MERGE_AT` events the writer puts them all into the sorted index in
    key order (a few pages per hundred entries) and moves the marker
    (``P.events.indexed``), in one transaction. What is above the marker is
    found by scanning the events table, so this is only ever a cache of
    committed records: another process, or a reopened journal, builds its own.

    Entries are held as the sorted index stores them (stream key -> position
    key): a duplicate check is a lookup and a merge a sort of them. The
    ``version -> position`` maps per stream that readers use are made from
    them when a read comes, so an append that nobody reads back costs no more
    than a dict update.

    Only committed snapshots change it (read transactions and the writer's
    on-commit callback); a write transaction takes a private view (its own
    uncommitted events, an uncommitted merge) and never changes it.
    """

    def __init__(self, events_table: str) -> None:
        self._events_table = events_table
        self._lock = threading.Lock()
        self._base = -1  # the marker these entries are above (-1: not built)
        self._upto = 0  # the last position they cover
        self._entries: dict[bytes, bytes] = {}  # stream key -> position key
        self._streams: dict[bytes, dict[int, int]] = {}  # oid prefix -> version -> position
        self._unread: list[StreamEntries] = []  # batches not yet in _streams

    def _scan(self, txn: ReadTxn, after: int, last: int) -> Iterator[tuple[bytes, bytes]]:
        """(stream key, position key) of the events in (after, last], checksums verified."""
        if last <= after:
            return
        for key, value in txn.items(self._events_table, encode_position(after + 1)):
            if decode_position(key) > last:
                return
            yield decode_stream_key(key, value, self._events_table), key

    def _add(self, batch: StreamEntries) -> None:
        # Not strict: the lists are made together, and at batch 2 (an Application
        # save) the check would cost as much as the update.
        self._entries.update(zip(batch.keys, batch.pkeys, strict=False))
        self._unread.append(batch)

    def _add_items(self, items: list[tuple[bytes, bytes]]) -> None:
        """:meth:`_add` for (stream key, position key) pairs (scanned, or kept after a merge)."""
        keys = [key for key, _ in items]
        # A stream key is the oid prefix, then the version + 2**63 in 8 bytes.
        prefixes = [key[:-8] for key in keys]
        versions = [POS.unpack_from(key, len(key) - 8)[0] - VERSION_OFFSET for key in keys]
        pkeys = [pkey for _, pkey in items]
        positions = [decode_position(pkey) for pkey in pkeys]
        self._add(StreamEntries(keys, pkeys, prefixes, versions, positions))

    def _by_stream(self) -> dict[bytes, dict[int, int]]:
        """The entries per stream, with those added since the last read."""
        streams = self._streams
        if self._unread:
            for batch in self._unread:
                for prefix, version, position in zip(
                    batch.prefixes, batch.versions, batch.positions, strict=False
                ):
                    streams.setdefault(prefix, {})[version] = position
            self._unread = []
        return streams

    def _follow(self, txn: ReadTxn, marker: int, last: int) -> bool:
        """Bring the shared entries to a committed snapshot; False if it is older than them."""
        if marker < self._base:
            return False  # a merge committed since this snapshot began
        if marker > self._base:
            self._advance(marker)
        if self._upto < last:
            self._add_items(list(self._scan(txn, self._upto, last)))
            self._upto = last
        return True

    def _advance(self, marker: int) -> None:
        """Forget the entries at or below ``marker``: a merge put them in the sorted index."""
        entries = self._entries
        self._entries, self._streams, self._unread = {}, {}, []
        if self._base >= 0 and self._upto > marker:
            above = encode_position(marker)
            self._add_items([(key, pkey) for key, pkey in entries.items() if pkey > above])
        else:
            self._upto = marker
        self._base = marker

    @property
    def built(self) -> bool:
        """Whether the shared entries were built (else a write would scan all above the marker)."""
        return self._base >= 0

    def follow(self, txn: ReadTxn, marker: int, last: int) -> None:
        """Bring the shared entries up to the committed snapshot ``txn``."""
        with self._lock:
            self._follow(txn, marker, last)

    def read(self, txn: ReadTxn, marker: int, last: int, prefix: bytes) -> dict[int, int]:
        """``version -> position`` of one stream above ``marker`` in a committed snapshot."""
        with self._lock:
            if self._follow(txn, marker, last):
                versions = self._by_stream().get(prefix, {})
                return {v: p for v, p in versions.items() if p <= last}
        return {
            POS.unpack_from(key, len(prefix))[0] - VERSION_OFFSET: decode_position(pkey)
            for key, pkey in self._scan(txn, marker, last)
            if key[:-8] == prefix
        }

    def _private(self, txn: ReadTxn, marker: int, last: int) -> tuple[int, list[Any]]:
        """What a write transaction sees beyond the shared entries: (their end, a scan)."""
        upto = max(self._upto, marker) if marker >= self._base >= 0 else marker
        return upto, list(self._scan(txn, upto, last)) if upto < last else []

    def _shared(self, marker: int, upto: int) -> dict[bytes, bytes]:
        """The shared entries in (marker, upto] (all of them unless another process merged)."""
        if marker == self._base:
            return self._entries  # they are exactly (base, upto]
        low, high = encode_position(marker), encode_position(upto)
        return {k: p for k, p in self._entries.items() if low < p <= high}

    def recorded(self, txn: ReadTxn, marker: int, last: int, keys: list[bytes]) -> int | None:
        """The index of the first of stream ``keys`` already above ``marker``, or None."""
        with self._lock:
            upto, scanned = self._private(txn, marker, last)
            shared = self._shared(marker, upto) if upto > marker else {}
            if not shared.keys().isdisjoint(keys):  # one call: a clash is the rare case
                return next(i for i, key in enumerate(keys) if key in shared)
        extra = {key for key, _ in scanned}
        return next((i for i, key in enumerate(keys) if key in extra), None) if extra else None

    def everything(self, txn: ReadTxn, marker: int, last: int) -> dict[bytes, bytes]:
        """Every stream key -> position key above ``marker`` up to ``last`` (for a merge)."""
        with self._lock:
            upto, scanned = self._private(txn, marker, last)
            entries = dict(self._shared(marker, upto)) if upto > marker else {}
        entries.update(scanned)
        return entries

    def appended(self, batch: StreamEntries) -> None:
        """The writer's callback: its ``batch`` committed (ignored after a gap)."""
        first, last = batch.positions[0], batch.positions[-1]
        with self._lock:
            if self._base >= 0 and self._upto == first - 1:
                self._add(batch)
                self._upto = last

    def merged(self, marker: int) -> None:
        """The writer's callback: every entry up to ``marker`` is in the sorted index now."""
        with self._lock:
            if marker > self._base:
                self._advance(marker)


def frame_marker(position: int, key: bytes = MARKER_KEY) -> bytes:
    """The frame of a marker (by default the merge marker) at ``position``."""
    return codec.frame(key, encode_position(position))
